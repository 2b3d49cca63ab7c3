"""Every Redis key VAR uses, in one place.

All keys start with ``var:{namespace}:``. ``{router}`` is the router id (decisions and tables
of different routers never mix).

=====================================  ========  =================================================
key                                    type      contents
=====================================  ========  =================================================
``dc:{router}:{layer}:{key:016x}``     string    a cached learned decision (packed bytes), TTL
``fp:{router}:current``                string    version number of the current fast-path table
``fp:{router}:v{version}``             string    fast-path table version (JSON), TTL once superseded
``fp:{router}:seq``                    string    last allocated table version (never below current)
``stats:{router}:snapshot``            string    stats worker snapshot (statistics + offsets)
``workers:{topic}:{incarnation}``      string    a live router worker (JSON: router id, vocab), TTL
=====================================  ========  =================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RedisKeys:
    """Key builder for one namespace and router."""

    namespace: str
    router_id: str

    @property
    def prefix(self) -> str:
        return f"var:{self.namespace}:"

    def decision_prefix(self, layer: int = 0) -> str:
        return f"{self.prefix}dc:{self.router_id}:{layer}:"

    def decision(self, key: int, layer: int = 0) -> str:
        return f"{self.decision_prefix(layer)}{key:016x}"

    def decisions(self, keys: "np.ndarray | list[int]", layer: int = 0) -> list[str]:
        """:meth:`decision` for many keys at once (one hex conversion for the whole batch)."""
        prefix = self.decision_prefix(layer)
        hexed = np.asarray(keys, dtype=">u8").tobytes().hex()
        return [prefix + hexed[i : i + 16] for i in range(0, len(hexed), 16)]

    @property
    def table_pointer(self) -> str:
        return f"{self.prefix}fp:{self.router_id}:current"

    @property
    def table_prefix(self) -> str:
        """``table(n) == table_prefix + str(n)`` (the publish script builds version keys with it)."""
        return f"{self.prefix}fp:{self.router_id}:v"

    def table(self, version: int) -> str:
        return f"{self.table_prefix}{version}"

    @property
    def table_sequence(self) -> str:
        return f"{self.prefix}fp:{self.router_id}:seq"

    @property
    def stats_snapshot(self) -> str:
        return f"{self.prefix}stats:{self.router_id}:snapshot"


def worker_key(namespace: str, topic: str, incarnation: str) -> str:
    """Registration of one live router worker consuming ``topic`` (refreshed, with a TTL)."""
    return f"var:{namespace}:workers:{topic}:{incarnation}"


def worker_pattern(namespace: str, topic: str) -> str:
    """SCAN pattern matching every :func:`worker_key` of ``topic``."""
    return f"var:{namespace}:workers:{topic}:*"
