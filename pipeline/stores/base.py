"""The routing store: the shared decision cache and the versioned fast-path table.

Router workers talk to it once or twice per micro-batch, never per token:

* :meth:`RoutingStore.fetch` -- ONE round trip returns the cached decisions for the batch's
  unique keys *and* the current table version (the pointer rides along in the same MGET).
* :meth:`RoutingStore.write` -- ONE round trip stores the batch's confident learned decisions.
* :meth:`RoutingStore.load_table` -- only when the pointer moved.

:class:`MemoryRoutingStore` is the in-memory twin used by unit tests and the embedded mode;
:class:`~pipeline.stores.redis_store.RedisRoutingStore` is the real one.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from pipeline.engine.cache import CachePolicy, MemoryDecisionCache
from pipeline.engine.table import RoutingTable


class RoutingStore(Protocol):
    async def fetch(self, keys: Sequence[int]) -> tuple[list[bytes | None], int | None]:
        """Cached values for ``keys`` (None = miss) and the current table version (None = none)."""
        ...

    async def write(self, keys: Sequence[int], values: Sequence[bytes]) -> None:
        """Cache decisions (with the policy's TTL)."""
        ...

    async def load_table(self, version: int) -> RoutingTable | None:
        """The published table with this version, or None if it is gone."""
        ...

    async def publish_table(self, table: RoutingTable) -> int:
        """Store ``table`` as a new version, then move the pointer; returns the version."""
        ...


class MemoryRoutingStore:
    """In-process twin of the Redis store (same semantics, no I/O)."""

    def __init__(self, policy: CachePolicy = CachePolicy()) -> None:
        self.cache = MemoryDecisionCache(policy)
        self.tables: dict[int, bytes] = {}
        self.pointer: int | None = None
        self.round_trips = 0

    async def fetch(self, keys: Sequence[int]) -> tuple[list[bytes | None], int | None]:
        self.round_trips += 1
        return self.cache.get_many(keys), self.pointer

    async def write(self, keys: Sequence[int], values: Sequence[bytes]) -> None:
        self.round_trips += 1
        self.cache.put_many(keys, values)

    async def load_table(self, version: int) -> RoutingTable | None:
        raw = self.tables.get(version)
        return RoutingTable.from_bytes(raw) if raw is not None else None

    async def publish_table(self, table: RoutingTable) -> int:
        version = max(self.tables, default=0) + 1
        self.tables[version] = table.with_version(version).to_bytes()
        self.pointer = version
        return version
