"""The routing store: the shared decision cache and the versioned fast-path tables of every layer.

A store serves the ``layers`` MoE layers of one table set (see :mod:`.keys`): each layer has
its own decision keys and its own fast-path table, and the tables of all layers are published
and loaded together under ONE version number. Router workers talk to it once or twice per
micro-batch, never per token and never per layer:

* :meth:`RoutingStore.fetch` -- ONE round trip returns the cached decisions for the batch's
  unique keys of every layer *and* the current table-set version (the pointer rides along in
  the same MGET). ``per_layer`` says how many of the keys belong to each layer, layer after
  layer (the order of :attr:`~pipeline.engine.layered.LayeredPlan.unique_keys`).
* :meth:`RoutingStore.write` -- ONE round trip stores the batch's confident learned decisions
  of every layer (same ``per_layer`` convention).
* :meth:`RoutingStore.load_tables` -- only when the pointer moved: every layer's table of that
  version, in one round trip, or None if any of them is missing.

``load_table``/``publish_table`` are the one-layer shorthands (a store of one layer only).

Versions come from a sequence counter and are never reused. The pointer only moves forward, and
it moves in the same atomic step that writes every layer's table of the version, so a reader
never sees half a table set; a version that is not (or no longer) current expires -- all its
layers together -- ``grace_s`` after it was superseded, so a reader that saw the old pointer a
moment ago can still load it.

Degraded mode (:class:`DegradedMode`, shared by both stores): when the store is unreachable or
slow, ``fetch`` returns all misses and no version, ``write`` drops the batch and ``load_tables``
raises :class:`StoreUnavailable` -- the hot path never sees a store error. After a failure the
store is not touched again until a back-off delay has passed (``min_backoff_s`` doubling up to
``max_backoff_s``); the first successful call ends the outage. ``round_trips`` counts calls
that reached (or tried to reach) the store, ``degraded`` the calls that failed or were skipped
while backing off, ``outages`` the outages, ``in_outage`` whether one is going on.

:class:`~pipeline.stores.memory_store.MemoryRoutingStore` is the in-memory twin used by unit tests
and the profile bench (same semantics on an injectable clock, with a simulated outage switch);
:class:`~pipeline.stores.redis_store.RedisRoutingStore` is the real one.
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Protocol, Sequence, TypeVar

import numpy as np

from pipeline.engine.cache import Clock
from pipeline.engine.table import RoutingTable
from pipeline.engine.table_codec import TableError

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The routing store could not be reached (outage, timeout, or backing off after one)."""


class RoutingStore(Protocol):
    layers: int  # MoE layers served: decisions and tables of layers 0 .. layers-1

    async def fetch(self, keys: Sequence[int], per_layer: Sequence[int] | None = None
                    ) -> tuple[list[bytes | None], int | None]:
        """Cached values for ``keys`` (None = miss), in order, and the current table-set version
        (None = none). ``per_layer``: keys per layer, layer after layer (None: all of layer 0,
        one-layer stores only). Never raises for an outage: all misses and version None instead."""
        ...

    async def write(self, keys: Sequence[int], values: Sequence[bytes], per_layer: Sequence[int] | None = None) -> None:
        """Cache decisions (with the policy's TTL); ``per_layer`` as in :meth:`fetch`. Dropped
        silently during an outage."""
        ...

    async def load_tables(self, version: int) -> list[RoutingTable] | None:
        """Every layer's published table of this version; None if any of them does not exist
        (never published, expired after being superseded) or is unreadable. Raises
        :class:`StoreUnavailable` when the store cannot be asked -- the caller should retry
        later, not give the version up."""
        ...

    async def publish_tables(self, tables: Sequence[RoutingTable]) -> int:
        """Store one table per layer under a new version and make the set current unless a newer
        one already is (atomically: all layers or none); returns the version. Raises when the
        store is unreachable (a publisher must know)."""
        ...

    async def load_table(self, version: int) -> RoutingTable | None:
        """:meth:`load_tables` of a one-layer store."""
        ...

    async def publish_table(self, table: RoutingTable) -> int:
        """:meth:`publish_tables` of a one-layer store."""
        ...


def layer_slices(count: int, per_layer: Sequence[int] | None, layers: int) -> list[tuple[int, slice]]:
    """``(layer, rows)`` of each layer's share of ``count`` keys; ValueError if they do not add up."""
    if per_layer is None:
        if layers != 1:
            raise ValueError(f"a store of {layers} layers needs the number of keys of each layer")
        per_layer = [count]
    if len(per_layer) != layers or sum(per_layer) != count or min(per_layer) < 0:
        raise ValueError(f"{count} keys split as {list(per_layer)} do not fit {layers} layers")
    bounds = np.concatenate(([0], np.cumsum(per_layer))).tolist()
    return [(layer, slice(bounds[layer], bounds[layer + 1])) for layer in range(layers)]


class LayersMixin:
    """The one-layer shorthands and the table-count check, for stores with ``layers``."""

    layers: int

    def _check_tables(self, tables: Sequence[RoutingTable]) -> None:
        if len(tables) != self.layers:
            raise ValueError(f"got {len(tables)} tables for a store of {self.layers} layers")

    def _one_layer(self, what: str) -> None:
        if self.layers != 1:
            raise ValueError(f"{what} is for one-layer stores; this one has {self.layers} layers")

    async def load_tables(self, version: int) -> list[RoutingTable] | None:
        raise NotImplementedError

    async def publish_tables(self, tables: Sequence[RoutingTable]) -> int:
        raise NotImplementedError

    async def load_table(self, version: int) -> RoutingTable | None:
        self._one_layer("load_table")
        tables = await self.load_tables(version)
        return tables[0] if tables is not None else None

    async def publish_table(self, table: RoutingTable) -> int:
        self._one_layer("publish_table")
        return await self.publish_tables([table])


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


def parse_table(raw: bytes, version: int, layer: int = 0) -> RoutingTable | None:
    """The table in ``raw``; None (logged) when it is not a readable table."""
    try:
        return RoutingTable.from_bytes(raw)
    except TableError as exc:
        log.error("fast-path table v%s (layer %s) in the store is not readable: %s", version, layer, exc)
        return None


def parse_tables(raws: Sequence[bytes | None], version: int) -> list[RoutingTable] | None:
    """Every layer's table, or None if one is missing or unreadable (the set is all or nothing)."""
    if any(raw is None for raw in raws):
        return None
    tables = [parse_table(raw, version, layer) for layer, raw in enumerate(raws)]  # type: ignore[arg-type]
    return None if any(t is None for t in tables) else tables  # type: ignore[return-value]
