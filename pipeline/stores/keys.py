"""Every Redis key VAR uses, in one place.

All keys start with ``var:{namespace}:``. ``{router}`` is the id of the *table set*: the
router id of a one-layer engine (a synthetic router), or for a model the common stem of its
layers' router ids (``model-<sha12>`` for ``model-<sha12>-l0`` ... ``-l3``), see
:func:`table_set_id` -- decisions and tables of different routers never mix. ``{layer}`` is the
MoE layer: each layer has its own decisions and its own fast-path table, and the tables of all
layers are published together under ONE version number (a table set).

=====================================  ========  =================================================
key                                    type      contents
=====================================  ========  =================================================
``dc:{router}:{layer}:{key:016x}``     string    a cached learned decision (packed bytes), TTL
``fp:{router}:current``                string    version number of the current table set
``fp:{router}:v{version}:l{layer}``    string    layer's fast-path table of that version: one binary
                                                 blob (``var-fastpath-table/2``: token and pair
                                                 entries), TTL once superseded (all layers of a
                                                 version together)
``fp:{router}:seq``                    string    last allocated table-set version (never below current)
``stats:{router}:snapshot``            string    stats worker snapshot (statistics + offsets)
``workers:{topic}:{incarnation}``      string    a live router worker (JSON: router id, vocab), TTL
=====================================  ========  =================================================
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence


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

    @property
    def table_pointer(self) -> str:
        return f"{self.prefix}fp:{self.router_id}:current"

    @property
    def table_prefix(self) -> str:
        """``table(n, l) == table_prefix + f"{n}:l{l}"`` (the publish script builds keys with it)."""
        return f"{self.prefix}fp:{self.router_id}:v"

    def table(self, version: int, layer: int = 0) -> str:
        """Layer ``layer``'s fast-path table of table-set version ``version``."""
        return f"{self.table_prefix}{version}:l{layer}"

    def tables(self, version: int, layers: int) -> list[str]:
        """Every layer's table of ``version``, in layer order."""
        return [self.table(version, layer) for layer in range(layers)]

    def archived_table(self, version: int, layer: int = 0) -> str:
        """The archive copy of :meth:`table` (kept ``table_archive_ttl_s`` for verification)."""
        return f"{self.prefix}fp:{self.router_id}:archive:v{version}:l{layer}"

    @property
    def table_sequence(self) -> str:
        return f"{self.prefix}fp:{self.router_id}:seq"

    @property
    def stats_snapshot(self) -> str:
        return f"{self.prefix}stats:{self.router_id}:snapshot"


_LAYER_SUFFIX = re.compile(r"^(?P<stem>.+)-l(?P<layer>\d+)$")


def table_set_id(router_ids: Sequence[str]) -> str:
    """The id under which the decisions and tables of these layers' routers (in layer order) live.

    One router: its id (the keys of a synthetic router are what they always were). Several:
    the common stem when the ids are ``<stem>-l0``, ``<stem>-l1``, ... (a model's layers);
    otherwise ``layers-<sha256[:12] of the ids>``.
    """
    ids = list(router_ids)
    if not ids:
        raise ValueError("a table set needs at least one router")
    if len(ids) == 1:
        return ids[0]
    matches = [_LAYER_SUFFIX.match(rid) for rid in ids]
    stems = {m.group("stem") for m in matches if m}
    if len(stems) == 1 and all(m and int(m.group("layer")) == i for i, m in enumerate(matches)):
        return stems.pop()
    return "layers-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]


def worker_key(namespace: str, topic: str, incarnation: str) -> str:
    """Registration of one live router worker consuming ``topic`` (refreshed, with a TTL)."""
    return f"var:{namespace}:workers:{topic}:{incarnation}"


def worker_pattern(namespace: str, topic: str) -> str:
    """SCAN pattern matching every :func:`worker_key` of ``topic``."""
    return f"var:{namespace}:workers:{topic}:*"


# --- least privilege (Redis ACL): which keys each role may touch, from the schema above ------
# A namespace's rules also cover its run-scoped sub-namespaces ``{namespace}-{run id}``, which
# ``var replay --via kafka`` (and chaos, bench) create for every run.
ROLE_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    # the router workers: read/write the decision cache and their registration, read the tables
    "router": (("RW", "dc:*"), ("R", "fp:*"), ("RW", "workers:*")),
    # the stats worker (and whoever publishes a table): the tables, their archive and the snapshot
    "stats": (("RW", "fp:*"), ("RW", "stats:*"), ("R", "workers:*")),
    # operators (replay, verify, stats show, capture): every key of the namespace
    "admin": (("RW", "*"),),
}
ROLE_COMMANDS: dict[str, str] = {
    "router": "+get +mget +set +evalsha +eval +script|load +ping",
    "stats": "+get +mget +set +incr +pexpire +evalsha +eval +script|load +exists +ping",
    "admin": "+@all -@dangerous",
}


def acl_key_selectors(namespace: str, role: str) -> list[str]:
    """The ACL key selectors (``%RW~var:ns:dc:*`` ...) of ``role`` in ``namespace``."""
    selectors = []
    for scope in (f"var:{namespace}:", f"var:{namespace}-*:"):
        for access, pattern in ROLE_KEYS[role]:
            selectors.append(f"%{access}~{scope}{pattern}")
    return selectors


def acl_user_rule(namespace: str, role: str, username: str, password_sha256: str) -> str:
    """One ``user ...`` line of a Redis ACL file (the password as its SHA-256, never in clear)."""
    return " ".join(["user", username, "on", f"#{password_sha256}", "resetkeys", "resetchannels",
                     *acl_key_selectors(namespace, role), "-@all", ROLE_COMMANDS[role]])
