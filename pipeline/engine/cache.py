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


def decode_decisions(values: Sequence[bytes], top_k: int) -> DecisionArrays:
    """Inverse of :func:`encode_decisions` for values of one ``top_k``."""
    records = np.frombuffer(b"".join(values), dtype=decision_dtype(top_k))
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


class MemoryDecisionCache:
    """In-process cache: LRU eviction beyond ``max_entries``, TTL on an injectable clock.

    A hit refreshes the entry's LRU position (not its expiry): decisions expire ``ttl_s``
    after they were written, whatever their use.
    """

    def __init__(self, policy: CachePolicy = CachePolicy(), clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._entries: OrderedDict[int, tuple[float, bytes]] = OrderedDict()
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        entries = self._entries
        found = list(map(entries.get, keys))
        now = self.clock()
        result: list[bytes | None] = [None] * len(found)
        for i, entry in enumerate(found):
            if entry is None:
                continue
            if entry[0] <= now:
                if entries.pop(keys[i], None) is not None:
                    self.expirations += 1
                continue
            entries.move_to_end(keys[i])
            result[i] = entry[1]
        return result

    def put_many(self, keys: Sequence[int], values: Sequence[bytes]) -> None:
        expires_at = self.clock() + self.policy.ttl_s
        entries = self._entries
        for key, value in zip(keys, values):
            entries[key] = (expires_at, value)
            entries.move_to_end(key)
        for _ in range(len(entries) - self.policy.max_entries):
            entries.popitem(last=False)
            self.evictions += 1
