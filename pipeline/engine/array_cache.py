"""The engine's own decision cache, held as arrays: a batch's lookups and writes are one compiled
pass each (:mod:`.cache_kernels`), with no Python object per key.

It keeps the policy of :class:`~pipeline.engine.cache.MemoryDecisionCache` exactly -- LRU beyond
``max_entries``, a hit refreshes recency (in the order of the batch's lookups) but not the
expiry, an entry expires ``ttl_s`` after it was written, on an injectable clock -- and stores
decisions as columns instead of packed bytes. It also answers the byte interface
(:class:`~pipeline.engine.cache.DecisionCache`) for values packed by
:func:`~pipeline.engine.cache.encode_decisions` with its ``top_k``.

The entry pool grows by doubling up to ``max_entries`` (plus the largest write: entries are
evicted once a write is in), so a large capacity costs memory only once it is used.
"""
from __future__ import annotations

import time
from itertools import compress
from typing import Protocol, Sequence

import numpy as np

from . import cache_kernels as ck
from .cache import CachePolicy, Clock, DecisionArrays, DecisionCache, decode_records, encode_decisions

CacheHits = tuple[np.ndarray, tuple[np.ndarray, ...]]  # (hit row of each key or -1; the hits' columns)


class ColumnCache(Protocol):
    """A decision cache the engine reads and writes as arrays."""

    def lookup(self, keys: np.ndarray) -> CacheHits:
        """Row of each key (uint64 [n]) among the hits, -1 when absent; the hits' experts
        [h, k] int64, weights [h, k], confidence [h] and entropy [h] float32, in key order."""
        ...

    def store(self, keys: np.ndarray, decisions: DecisionArrays) -> None:
        """Write ``decisions`` row by row under ``keys``."""
        ...


class ArrayDecisionCache:
    """See the module docstring; ``top_k`` fixes the width of the stored decisions."""

    _MIN_POOL = 256

    def __init__(self, policy: CachePolicy, top_k: int, clock: Clock = time.monotonic) -> None:
        self.policy, self.top_k, self.clock = policy, top_k, clock
        self._state = np.zeros(ck.STATE_SIZE, np.int64)
        self._state[[ck.OLDEST, ck.NEWEST]] = -1
        self._pool = self._allocate(min(policy.max_entries, self._MIN_POOL))

    def _allocate(self, size: int) -> tuple[np.ndarray, ...]:
        cap = 1 << max(3, (2 * size - 1).bit_length())  # a power of two >= 2 * size
        return (np.zeros(cap, np.uint64), np.full(cap, -1, np.int64), np.zeros(size, np.uint64),
                np.full(size, -1, np.int64), np.full(size, -1, np.int64), np.zeros(size, np.float64),
                np.zeros((size, self.top_k), np.int64), np.zeros((size, self.top_k), np.float32),
                np.zeros(size, np.float32), np.zeros(size, np.float32), np.zeros(size, np.int64))

    def reserve(self, adding: int) -> None:
        """Grow the pool so that ``adding`` more keys fit before the evictions (doubling, but not
        beyond what ``max_entries`` plus this write needs)."""
        size, need = len(self._pool[2]), int(self._state[ck.COUNT]) + adding
        if need <= size:
            return
        grown = self._allocate(max(need, min(2 * size, self.policy.max_entries)))
        for old, new in zip(self._pool[2:], grown[2:]):
            new[:size] = old
        index = ck.reindex(grown[2], grown[3], self._state, len(grown[0]))
        self._pool = index + grown[2:]

    def kernel_state(self) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """(pool, state) as the compiled kernels read and update them in place (a fused batch,
        :mod:`.batch_kernels`); the pool is replaced when :meth:`reserve` grows it."""
        return self._pool, self._state

    def __len__(self) -> int:
        return int(self._state[ck.COUNT])

    @property
    def evictions(self) -> int:
        return int(self._state[ck.EVICTIONS])

    @property
    def expirations(self) -> int:
        return int(self._state[ck.EXPIRATIONS])

    def lookup(self, keys: np.ndarray) -> CacheHits:
        slot, *columns = ck.lookup(np.ascontiguousarray(keys, np.uint64), float(self.clock()), self._pool, self._state)
        return slot, tuple(columns)

    def store(self, keys: np.ndarray, decisions: DecisionArrays) -> None:
        if len(keys) == 0:
            return
        self.reserve(len(keys))
        d, c = decisions, np.ascontiguousarray
        ck.store(c(keys, np.uint64), c(d.experts, np.int64), c(d.weights, np.float32), c(d.confidence, np.float32),
                 c(d.entropy, np.float32), float(self.clock()) + self.policy.ttl_s, self._pool, self._state,
                 self.policy.max_entries)

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        """The byte interface: packed values (``encode_decisions``), ``None`` for misses."""
        slot, (experts, weights, confidence, entropy) = self.lookup(np.asarray(keys, np.uint64).reshape(-1))
        values = encode_decisions(experts, weights, confidence, entropy)
        return [values[s] if s >= 0 else None for s in slot.tolist()]

    def put_many(self, keys: Sequence[int], values: Sequence[bytes]) -> None:
        """The byte interface: ``values`` packed by ``encode_decisions`` with this ``top_k``."""
        records = decode_records(values, self.top_k)
        self.store(np.asarray(keys, np.uint64).reshape(-1), DecisionArrays(
            records["experts"], records["weights"], records["confidence"], records["entropy"]))


class BytesColumns:
    """Any byte :class:`~pipeline.engine.cache.DecisionCache` seen as a :class:`ColumnCache`."""

    def __init__(self, cache: DecisionCache, top_k: int) -> None:
        self.cache, self.top_k = cache, top_k

    def lookup(self, keys: np.ndarray) -> CacheHits:
        return hits_of(self.cache.get_many(keys.tolist()), self.top_k)

    def store(self, keys: np.ndarray, decisions: DecisionArrays) -> None:
        if len(keys):
            d = decisions
            self.cache.put_many(keys.tolist(), encode_decisions(d.experts, d.weights, d.confidence, d.entropy))


def columns_of(cache: DecisionCache | ArrayDecisionCache, top_k: int) -> ColumnCache:
    """``cache`` itself when it reads and writes arrays, else its byte interface adapted."""
    return cache if isinstance(cache, ArrayDecisionCache) else BytesColumns(cache, top_k)


def hits_of(cached: Sequence[bytes | None], top_k: int) -> CacheHits:
    """Byte lookups (``None`` for a miss) as :data:`CacheHits`."""
    present = bytes(map(bool, cached))  # values are never empty: 1 where found
    slot = np.full(len(cached), -1, dtype=np.int64)
    found = np.flatnonzero(np.frombuffer(present, np.bool_))
    slot[found] = np.arange(len(found))
    records = decode_records(list(compress(cached, present)), top_k)  # type: ignore[arg-type]  # None dropped
    dtypes = {"experts": np.int64, "weights": np.float32, "confidence": np.float32, "entropy": np.float32}
    return slot, tuple(np.array(records[name], dtype, order="C") for name, dtype in dtypes.items())  # as lookup's
