"""Context-keyed routing evidence: (previous token, token) pairs, in bounded memory.

On a real MoE the token id alone leaves too much of the gate's choice open (the deeper the
layer, the more), and one more token of context closes much of that gap. A *pair* is the
previous token of the stream and the token, identified by ``prev * vocab_size + token``; the
first token of a stream has no previous token (PAD) and therefore no pair.

* :class:`PairStats` -- the same evidence as :class:`~pipeline.engine.stats.TokenStats` (traffic
  frequency from every decision, routing evidence only from learned ones), kept for at most
  ``cap`` pairs. Rows live in preallocated arrays and a dict maps pair ids to rows; when the
  rows exceed ``cap`` by a quarter, the pairs with the least traffic are dropped down to
  ``cap``. So memory is O(cap x experts) whatever the traffic, and the pairs that carry the
  most traffic -- the only ones a table can use -- are kept.
* :class:`PairRoutes` -- the table's pair part: the pairs with at least ``min_count`` learned
  observations, at most ``cap`` of them (the most traffic first), sorted by pair id so that a
  batch is resolved with one ``searchsorted``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from . import table_kernels

STATS_PAIR_FACTOR = 2  # statistics keep this many times the table's pair cap (the table's candidates)
_FLOAT = ("frequency", "routed", "entropy_sum", "confidence_sum")
_MATRIX = ("expert_weight", "top1")


def stats_pair_cap(table_cap: int) -> int:
    """How many pairs statistics keep for tables of at most ``table_cap`` pairs."""
    return STATS_PAIR_FACTOR * table_cap


def previous_tokens(contexts: np.ndarray) -> np.ndarray:
    """The token before each event, from context rows that end with the event's token (PAD = -1)."""
    if contexts.shape[1] < 2:
        return np.full(len(contexts), -1, np.int64)
    return contexts[:, -2].astype(np.int64)


def stream_previous(stream: np.ndarray) -> np.ndarray:
    """The token before each token of one whole stream (PAD = -1 for the first)."""
    return np.concatenate(([-1], stream[:-1])).astype(np.int64)


def pair_ids(prev: np.ndarray, tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """``prev * V + token`` per row, ``-1`` where there is no previous token (PAD or out of range)."""
    prev = np.asarray(prev, np.int64)
    valid = (prev >= 0) & (prev < vocab_size)
    return np.where(valid, prev * vocab_size + np.asarray(tokens, np.int64), -1)


class PairStats:
    """Bounded per-pair statistics (see module docstring). ``cap == 0`` keeps no pairs."""

    # set in __init__ by name (_FLOAT: float32 [rows], _MATRIX: float32 [rows, experts])
    frequency: np.ndarray
    routed: np.ndarray
    entropy_sum: np.ndarray
    confidence_sum: np.ndarray
    expert_weight: np.ndarray
    top1: np.ndarray

    def __init__(self, vocab_size: int, num_experts: int, cap: int) -> None:
        if cap < 0:
            raise ValueError("the pair statistics cap must be >= 0")
        self.vocab_size, self.num_experts, self.cap = vocab_size, num_experts, cap
        self.rows: dict[int, int] = {}
        self.keys = np.zeros(0, np.int64)
        for name in _FLOAT:
            setattr(self, name, np.zeros(0, np.float32))
        for name in _MATRIX:
            setattr(self, name, np.zeros((0, num_experts), np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    # --- rows ----------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        size = max(need, 2 * len(self.keys), 1024)
        self.keys = np.resize(self.keys, size)
        for name in _FLOAT + _MATRIX:
            old = getattr(self, name)
            new = np.zeros((size,) + old.shape[1:], old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _locate(self, ids: np.ndarray) -> np.ndarray:
        """Row of every id (>= 0), adding rows for new pairs."""
        rows, index = np.empty(len(ids), np.int64), self.rows
        for i, key in enumerate(ids.tolist()):
            row = index.get(key)
            if row is None:
                row = index[key] = len(index)
            rows[i] = row
        if len(index) > len(self.keys):
            self._grow(len(index))
        self.keys[rows] = ids
        return rows

    def prune(self) -> None:
        """Keep the ``cap`` pairs with the most traffic (ties: lower pair id), rows by pair id."""
        n = len(self.rows)
        if n <= self.cap + self.cap // 4:
            return
        keep = np.lexsort((self.keys[:n], -self.frequency[:n]))[: self.cap]
        self._take(keep[np.argsort(self.keys[keep], kind="stable")])

    def _take(self, rows: np.ndarray) -> None:
        self.keys = self.keys[rows].copy()
        for name in _FLOAT + _MATRIX:
            setattr(self, name, getattr(self, name)[rows].copy())
        self.rows = {key: i for i, key in enumerate(self.keys.tolist())}

    # --- evidence ------------------------------------------------------------------------
    def observe_tokens(self, ids: np.ndarray, prune: bool = True) -> None:
        """Count occurrences of the pairs ``ids`` (``-1``: no pair, skipped). ``prune=False``
        defers the bound to the next call that prunes (so that a batch's routing evidence is
        added before any of its pairs can be dropped)."""
        ids = ids[ids >= 0]
        if self.cap == 0 or len(ids) == 0:
            return
        uniq, counts = np.unique(ids, return_counts=True)
        rows = self._locate(uniq)  # may grow the arrays: index them only after
        self.frequency[rows] += counts
        if prune:
            self.prune()

    def observe_routing(self, ids: np.ndarray, experts: np.ndarray, weights: np.ndarray,
                        confidence: np.ndarray, entropy: np.ndarray) -> None:
        """Add learned decisions (rows aligned with ``ids``) as routing evidence of their pairs."""
        have = ids >= 0
        if self.cap == 0 or not have.any():
            return
        rows = self._locate(ids[have])
        experts, weights = experts[have], weights[have]
        np.add.at(self.routed, rows, 1.0)
        np.add.at(self.entropy_sum, rows, entropy[have])
        np.add.at(self.confidence_sum, rows, confidence[have])
        k = experts.shape[1]
        np.add.at(self.expert_weight, (np.repeat(rows, k), experts.ravel()), weights.ravel())
        np.add.at(self.top1, (rows, experts[:, 0]), 1.0)
        self.prune()

    def merge(self, other: "PairStats") -> None:
        if (other.vocab_size, other.num_experts) != (self.vocab_size, self.num_experts):
            raise ValueError("cannot merge pair statistics of different vocabularies or expert counts")
        n = len(other)
        if self.cap == 0 or n == 0:
            return
        rows = self._locate(other.keys[:n])
        for name in _FLOAT + _MATRIX:
            getattr(self, name)[rows] += getattr(other, name)[:n]
        self.prune()

    def forget_routing(self, tokens: np.ndarray) -> None:
        """Clear the routing evidence (not the frequency) of the pairs of the tokens in the mask
        ``tokens`` (bool [V])."""
        n = len(self)
        rows = np.flatnonzero(tokens[self.keys[:n] % self.vocab_size])
        for name in _FLOAT[1:] + _MATRIX:
            getattr(self, name)[rows] = 0.0

    def decay(self, factor: float) -> None:
        for name in _FLOAT + _MATRIX:
            getattr(self, name).__imul__(factor)

    def compact(self) -> "PairStats":
        """A copy with exactly ``len(self)`` rows sorted by pair id (canonical; for storing)."""
        clone = PairStats(self.vocab_size, self.num_experts, self.cap)
        n = len(self)
        clone.keys = self.keys[:n]
        for name in _FLOAT + _MATRIX:
            setattr(clone, name, getattr(self, name)[:n])
        clone._take(np.argsort(clone.keys, kind="stable"))
        return clone

    def arrays(self) -> dict[str, np.ndarray]:
        """The compact arrays under ``pair_<name>`` (see :meth:`from_arrays`)."""
        c = self.compact()
        out = {"pair_keys": c.keys, "pair_cap": np.asarray(self.cap)}
        out.update({f"pair_{name}": getattr(c, name) for name in _FLOAT + _MATRIX})
        return out

    @classmethod
    def from_arrays(cls, data: Mapping[str, Any], vocab_size: int, num_experts: int, cap: int) -> "PairStats":
        """Inverse of :meth:`arrays` (``data``: a mapping such as an open npz); empty if absent."""
        stored_cap = int(data["pair_cap"]) if "pair_cap" in data else cap
        stats = cls(vocab_size, num_experts, stored_cap)
        if "pair_keys" not in data:
            return stats
        stats.keys = np.asarray(data["pair_keys"], np.int64)
        for name in _FLOAT:
            setattr(stats, name, np.asarray(data[f"pair_{name}"], np.float32))
        for name in _MATRIX:
            setattr(stats, name, np.asarray(data[f"pair_{name}"], np.float32).reshape(-1, num_experts))
        stats.rows = {key: i for i, key in enumerate(stats.keys.tolist())}
        return stats

    def copy(self) -> "PairStats":
        return self.compact()

    def view(self) -> "PairView":
        """The compact rows with the derived quantities a table needs."""
        c = self.compact()
        return PairView(c.keys, c.frequency, c.routed, c.entropy_sum, c.confidence_sum, c.expert_weight, c.top1)


@dataclass(frozen=True, slots=True)
class PairView:
    """Compact pair statistics, rows sorted by pair id."""

    keys: np.ndarray
    frequency: np.ndarray
    routed: np.ndarray
    entropy_sum: np.ndarray
    confidence_sum: np.ndarray
    expert_weight: np.ndarray
    top1: np.ndarray

    def candidates(self, min_count: float, cap: int) -> np.ndarray:
        """Rows that may hold a table entry: ``routed >= min_count``, at most ``cap`` of them (the
        most traffic first, ties: lower pair id), in pair-id order."""
        ok = np.flatnonzero((self.routed >= max(min_count, 1.0)) if cap > 0 else np.zeros(len(self.keys), bool))
        if len(ok) > cap:
            ok = ok[np.lexsort((self.keys[ok], -self.frequency[ok]))[:cap]]
        return np.sort(ok)

    def agreement(self, rows: np.ndarray, num_experts: int) -> np.ndarray:
        """Estimated top-1 agreement of each row's route (the estimator of :mod:`.adaptive`)."""
        primary = np.argmax(self.expert_weight[rows], axis=1)
        hits = self.top1[rows, primary].astype(np.float64)
        agreement: np.ndarray = (hits + 1.0 / num_experts) / (self.routed[rows] + 1.0)
        return agreement

    def mean_entropy(self, rows: np.ndarray) -> np.ndarray:
        """float64, so that comparing with a (float) threshold is exact wherever it is done."""
        entropy: np.ndarray = self.entropy_sum[rows].astype(np.float64) / self.routed[rows]
        return entropy


@dataclass(slots=True)
class PairRoutes:
    """The pair entries of a fast-path table (rows sorted by pair id)."""

    keys: np.ndarray  # int64 [P]
    eligible: np.ndarray  # bool [P]
    experts: np.ndarray  # int16 [P, k]
    weights: np.ndarray  # float32 [P, k]
    confidence: np.ndarray  # float32 [P]
    entropy: np.ndarray  # float32 [P]
    frequency: np.ndarray  # float64 [P]
    _index: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    _ARRAYS = ("keys", "eligible", "experts", "weights", "confidence", "entropy", "frequency")

    def index(self) -> np.ndarray:
        """int64 [capacity, 2]: an open-addressing map pair id -> row (:func:`table_kernels.pair_index`),
        built on first use; the entries are immutable, so it never goes stale."""
        if self._index is None:
            self._index = table_kernels.pair_index(np.ascontiguousarray(self.keys, np.int64))
        return self._index

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls, top_k: int) -> "PairRoutes":
        return cls(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros((0, top_k), np.int16),
                   np.zeros((0, top_k), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros(0, np.float64))

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self._ARRAYS)
