"""The context-aware decision cache: policy, value encoding and the in-memory store.

Key: (hash of the stream's previous ``W-1`` tokens, token id, MoE layer) as a uint64, scoped by
router id in shared stores. Value: the learned router's decision for that key, packed into a few
bytes (:func:`encode_decisions`). Only learned-router decisions whose confidence is at least
``min_confidence`` are cached, so every cache hit is the exact decision the router would make
(its receptive field is the window): the cache never approximates.

Stores implement :class:`DecisionCache` (batched ``get_many``/``put_many``); the engine never
calls a store per token. :class:`MemoryDecisionCache` keeps entries in an LRU-ordered dict with
a TTL measured on an injectable clock. The Redis store (``pipeline.stores``) has the same
interface and stores the same bytes.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What is cached and for how long."""

    ttl_s: float = 60.0
    max_entries: int = 1000
    min_confidence: float = 0.8

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError("cache TTL must be > 0 seconds")
        if self.max_entries < 1:
            raise ValueError("cache size must be >= 1 entry")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("cache confidence threshold must be within [0, 1]")


def decision_dtype(top_k: int) -> np.dtype:
    """Packed little-endian layout of one cached decision (6k + 8 bytes)."""
    return np.dtype([("experts", "<i2", (top_k,)), ("weights", "<f4", (top_k,)),
                     ("confidence", "<f4"), ("entropy", "<f4")])


@dataclass(slots=True)
class DecisionArrays:
    """Decisions as columns: experts/weights [n, k], confidence/entropy [n]."""

    experts: np.ndarray
    weights: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray


def encode_decisions(experts: np.ndarray, weights: np.ndarray, confidence: np.ndarray,
                     entropy: np.ndarray) -> list[bytes]:
    """One packed value per row (float32 values kept bit-exact)."""
    n, k = experts.shape
    records = np.empty(n, dtype=decision_dtype(k))
    records["experts"], records["weights"] = experts, weights
    records["confidence"], records["entropy"] = confidence, entropy
    raw, size = records.tobytes(), records.itemsize
    return [raw[i : i + size] for i in range(0, n * size, size)]


def decode_records(values: Sequence[bytes], top_k: int) -> np.ndarray:
    """The packed values as one read-only structured array (fields as in :func:`decision_dtype`)."""
    return np.frombuffer(b"".join(values), dtype=decision_dtype(top_k))


def decode_decisions(values: Sequence[bytes], top_k: int) -> DecisionArrays:
    """Inverse of :func:`encode_decisions` for values of one ``top_k``."""
    records = decode_records(values, top_k)
    return DecisionArrays(records["experts"].astype(np.int64), records["weights"].copy(),
                          records["confidence"].copy(), records["entropy"].copy())


class DecisionCache(Protocol):
    """A batched decision store. Keys are uint64 cache keys (see ``hashing.cache_key``)."""

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        """The value of each key (``None`` when absent or expired), in order."""
        ...

    def put_many(self, keys: Sequence[int], values: Sequence[bytes]) -> None:
        """Store values under keys; they expire after the policy's TTL."""
        ...


def _last_lookup(keys: Sequence[int], hits: set[int]) -> Callable[[int], int]:
    """Sort key: the position of a hit's last occurrence in ``keys`` (a scan per hit when there
    are few hits, one index of all keys otherwise)."""
    if len(hits) <= 32:
        backwards = list(keys)[::-1]
        return lambda key: -backwards.index(key)
    return dict(zip(keys, range(len(keys)))).__getitem__


class MemoryDecisionCache:
    """In-process cache: LRU eviction beyond ``max_entries``, TTL on an injectable clock.

    A hit refreshes the entry's LRU position (not its expiry): decisions expire ``ttl_s``
    after they were written, whatever their use. Values and expiry times are kept in two maps
    so that a batch's lookups and writes run in C (``map``, set operations, ``update``); Python
    loops only over the hits and the evictions.
    """

    def __init__(self, policy: CachePolicy = CachePolicy(), clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._values: OrderedDict[int, bytes] = OrderedDict()  # LRU order, oldest first
        self._expiry: dict[int, float] = {}
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._values)

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        values = self._values
        result: list[bytes | None] = list(map(values.get, keys))
        hits = values.keys() & keys
        if not hits:
            return result
        now, expiry = self.clock(), self._expiry
        expired = {key for key in hits if expiry[key] <= now}
        live = hits - expired if expired else hits
        for key in sorted(live, key=_last_lookup(keys, live)) if len(live) > 1 else live:
            values.move_to_end(key)  # refreshed in the order of their last lookups
        if expired:
            for key in expired:
                del values[key], expiry[key]
            self.expirations += len(expired)
            result = [None if key in expired else value for key, value in zip(keys, result)]
        return result

    def put_many(self, keys: Sequence[int], values: Sequence[bytes]) -> None:
        expires_at = self.clock() + self.policy.ttl_s
        entries, fresh = self._values, dict.fromkeys(keys, expires_at)
        if len(fresh) < len(keys) or entries.keys() & fresh:  # rewrites move to the end in order
            for key, value in zip(keys, values):
                entries[key] = value
                entries.move_to_end(key)
        else:
            entries.update(zip(keys, values))
        self._expiry.update(fresh)
        for _ in range(len(entries) - self.policy.max_entries):
            del self._expiry[entries.popitem(last=False)[0]]
            self.evictions += 1
