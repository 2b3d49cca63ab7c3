"""The budget governor: a hard cap on learned-router calls, and the ledger that proves it.

Policy: among any ``window`` consecutive decisions of one engine, at most
``cap = floor(budget * window)`` are learned-router calls. (A sliding window: this implies the
same bound for every fixed block of ``window`` decisions.) The governor is consulted *before*
the router runs, in decision order; a denied token takes the budget fallback -- the route of
its table entry (pair or token), counted as ``budget_fallback``, or the traffic-wide prior for a
token without an entry, counted as ``prior``.

A model has one governor per MoE layer. :func:`split_budget` offers one total budget split
across the layers by their measured fast-path error instead of the same budget everywhere;
each layer's governor then enforces its own share as a hard cap.

Live audits (:mod:`.audit`) are learned-router calls too: the engine asks the governor for each
audit at the audited decision's position, interleaved with the learned misses, so the cap bounds
learned decisions + audits together.

The :class:`BudgetLedger` records, independently of the governor, how many router calls
(learned decisions and audits) each block of ``window`` decisions contained and the maximum over
all sliding windows, so a report can show that the cap held.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import budget_kernels


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Learned-router budget: a share of decisions per window of ``window`` decisions."""

    budget: float = 0.15
    window: int = 1000
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.budget <= 1.0:
            raise ValueError("learned-router budget must be within [0, 1]")
        if self.window < 1:
            raise ValueError("budget window must be >= 1 decision")

    @property
    def cap(self) -> int:
        """Learned calls allowed per window of decisions."""
        return math.floor(self.budget * self.window + 1e-9)


def split_budget(mean_budget: float, errors: list[float], layer_max: float) -> list[float]:
    """Per-layer budgets with mean at most ``mean_budget``, proportional to ``errors`` (a layer
    whose table errs more gets more learned calls), none above ``layer_max``: a layer that
    would exceed it is held there and the rest is split again among the others (water-filling).
    All-zero errors split evenly."""
    n = len(errors)
    if n == 0:
        return []
    weights = [max(e, 0.0) for e in errors]
    budgets, free, left = [0.0] * n, set(range(n)), mean_budget * n
    while free:
        total = sum(weights[i] for i in free)
        share = {i: left * (weights[i] / total if total > 0 else 1.0 / len(free)) for i in free}
        over = {i for i, b in share.items() if b > layer_max}
        if not over:
            for i, b in share.items():
                budgets[i] = b
            break
        for i in over:
            budgets[i] = layer_max
            left -= layer_max
            free.discard(i)
    return budgets


class BudgetGovernor:
    """Admits learned-router calls in decision order, never exceeding the policy's cap."""

    def __init__(self, policy: BudgetPolicy) -> None:
        self.policy = policy
        self._ring = np.zeros(max(policy.cap, 1), np.int64)  # admitted positions still in the window
        self._state = np.zeros(2, np.int64)  # [head, count] of the ring
        self.admitted = 0
        self.denied = 0

    def kernel_state(self) -> tuple[np.ndarray, np.ndarray, int, int, bool]:
        """(ring, state, window, cap, enabled) as a compiled caller admits with them
        (:func:`~.batch_kernels.decide`), which then reports to :meth:`count`."""
        return self._ring, self._state, self.policy.window, self.policy.cap, self.policy.enabled

    def count(self, asked: int, admitted: int) -> None:
        """Record a compiled caller's admissions: ``admitted`` of ``asked`` decisions."""
        self.admitted += admitted
        self.denied += asked - admitted

    def admit(self, positions: np.ndarray) -> np.ndarray:
        """Which of the decisions at ``positions`` (increasing, 0-based) may call the router.

        Greedy in order: a decision is admitted when fewer than ``cap`` learned calls were
        admitted among the ``window - 1`` decisions before it.
        """
        n = len(positions)
        if not self.policy.enabled or n == 0:
            self.admitted += n
            return np.ones(n, dtype=bool)
        granted: np.ndarray
        granted, admitted = budget_kernels.admit(np.asarray(positions, np.int64), self._ring, self._state,
                                                 self.policy.window, self.policy.cap)
        self.admitted += admitted
        self.denied += n - admitted
        return granted


class BudgetLedger:
    """Learned calls per block of ``window`` decisions, and the max over sliding windows."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.block_learned: list[int] = []
        self._ring = np.zeros(window, np.int8)  # learned flags of the last ``window`` decisions
        self._state = np.zeros(3, np.int64)  # [decisions, learned among the last window, max of that]

    @property
    def decisions(self) -> int:
        return int(self._state[0])

    @property
    def max_sliding(self) -> int:
        """Most learned calls in any ``window`` consecutive decisions (fewer at the start)."""
        return int(self._state[2])

    def record(self, learned: np.ndarray) -> None:
        """Append the learned-call flags (bool, decision order) of a batch."""
        first = self.first_block
        self.add_blocks(first, budget_kernels.record(np.asarray(learned, np.bool_), *self.kernel_state()))

    @property
    def first_block(self) -> int:
        """The block the next decision falls in."""
        return self.decisions // self.window

    def kernel_state(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(ring, state, window) as ``budget_kernels.record`` updates them -- for a compiled caller
        (the engine's ``kernels.conclude``), which then hands the counts to :meth:`add_blocks`."""
        return self._ring, self._state, self.window

    def add_blocks(self, first: int, counts: np.ndarray) -> None:
        """Add ``budget_kernels.record``'s router calls per block, from block ``first`` on."""
        for idx, count in enumerate(counts.tolist(), start=first):
            if idx < len(self.block_learned):
                self.block_learned[idx] += count
            else:
                self.block_learned.append(count)

    def block_sizes(self) -> list[int]:
        """Decisions in each block (all ``window`` except possibly the last)."""
        return [min(self.window, self.decisions - i * self.window) for i in range(len(self.block_learned))]

    @property
    def max_window_fraction(self) -> float:
        """Most learned calls seen in any ``window`` consecutive decisions, over ``window``."""
        return self.max_sliding / self.window

    def block_fractions(self) -> list[float]:
        return [count / self.window for count in self.block_learned]
