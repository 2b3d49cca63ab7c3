"""Adaptive fast-path thresholds: choose (min_frequency, max_entropy) to meet a learned-router budget.

The fixed predicate ``frequency > F and entropy < H`` leaves the learned-router share to chance:
it depends on the traffic. This module picks ``F`` and ``H`` from the current statistics instead.

Model (everything from :class:`~pipeline.engine.stats.TokenStats`, no I/O):

* a token's **traffic share** is ``p_t = frequency_t / total frequency``;
* a token on the fast path agrees (top-1) with the learned router with probability
  ``a_t = (hits_t + 1/E) / (routed_t + 1)``, where ``hits_t`` counts the token's learned
  decisions whose top-1 is the table's top-1 expert for it. The one pseudo-observation at chance
  level (``1/E``) shrinks tokens with little evidence towards chance, so a token seen once is not
  trusted like one seen a hundred times;
* a token not on the fast path goes to the learned router (or the cache, which holds exact
  learned decisions): agreement 1. Tokens without routing evidence are never eligible.

For thresholds ``T`` with eligible set ``E(T)`` the **predicted learned share** (the share of traffic
the fast path does *not* take: learned router or cache -- an upper bound for the learned share,
since cache hits come out of it) is ``1 - sum_{t in E} p_t`` and the **expected agreement** is
``1 - sum_{t in E} p_t (1 - a_t)``.

Choice: among all candidate pairs (every distinct frequency as ``F``, up to ``grid`` entropy
quantiles as ``H``) keep those whose predicted learned share is <= ``target`` and take the one
with the highest expected agreement (ties: fewer fast-path tokens). If no pair meets the target
(e.g. early in a cold start, when most traffic comes from tokens without evidence) take the
pair with the lowest predicted learned share (ties: higher agreement) and say it is infeasible.
The choice is made afresh at every refresh. Keeping the current pair while it stays nearly as
good (hysteresis) was tried and dropped: on the synthetic corpus it did not reduce the number of
tokens entering/leaving the fast path, and because absolute frequencies grow, a kept ``F`` lets
ever more tokens in, so the learned share drifted below the target (8% for a 10% target).
For each ``H`` the eligible sets over all ``F`` are prefixes of the tokens sorted by frequency,
so the whole search is one sort and one cumulative sum per entropy candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import TokenStats
from .table import Thresholds

DEFAULT_GRID = 48


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a set of thresholds is expected to do on traffic distributed like the statistics."""

    learned_share: float  # traffic share not served by the fast path
    expected_agreement: float  # top-1 agreement with the learned router over all traffic
    fast_tokens: int

    def to_meta(self) -> dict[str, Any]:
        return {"predicted_learned_share": self.learned_share, "expected_agreement": self.expected_agreement,
                "fast_tokens": self.fast_tokens}


@dataclass(frozen=True, slots=True)
class AdaptiveChoice:
    """The chosen thresholds, their prediction and whether they meet the target."""

    thresholds: Thresholds
    prediction: Prediction
    target: float
    feasible: bool
    candidates: int

    def to_meta(self) -> dict[str, Any]:
        return {"adaptive": {"target": self.target, "feasible": self.feasible, "candidates": self.candidates,
                             "thresholds": self.thresholds.to_dict(), **self.prediction.to_meta()}}


def token_agreement(stats: TokenStats) -> np.ndarray:
    """Estimated top-1 agreement ``a_t`` of each token's fast-path route (see module docstring)."""
    primary = np.argmax(stats.expert_weight, axis=1)
    hits = stats.top1[np.arange(stats.vocab_size), primary]
    return (hits + 1.0 / stats.num_experts) / (stats.routed + 1.0)


def _shares(stats: TokenStats) -> np.ndarray:
    total = stats.total_frequency
    return stats.frequency / total if total > 0 else np.zeros(stats.vocab_size)


def predict(stats: TokenStats, thresholds: Thresholds) -> Prediction:
    """Predicted learned share and expected agreement of ``thresholds`` on ``stats``."""
    p, eligible = _shares(stats), thresholds.eligible(stats)
    loss = float((p * (1.0 - token_agreement(stats)))[eligible].sum())
    return Prediction(1.0 - float(p[eligible].sum()), 1.0 - loss, int(eligible.sum()))


def _entropy_candidates(entropy: np.ndarray, grid: int) -> np.ndarray:
    """Upper bounds ``H`` such that ``entropy < H`` selects each quantile (and everything)."""
    if len(entropy) == 0:
        return np.zeros(0)
    levels = np.unique(np.quantile(entropy, np.linspace(0.0, 1.0, max(2, grid))))
    return np.nextafter(levels, np.inf)


def _sweep_frequency(freq: np.ndarray, share: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, ...]:
    """For tokens already passing the entropy test: every frequency cut ``F`` (eligible: f > F),
    the fast share and the agreement loss of the resulting set, and its size."""
    order = np.argsort(-freq, kind="stable")
    f = freq[order]
    cum_share = np.concatenate(([0.0], np.cumsum(share[order])))
    cum_loss = np.concatenate(([0.0], np.cumsum(loss[order])))
    cuts = np.unique(np.concatenate((f, [0.0])))  # F candidates (ascending)
    sizes = len(f) - np.searchsorted(f[::-1], cuts, side="right")  # how many f > F
    return cuts, cum_share[sizes], cum_loss[sizes], sizes


def choose_thresholds(stats: TokenStats, target: float, static_below: int = 0,
                      grid: int = DEFAULT_GRID, fallback: Thresholds | None = None) -> AdaptiveChoice:
    """Thresholds that meet ``target`` with the highest expected agreement (module docstring).

    ``static_below`` is kept as configured (those tokens are eligible regardless). Without any
    routing evidence there is nothing to choose from: ``fallback`` (default ``Thresholds()`` with
    ``static_below``) is returned, marked infeasible.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError("adaptive target must be within [0, 1]")
    p, known = _shares(stats), stats.routed > 0
    loss = p * (1.0 - token_agreement(stats))
    static = known & (np.arange(stats.vocab_size) < static_below)
    open_ = known & ~static
    entropy = stats.mean_entropy()
    rows = []  # (F, H, fast share, loss, size)
    for h in _entropy_candidates(entropy[open_], grid):
        sel = open_ & (entropy < h)
        cuts, share, lost, sizes = _sweep_frequency(stats.frequency[sel], p[sel], loss[sel])
        rows.append(np.column_stack((cuts, np.full(len(cuts), h), share, lost, sizes)))
    if not rows:
        chosen = fallback or Thresholds(static_below=static_below)
        return AdaptiveChoice(chosen, predict(stats, chosen), target, False, 0)
    table = np.concatenate(rows)
    learned = 1.0 - p[static].sum() - table[:, 2]
    agreement = 1.0 - loss[static].sum() - table[:, 3]
    feasible = learned <= target + 1e-12
    if feasible.any():
        # highest agreement, then fewest fast tokens, then the strictest thresholds
        keys = (table[:, 1], -table[:, 0], table[:, 4], -np.where(feasible, agreement, -np.inf))
    else:
        keys = (table[:, 1], -table[:, 0], -agreement, learned)
    best = int(np.lexsort(keys)[0])  # the last key is the primary one
    chosen = Thresholds(float(table[best, 0]), float(table[best, 1]), static_below)
    return AdaptiveChoice(chosen, predict(stats, chosen), target, bool(feasible.any()), len(table))
