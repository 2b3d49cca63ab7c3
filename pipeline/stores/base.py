"""The routing store: the shared decision cache and the versioned fast-path table.

Router workers talk to it once or twice per micro-batch, never per token:

* :meth:`RoutingStore.fetch` -- ONE round trip returns the cached decisions for the batch's
  unique keys *and* the current table version (the pointer rides along in the same MGET).
* :meth:`RoutingStore.write` -- ONE round trip stores the batch's confident learned decisions.
* :meth:`RoutingStore.load_table` -- only when the pointer moved.

Versions come from a sequence counter and are never reused. The pointer only moves forward;
a version that is not (or no longer) current expires ``grace_s`` after it was superseded, so a
reader that saw the old pointer a moment ago can still load it.

Degraded mode (:class:`DegradedMode`, shared by both stores): when the store is unreachable or
slow, ``fetch`` returns all misses and no version, ``write`` drops the batch and ``load_table``
raises :class:`StoreUnavailable` -- the hot path never sees a store error. After a failure the
store is not touched again until a back-off delay has passed (``min_backoff_s`` doubling up to
``max_backoff_s``); the first successful call ends the outage. ``round_trips`` counts calls
that reached (or tried to reach) the store, ``degraded`` the calls that failed or were skipped
while backing off, ``outages`` the outages, ``in_outage`` whether one is going on.

:class:`MemoryRoutingStore` is the in-memory twin used by unit tests and the embedded mode (same
semantics on an injectable clock, with a simulated outage switch);
:class:`~pipeline.stores.redis_store.RedisRoutingStore` is the real one.
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Protocol, Sequence, TypeVar

from pipeline.engine.cache import CachePolicy, Clock, MemoryDecisionCache
from pipeline.engine.table import RoutingTable

log = logging.getLogger(__name__)
T = TypeVar("T")
_UNREADABLE = (ValueError, KeyError, TypeError)


class StoreUnavailable(Exception):
    """The routing store could not be reached (outage, timeout, or backing off after one)."""


class RoutingStore(Protocol):
    async def fetch(self, keys: Sequence[int]) -> tuple[list[bytes | None], int | None]:
        """Cached values for ``keys`` (None = miss) and the current table version (None = none).

        Never raises for an outage: all misses and version None instead."""
        ...

    async def write(self, keys: Sequence[int], values: Sequence[bytes]) -> None:
        """Cache decisions (with the policy's TTL). Dropped silently during an outage."""
        ...

    async def load_table(self, version: int) -> RoutingTable | None:
        """The published table with this version; None if it does not exist (never published,
        expired after being superseded) or is unreadable. Raises :class:`StoreUnavailable` when
        the store cannot be asked -- the caller should retry later, not give the version up."""
        ...

    async def publish_table(self, table: RoutingTable) -> int:
        """Store ``table`` under a new version and make it current unless a newer one already is;
        returns the version. Raises when the store is unreachable (a publisher must know)."""
        ...


class DegradedMode:
    """Outage accounting and back-off shared by the stores (see the module docstring).

    Subclasses run every hot-path round trip through :meth:`_attempt` (raises) or :meth:`_call`
    (returns a fallback) and set ``outage_errors`` to the exceptions that mean "unreachable".
    """

    outage_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    store_name = "routing store"  # in log lines and StoreUnavailable messages

    def __init__(self, clock: Clock = time.monotonic, max_backoff_s: float = 5.0,
                 min_backoff_s: float = 0.05) -> None:
        if min_backoff_s <= 0 or max_backoff_s <= 0:
            raise ValueError("back-off delays must be > 0 seconds")
        self.clock = clock
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.backoff_s = 0.0  # the current delay (0 outside an outage)
        self.retry_at = 0.0  # clock time before which the store is not touched during an outage
        self.round_trips = 0
        self.degraded = 0
        self.outages = 0
        self.in_outage = False

    def _backing_off(self) -> bool:
        return self.in_outage and self.clock() < self.retry_at

    async def _attempt(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One round trip. Raises :class:`StoreUnavailable` (counted in ``degraded``) while backing
        off -- without calling ``fn`` -- or when ``fn`` raises one of ``outage_errors``."""
        if self._backing_off():
            self.degraded += 1
            raise StoreUnavailable(f"{self.store_name} unavailable during {what} (backing off "
                                   f"{self.backoff_s:.2f} s after a failure)")
        self.round_trips += 1
        try:
            result = await fn()
        except self.outage_errors as exc:
            self._fail(what, exc)
            raise StoreUnavailable(f"{self.store_name} unavailable during {what} ({type(exc).__name__})") from exc
        if self.in_outage:
            log.warning("%s reachable again; leaving degraded mode", self.store_name, extra={"store_call": what})
            self.in_outage, self.backoff_s = False, 0.0
        return result

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]], fallback: T) -> T:
        """:meth:`_attempt`, returning ``fallback`` instead of raising :class:`StoreUnavailable`."""
        try:
            return await self._attempt(what, fn)
        except StoreUnavailable:
            return fallback

    def _fail(self, what: str, exc: BaseException) -> None:
        self.degraded += 1
        if not self.in_outage:
            self.outages += 1
            log.warning("%s unavailable (%s during %s); routing in degraded mode", self.store_name,
                        type(exc).__name__, what)
        self.in_outage = True
        self.backoff_s = min(self.max_backoff_s, max(self.min_backoff_s, self.backoff_s * 2))
        self.retry_at = self.clock() + self.backoff_s


def parse_table(raw: bytes, version: int) -> RoutingTable | None:
    """The table in ``raw``; None (logged) when it is not a readable table."""
    try:
        return RoutingTable.from_bytes(raw)
    except _UNREADABLE as exc:
        log.error("fast-path table v%s in the store is not readable: %s", version, exc)
        return None


class MemoryRoutingStore(DegradedMode):
    """In-process twin of the Redis store: same semantics and counters, no I/O.

    ``tables`` maps version -> serialized table, ``expires_at`` the superseded versions to the
    clock time they disappear at (like Redis, a version expires when the clock reaches it),
    ``sequence`` is the last allocated version, ``pointer`` the current one. The decision cache
    and the grace TTLs share ``clock``. :meth:`set_available` simulates an outage: the calls fail
    the way a timed-out Redis call does (one counted round trip, then back-off).
    """

    outage_errors = (ConnectionError,)
    store_name = "memory store"

    def __init__(self, policy: CachePolicy = CachePolicy(), clock: Clock = time.monotonic,
                 grace_s: float = 300.0, max_backoff_s: float = 5.0, min_backoff_s: float = 0.05) -> None:
        super().__init__(clock, max_backoff_s, min_backoff_s)
        self.cache = MemoryDecisionCache(policy, clock)
        self.grace_s = grace_s
        self.tables: dict[int, bytes] = {}
        self.expires_at: dict[int, float] = {}
        self.sequence = 0
        self.pointer: int | None = None
        self.available = True

    def set_available(self, available: bool) -> None:
        """Switch the simulated outage off (True) or on (False)."""
        self.available = available

    async def _reach(self, op: Callable[[], T]) -> T:
        """Run ``op`` as if it were a round trip (fails while the simulated outage is on)."""
        if not self.available:
            raise ConnectionError("simulated routing store outage")
        return op()

    async def fetch(self, keys: Sequence[int]) -> tuple[list[bytes | None], int | None]:
        misses: tuple[list[bytes | None], int | None] = ([None] * len(keys), None)
        return await self._call("fetch", lambda: self._reach(lambda: (self.cache.get_many(keys), self.pointer)),
                                misses)

    async def write(self, keys: Sequence[int], values: Sequence[bytes]) -> None:
        if not keys:
            return
        await self._call("write", lambda: self._reach(lambda: self.cache.put_many(keys, values)), None)

    def _get_table(self, version: int) -> bytes | None:
        expires = self.expires_at.get(version)
        if expires is not None and expires <= self.clock():
            self.tables.pop(version, None)
            self.expires_at.pop(version, None)
        return self.tables.get(version)

    async def load_table(self, version: int) -> RoutingTable | None:
        raw = await self._attempt("load_table", lambda: self._reach(lambda: self._get_table(version)))
        return parse_table(raw, version) if raw is not None else None

    def ttl_s(self, version: int) -> float | None:
        """Seconds until ``version`` expires; None if it does not (current, or missing)."""
        if self._get_table(version) is None or version not in self.expires_at:
            return None
        return self.expires_at[version] - self.clock()

    async def publish_table(self, table: RoutingTable) -> int:
        """Same steps as the Redis store's two server-side scripts; raises :class:`StoreUnavailable`
        during a simulated outage (publishing is not part of the degraded-mode accounting)."""
        if not self.available:
            raise StoreUnavailable("routing store unavailable during publish_table (simulated outage)")
        self.sequence = max(self.sequence, self.pointer or 0) + 1
        version = self.sequence
        blob = table.with_version(version).to_bytes()
        current, grace_until = self.pointer, self.clock() + self.grace_s
        if current is None or version > current:
            self.tables[version] = blob
            self.expires_at.pop(version, None)
            self.pointer = version
            if current is not None and self._get_table(current) is not None:
                self.expires_at[current] = grace_until
        elif version < current:
            self.tables[version], self.expires_at[version] = blob, grace_until
        return version
