"""Per-token routing statistics in bounded memory (O(vocab x experts), whatever the traffic).

Two kinds of evidence are kept apart on purpose:

* **frequency** -- how often a token occurs. A fact about the traffic, so every routed event
  counts, whichever tier served it.
* **routing evidence** -- entropy, confidence, the expert distribution. Only decisions computed
  by the learned router count. Fast-path and budget-fallback decisions are VAR's own guesses,
  and feeding them back would confirm the table by itself (the self-confirmation loop). Cache
  hits are exact router decisions, but only the confident ones are cached, so they would bias
  entropy downwards; they are not counted either.

``decay(f)`` multiplies everything by ``f`` so that old evidence fades (bounded influence);
means are unaffected by a uniform decay.

With ``pair_cap > 0`` the same evidence is also kept per (previous token, token) pair, for at
most ``pair_cap`` pairs (:mod:`.pairs`); callers pass each row's previous token (``prev``,
PAD = -1) and rows without one count for their token only.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from .pairs import PairStats, pair_ids


class TokenStats:
    """Accumulated per-token statistics for ``vocab_size`` tokens and ``num_experts`` experts."""

    def __init__(self, vocab_size: int, num_experts: int, pair_cap: int = 0) -> None:
        self.vocab_size = vocab_size
        self.num_experts = num_experts
        self.frequency = np.zeros(vocab_size, dtype=np.float64)
        self.routed = np.zeros(vocab_size, dtype=np.float64)
        self.entropy_sum = np.zeros(vocab_size, dtype=np.float64)
        self.confidence_sum = np.zeros(vocab_size, dtype=np.float64)
        self.expert_weight = np.zeros((vocab_size, num_experts), dtype=np.float64)
        self.top1 = np.zeros((vocab_size, num_experts), dtype=np.float64)
        self.pairs = PairStats(vocab_size, num_experts, pair_cap)

    _ARRAYS = ("frequency", "routed", "entropy_sum", "confidence_sum", "expert_weight", "top1")

    def observe(self, tokens: np.ndarray, prev: np.ndarray | None, learned: np.ndarray, experts: np.ndarray,
                weights: np.ndarray, confidence: np.ndarray, entropy: np.ndarray) -> None:
        """Count a batch: every row as traffic, the ``learned`` rows (a mask over all rows;
        ``experts`` etc. cover all rows) as routing evidence too."""
        self.observe_tokens(tokens, prev, prune=False)
        self.observe_routing(tokens[learned], experts[learned], weights[learned], confidence[learned],
                             entropy[learned], None if prev is None else prev[learned])
        self.pairs.prune()

    def observe_tokens(self, tokens: np.ndarray, prev: np.ndarray | None = None, prune: bool = True) -> None:
        """Count occurrences of ``tokens`` (all tiers), and of their pairs if ``prev`` is given."""
        self.frequency += np.bincount(tokens, minlength=self.vocab_size)[: self.vocab_size]
        if prev is not None:
            self.pairs.observe_tokens(pair_ids(prev, tokens, self.vocab_size), prune)

    def observe_routing(
        self,
        tokens: np.ndarray,
        experts: np.ndarray,
        weights: np.ndarray,
        confidence: np.ndarray,
        entropy: np.ndarray,
        prev: np.ndarray | None = None,
    ) -> None:
        """Add learned-router decisions (rows aligned with ``tokens``) as routing evidence."""
        if len(tokens) == 0:
            return
        if prev is not None:
            self.pairs.observe_routing(pair_ids(prev, tokens, self.vocab_size), experts, weights, confidence,
                                       entropy)
        v = self.vocab_size
        self.routed += np.bincount(tokens, minlength=v)[:v]
        self.entropy_sum += np.bincount(tokens, weights=entropy, minlength=v)[:v]
        self.confidence_sum += np.bincount(tokens, weights=confidence, minlength=v)[:v]
        k = experts.shape[1]
        np.add.at(self.expert_weight, (np.repeat(tokens, k), experts.ravel()), weights.ravel())
        np.add.at(self.top1, (tokens, experts[:, 0]), 1.0)

    def merge(self, other: "TokenStats") -> None:
        """Add ``other``'s evidence (same vocabulary and experts) to this one."""
        if (other.vocab_size, other.num_experts) != (self.vocab_size, self.num_experts):
            raise ValueError("cannot merge statistics of different vocabularies or expert counts")
        for name in self._ARRAYS:
            getattr(self, name).__iadd__(getattr(other, name))
        self.pairs.merge(other.pairs)

    def forget_routing(self, tokens: np.ndarray) -> None:
        """Clear the routing evidence (not the frequency) of the tokens of the mask ``tokens`` and of
        their pairs, e.g. evidence that live audits disproved."""
        for name in self._ARRAYS[1:]:
            getattr(self, name)[tokens] = 0.0
        self.pairs.forget_routing(tokens)

    def decay(self, factor: float) -> None:
        """Multiply all evidence by ``factor`` in (0, 1]."""
        if not 0.0 < factor <= 1.0:
            raise ValueError("decay factor must be in (0, 1]")
        for name in self._ARRAYS:
            getattr(self, name).__imul__(factor)
        self.pairs.decay(factor)

    def _mean(self, sums: np.ndarray, empty: float) -> np.ndarray:
        out = np.full(self.vocab_size, empty, dtype=np.float64)
        seen = self.routed > 0
        out[seen] = sums[seen] / self.routed[seen]
        return out

    def mean_entropy(self) -> np.ndarray:
        """Mean routing entropy per token (``inf`` where there is no routing evidence)."""
        return self._mean(self.entropy_sum, np.inf)

    def mean_confidence(self) -> np.ndarray:
        return self._mean(self.confidence_sum, 0.0)

    def modal_share(self) -> np.ndarray:
        """Share of a token's learned decisions whose top-1 is its most frequent top-1."""
        return self._mean(self.top1.max(axis=1), 0.0)

    def expert_prior(self) -> np.ndarray:
        """Traffic-wide distribution of gate weight over experts (uniform if no evidence)."""
        total = self.expert_weight.sum(axis=0)
        if total.sum() <= 0:
            return np.full(self.num_experts, 1.0 / self.num_experts)
        prior: np.ndarray = total / total.sum()
        return prior

    @property
    def total_frequency(self) -> float:
        return float(self.frequency.sum())

    @property
    def total_routed(self) -> float:
        return float(self.routed.sum())

    def copy(self) -> "TokenStats":
        clone = TokenStats(self.vocab_size, self.num_experts)
        for name in self._ARRAYS:
            setattr(clone, name, getattr(self, name).copy())
        clone.pairs = self.pairs.copy()
        return clone

    def to_bytes(self) -> bytes:
        """Serialise (compressed npz); inverse of :meth:`from_bytes`."""
        buf = io.BytesIO()
        pairs: dict[str, Any] = self.pairs.arrays()  # Any: savez_compressed's keywords include allow_pickle
        np.savez_compressed(buf, **{name: getattr(self, name) for name in self._ARRAYS}, **pairs)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "TokenStats":
        with np.load(io.BytesIO(raw)) as data:
            v, e = data["expert_weight"].shape
            stats = cls(v, e)
            for name in cls._ARRAYS:
                setattr(stats, name, data[name].astype(np.float64))
            stats.pairs = PairStats.from_arrays(data, v, e, 0)
        return stats
