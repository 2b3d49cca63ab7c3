"""The in-memory twin of the Redis routing store (:mod:`.base` states the contract both keep).

Used by unit tests, the engine profile bench and the contract suite
(``tests/unit/test_store_contract.py``), which runs the same cases against real Redis: same
table-set versions, grace TTL and degraded mode, on an injectable clock, with a simulated outage
switch (:meth:`MemoryRoutingStore.set_available`).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence, TypeVar

from pipeline.engine.cache import CachePolicy, Clock, MemoryDecisionCache
from pipeline.engine.table import RoutingTable

from .base import DegradedMode, LayersMixin, StoreUnavailable, layer_slices, parse_tables

T = TypeVar("T")

class MemoryRoutingStore(LayersMixin, DegradedMode):
    """In-process twin of the Redis store: same semantics and counters, no I/O.

    ``caches`` holds one decision cache per layer (like the per-layer Redis keys), ``tables``
    maps (version, layer) -> serialized table, ``expires_at`` the superseded versions to the
    clock time they disappear at, all their layers together (like Redis, a version expires when
    the clock reaches it), ``sequence`` is the last allocated version, ``pointer`` the current
    one. The decision caches and the grace TTLs share ``clock``. :meth:`set_available`
    simulates an outage: the calls fail the way a timed-out Redis call does (one counted round
    trip, then back-off).
    """

    outage_errors = (ConnectionError,)
    store_name = "memory store"

    def __init__(self, policy: CachePolicy = CachePolicy(), clock: Clock = time.monotonic,
                 grace_s: float = 300.0, max_backoff_s: float = 5.0, min_backoff_s: float = 0.05,
                 layers: int = 1) -> None:
        super().__init__(clock, max_backoff_s, min_backoff_s)
        if layers < 1:
            raise ValueError("a routing store serves at least one layer")
        self.layers = layers
        self.caches = [MemoryDecisionCache(policy, clock) for _ in range(layers)]
        self.grace_s = grace_s
        self.tables: dict[tuple[int, int], bytes] = {}
        self.expires_at: dict[int, float] = {}
        self.sequence = 0
        self.pointer: int | None = None
        self.available = True

    @property
    def cache(self) -> MemoryDecisionCache:
        """Layer 0's decision cache."""
        return self.caches[0]

    def set_available(self, available: bool) -> None:
        """Switch the simulated outage off (True) or on (False)."""
        self.available = available

    async def _reach(self, op: Callable[[], T]) -> T:
        """Run ``op`` as if it were a round trip (fails while the simulated outage is on)."""
        if not self.available:
            raise ConnectionError("simulated routing store outage")
        return op()

    def _get_many(self, keys: Sequence[int], parts: list[tuple[int, slice]]) -> list[bytes | None]:
        return [value for layer, rows in parts for value in self.caches[layer].get_many(keys[rows])]

    def _put_many(self, keys: Sequence[int], values: Sequence[bytes], parts: list[tuple[int, slice]]) -> None:
        for layer, rows in parts:
            if rows.stop > rows.start:
                self.caches[layer].put_many(keys[rows], values[rows])

    async def fetch(self, keys: Sequence[int], per_layer: Sequence[int] | None = None
                    ) -> tuple[list[bytes | None], int | None]:
        parts = layer_slices(len(keys), per_layer, self.layers)
        misses: tuple[list[bytes | None], int | None] = ([None] * len(keys), None)
        return await self._call("fetch", lambda: self._reach(lambda: (self._get_many(keys, parts), self.pointer)),
                                misses)

    async def write(self, keys: Sequence[int], values: Sequence[bytes], per_layer: Sequence[int] | None = None) -> None:
        parts = layer_slices(len(keys), per_layer, self.layers)
        if not keys:
            return
        await self._call("write", lambda: self._reach(lambda: self._put_many(keys, values, parts)), None)

    def _get_table(self, version: int, layer: int = 0) -> bytes | None:
        expires = self.expires_at.get(version)
        if expires is not None and expires <= self.clock():
            for key in [k for k in self.tables if k[0] == version]:
                del self.tables[key]
            self.expires_at.pop(version, None)
        return self.tables.get((version, layer))

    async def load_tables(self, version: int) -> list[RoutingTable] | None:
        raws = await self._attempt("load_tables", lambda: self._reach(
            lambda: [self._get_table(version, layer) for layer in range(self.layers)]))
        return parse_tables(raws, version)

    def ttl_s(self, version: int, layer: int = 0) -> float | None:
        """Seconds until ``version`` (``layer``'s table of it) expires; None if it does not
        (current, or missing)."""
        if self._get_table(version, layer) is None or version not in self.expires_at:
            return None
        return self.expires_at[version] - self.clock()

    async def publish_tables(self, tables: Sequence[RoutingTable]) -> int:
        """Same steps as the Redis store's two server-side scripts; raises :class:`StoreUnavailable`
        during a simulated outage (publishing is not part of the degraded-mode accounting)."""
        self._check_tables(tables)
        if not self.available:
            raise StoreUnavailable("routing store unavailable during publish_tables (simulated outage)")
        self.sequence = max(self.sequence, self.pointer or 0) + 1
        version = self.sequence
        blobs = {(version, layer): t.with_version(version).to_bytes() for layer, t in enumerate(tables)}
        current, grace_until = self.pointer, self.clock() + self.grace_s
        if current is None or version > current:
            self.tables.update(blobs)
            self.expires_at.pop(version, None)
            self.pointer = version
            if current is not None and any(self._get_table(current, layer) is not None for layer in range(self.layers)):
                self.expires_at[current] = grace_until
        elif version < current:
            self.tables.update(blobs)
            self.expires_at[version] = grace_until
        return version
