"""Adaptive fast-path thresholds: choose the token and pair thresholds together to meet a learned budget.

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

**Pairs.** The (previous token, token) pairs that hold a table entry (evidence and cap, see
:meth:`~.pairs.PairView.candidates`) take their own traffic, with their own agreement estimate;
a token's entry serves only its *back-off* traffic (its frequency minus that of its pairs in the
table). So an entry ``e`` -- pair or token -- has a traffic share ``p_e`` and agreement ``a_e``.

For thresholds ``T`` with eligible entries ``E(T)`` the **predicted learned share** (the share of traffic
the fast path does *not* take: learned router or cache -- an upper bound for the learned share,
since cache hits come out of it) is ``1 - sum_{t in E} p_t`` and the **expected agreement** is
``1 - sum_{t in E} p_t (1 - a_t)``.

Choice: among all candidates (for tokens every distinct frequency as ``F`` and up to ``grid``
entropy quantiles as ``H``; for pairs up to ``grid`` entropy quantiles as ``pair_max_entropy``,
and "no pair") keep those whose predicted learned share is <= ``target`` and take the one
with the highest expected agreement (ties: fewer fast-path tokens). If none meets the target
(e.g. early in a cold start, when most traffic comes from tokens without evidence) take the
pair with the lowest predicted learned share (ties: higher agreement) and say it is infeasible.
**Audit bans.** Tokens banned for their live audits (:func:`~.audit_evidence.ban_tokens`: no
token entry, no pair entry) take no fast traffic whatever the thresholds: ``banned`` zeroes
their entries' shares and losses before the choice, so the thresholds are chosen for, and the
prediction describes, the table that is published (a prediction made before the ban
overstated the fast share by the banned tokens' traffic, for one version: the next one no longer
bans them, their evidence having been reset).

The choice is made afresh at every refresh. Keeping the current pair while it stays nearly as
good (hysteresis) was tried and dropped: on the synthetic corpus it did not reduce the number of
tokens entering/leaving the fast path, and because absolute frequencies grow, a kept ``F`` lets
ever more tokens in, so the learned share drifted below the target (8% for a 10% target).
For each ``H`` the eligible sets over all ``F`` are prefixes of the tokens sorted by frequency,
so the whole search is one sort and one cumulative sum per entropy candidate; each pair
candidate is then matched with the best token candidate that closes the remaining gap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .pairs import PairView
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
    agreement: np.ndarray = (hits + 1.0 / stats.num_experts) / (stats.routed + 1.0)
    return agreement


@dataclass(frozen=True, slots=True)
class _Traffic:
    """Traffic shares and agreement losses of every entry (tokens: back-off traffic only)."""

    token_share: np.ndarray  # [V]
    token_loss: np.ndarray  # [V], share * (1 - agreement)
    pair_share: np.ndarray  # [P] over the pair candidates
    pair_loss: np.ndarray
    pair_entropy: np.ndarray
    pair_static: np.ndarray  # bool [P], the pair's token is static (always eligible)


def _traffic(stats: TokenStats, base: Thresholds, banned: np.ndarray | None = None) -> _Traffic:
    """Every entry's traffic share and loss; the entries of ``banned`` tokens take none."""
    total = stats.total_frequency
    view: PairView = stats.pairs.view()
    rows = view.candidates(base.pair_min_count, base.pair_cap)
    scale = 1.0 / total if total > 0 else 0.0
    pair_freq = view.frequency[rows]
    pair_token = view.keys[rows] % stats.vocab_size
    backoff = np.maximum(stats.frequency - np.bincount(pair_token, weights=pair_freq, minlength=stats.vocab_size), 0)
    token_share, pair_share = backoff * scale, pair_freq * scale
    if banned is not None:
        token_share, pair_share = np.where(banned, 0.0, token_share), np.where(banned[pair_token], 0.0, pair_share)
    return _Traffic(token_share, token_share * (1.0 - token_agreement(stats)), pair_share,
                    pair_share * (1.0 - view.agreement(rows, stats.num_experts)), view.mean_entropy(rows),
                    base.static(stats.vocab_size)[pair_token])


def predict(stats: TokenStats, thresholds: Thresholds, banned: np.ndarray | None = None) -> Prediction:
    """Predicted learned share and expected agreement of ``thresholds`` on ``stats``, for a table
    without the entries of the tokens ``banned`` (bool [V]; module docstring)."""
    t, eligible = _traffic(stats, thresholds, banned), thresholds.eligible(stats)
    if banned is not None:
        eligible = eligible & ~banned
    pairs = t.pair_static | (t.pair_entropy < thresholds.pair_max_entropy)
    fast = float(t.token_share[eligible].sum() + t.pair_share[pairs].sum())
    loss = float(t.token_loss[eligible].sum() + t.pair_loss[pairs].sum())
    return Prediction(1.0 - fast, 1.0 - loss, int(eligible.sum()))


def _entropy_candidates(entropy: np.ndarray, grid: int) -> np.ndarray:
    """Upper bounds ``H`` such that ``entropy < H`` selects each quantile (and everything)."""
    if len(entropy) == 0:
        return np.zeros(0)
    levels = np.unique(np.quantile(entropy, np.linspace(0.0, 1.0, max(2, grid))))
    bounds: np.ndarray = np.nextafter(levels, np.inf)
    return bounds


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


def _token_candidates(stats: TokenStats, t: _Traffic, open_: np.ndarray, grid: int) -> np.ndarray:
    """Rows (F, H, fast share, loss, size) over the non-static tokens with evidence, preferred
    rows first among equal losses (fewer fast tokens, then the strictest thresholds)."""
    entropy = stats.mean_entropy()
    rows = []
    for h in _entropy_candidates(entropy[open_], grid):
        sel = open_ & (entropy < h)
        cuts, share, lost, sizes = _sweep_frequency(stats.frequency[sel], t.token_share[sel], t.token_loss[sel])
        rows.append(np.column_stack((cuts, np.full(len(cuts), h), share, lost, sizes)))
    if not rows:
        return np.zeros((0, 5))
    table = np.concatenate(rows)
    return table[np.lexsort((-table[:, 0], table[:, 1], table[:, 4]))]


def _pair_candidates(t: _Traffic, grid: int) -> np.ndarray:
    """Rows (pair_max_entropy, fast share, loss) over the non-static pairs, "none" first."""
    open_ = ~t.pair_static
    levels = np.concatenate(([0.0], _entropy_candidates(t.pair_entropy[open_], grid)))
    sel = open_[None, :] & (t.pair_entropy[None, :] < levels[:, None])
    return np.column_stack((levels, sel @ t.pair_share, sel @ t.pair_loss))


def choose_thresholds(stats: TokenStats, target: float, base: Thresholds | None = None,
                      grid: int = DEFAULT_GRID, banned: np.ndarray | None = None) -> AdaptiveChoice:
    """Thresholds that meet ``target`` with the highest expected agreement (module docstring),
    for a table without the entries of the tokens ``banned``.

    ``base`` supplies what is configured, not chosen: ``static_below`` (those tokens are
    eligible regardless), ``pair_min_count`` and ``pair_cap``. Without any routing evidence
    there is nothing to choose from: ``base`` is returned, marked infeasible.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError("adaptive target must be within [0, 1]")
    base = base or Thresholds(static_below=0)
    t, known = _traffic(stats, base, banned), stats.routed > 0
    static = known & base.static(stats.vocab_size)
    tokens, pairs = _token_candidates(stats, t, known & ~static, grid), _pair_candidates(t, grid)
    if len(tokens) == 0:
        return AdaptiveChoice(base, predict(stats, base, banned), target, False, 0)
    fixed_share = t.token_share[static].sum() + t.pair_share[t.pair_static].sum()
    fixed_loss = t.token_loss[static].sum() + t.pair_loss[t.pair_static].sum()
    best: tuple[float, int, int] | None = None  # (agreement, pair row, token row)
    for j, (_, p_share, p_loss) in enumerate(pairs):
        ok = 1.0 - fixed_share - p_share - tokens[:, 2] <= target + 1e-12
        if ok.any():
            i = int(np.argmin(np.where(ok, tokens[:, 3], np.inf)))
            agreement = 1.0 - fixed_loss - p_loss - tokens[i, 3]
            if best is None or agreement > best[0] + 1e-15:
                best = (agreement, j, i)
    feasible = best is not None
    if best is None:  # the lowest learned share: everything the candidates allow, then the best agreement
        j = len(pairs) - 1
        i = int(np.lexsort((tokens[:, 3], -tokens[:, 2]))[0])
        best = (0.0, j, i)
    _, j, i = best
    chosen = Thresholds(float(tokens[i, 0]), float(tokens[i, 1]), base.static_below, base.pair_min_count,
                        float(pairs[j, 0]), base.pair_cap)
    return AdaptiveChoice(chosen, predict(stats, chosen, banned), target, feasible, len(tokens) * len(pairs))


def fast_path_error(stats: TokenStats, base: Thresholds) -> float:
    """Expected top-1 disagreement if the table served ALL traffic (every pair and token entry;
    tokens without evidence count as wrong): the measure :func:`~.budget.split_budget` splits by."""
    t = _traffic(stats, base)
    unknown = t.token_share[stats.routed <= 0].sum()
    return float(t.token_loss[stats.routed > 0].sum() + t.pair_loss.sum() + unknown)
