"""The budget governor's sliding-window cap, and the ledger against a brute-force count."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.engine.budget import BudgetGovernor, BudgetPolicy, BudgetLedger


def max_window_count(admitted_positions: np.ndarray, total: int, window: int) -> int:
    """Most admitted positions in any `window` consecutive positions (prefix sums)."""
    flags = np.zeros(total, dtype=np.int64)
    flags[admitted_positions] = 1
    sums = np.concatenate(([0], np.cumsum(flags)))
    if total <= window:
        return int(sums[-1])
    return int((sums[window:] - sums[:-window]).max())


def random_candidates(rng, total, density):
    """Increasing candidate positions, split into consecutive calls of random size."""
    positions = np.flatnonzero(rng.random(total) < density).astype(np.int64)
    calls, i = [], 0
    while i < len(positions):
        n = int(rng.integers(0, 60))
        calls.append(positions[i : i + n])
        i += n
    return calls


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget,window", [(0.15, 100), (0.5, 10), (0.05, 200), (0.3, 7), (1 / 3, 30)])
def test_admitted_positions_never_exceed_the_cap_in_any_window(seed, budget, window):
    rng = np.random.default_rng(seed)
    policy = BudgetPolicy(budget=budget, window=window)
    governor = BudgetGovernor(policy)
    total = 3000
    density = [0.05, 0.3, 0.9][seed % 3]
    admitted = []
    candidates = 0
    for positions in random_candidates(rng, total, density):
        mask = governor.admit(positions)
        assert mask.dtype == bool and mask.shape == positions.shape
        admitted.append(positions[mask])
        candidates += len(positions)
    admitted = np.concatenate(admitted)
    assert max_window_count(admitted, total, window) <= policy.cap
    assert governor.admitted == len(admitted)
    assert governor.admitted + governor.denied == candidates


@pytest.mark.parametrize("seed", range(4))
def test_governor_is_greedy_and_not_needlessly_strict(seed):
    """A candidate is denied only when the window ending at it already holds `cap` admissions."""
    rng = np.random.default_rng(seed)
    window, policy = 50, BudgetPolicy(budget=0.2, window=50)
    governor = BudgetGovernor(policy)
    admitted_so_far: list[int] = []
    for positions in random_candidates(rng, 2000, 0.4):
        mask = governor.admit(positions)
        for p, ok in zip(positions.tolist(), mask.tolist()):
            recent = sum(1 for q in admitted_so_far if q > p - window)
            assert ok == (recent < policy.cap), p
            if ok:
                admitted_so_far.append(p)


def test_dense_candidates_fill_exactly_cap_per_window():
    policy = BudgetPolicy(budget=0.25, window=20)
    governor = BudgetGovernor(policy)
    mask = governor.admit(np.arange(100))
    assert np.flatnonzero(mask).tolist() == [p for b in range(5) for p in range(20 * b, 20 * b + 5)]


def test_disabled_governor_admits_everything():
    governor = BudgetGovernor(BudgetPolicy(budget=0.0, window=10, enabled=False))
    rng = np.random.default_rng(0)
    for positions in random_candidates(rng, 500, 0.9):
        assert governor.admit(positions).all()
    assert governor.denied == 0 and governor.admitted > 0


def test_zero_budget_admits_nothing():
    governor = BudgetGovernor(BudgetPolicy(budget=0.0, window=10))
    assert not governor.admit(np.arange(100)).any()
    assert governor.denied == 100


def test_empty_call():
    governor = BudgetGovernor(BudgetPolicy())
    assert governor.admit(np.zeros(0, np.int64)).shape == (0,)


@pytest.mark.parametrize("budget,window", [(0.15, 1000), (0.15, 7), (0.1, 10), (0.3, 10), (0.7, 10), (1.0, 3),
                                           (0.0, 5), (0.29, 100), (0.57, 100), (1 / 3, 3)])
def test_cap_is_floor_of_budget_times_window(budget, window):
    cap = BudgetPolicy(budget=budget, window=window).cap
    expected = math.floor(round(budget * window, 9))  # exact decimal product, e.g. 0.29*100 = 29
    assert cap == expected


@pytest.mark.parametrize("kwargs", [dict(budget=-0.01), dict(budget=1.01), dict(window=0)])
def test_budget_policy_validation(kwargs):
    with pytest.raises(ValueError):
        BudgetPolicy(**kwargs)


# --- BudgetLedger -----------------------------------------------------------------------------


def brute_force(flags: np.ndarray, window: int) -> tuple[list[int], int]:
    blocks = [int(flags[i : i + window].sum()) for i in range(0, len(flags), window)]
    if len(flags) <= window:
        best = int(flags.sum())
    else:
        best = max(int(flags[i : i + window].sum()) for i in range(len(flags) - window + 1))
    return blocks, best


def feed(ledger: BudgetLedger, flags: np.ndarray, sizes) -> None:
    i = 0
    for n in sizes:
        ledger.record(flags[i : i + n])
        i += n
    assert i == len(flags)


def batch_sizes(rng, total, low, high):
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(int(rng.integers(low, high + 1)), total - sum(sizes)))
    return sizes


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("window", [1, 2, 10, 37])
def test_ledger_matches_brute_force_with_batches_of_at_least_window_minus_one(seed, window):
    rng = np.random.default_rng(seed)
    flags = rng.random(800) < [0.1, 0.5, 0.9, 0.3, 0.7][seed]
    ledger = BudgetLedger(window)
    sizes = batch_sizes(rng, len(flags), max(window - 1, 1), 3 * window + 5)
    sizes[-1] = max(sizes[-1], 0)
    feed(ledger, flags, sizes)
    blocks, best = brute_force(flags.astype(np.int64), window)
    assert ledger.decisions == len(flags)
    assert ledger.block_learned == blocks
    assert ledger.max_sliding == best
    assert ledger.max_window_fraction == best / window
    assert ledger.block_fractions() == [b / window for b in blocks]


def test_ledger_small_batches_minimal():
    ledger = BudgetLedger(10)
    ledger.record(np.ones(6, bool))
    ledger.record(np.ones(3, bool))
    assert ledger.max_sliding == 9


@pytest.mark.parametrize("seed", range(3))
def test_ledger_matches_brute_force_with_random_batch_sizes(seed):
    rng = np.random.default_rng(seed)
    window = 40
    flags = rng.random(1000) < 0.5
    ledger = BudgetLedger(window)
    feed(ledger, flags, batch_sizes(rng, len(flags), 1, window // 2))  # batches smaller than the window
    blocks, best = brute_force(flags.astype(np.int64), window)
    assert ledger.block_learned == blocks
    assert ledger.max_sliding == best


@pytest.mark.parametrize("seed", range(3))
def test_ledger_block_counts_with_random_batch_sizes(seed):
    """Block counts and the sliding maximum are exact whatever the batch sizes."""
    rng = np.random.default_rng(seed)
    flags = rng.random(1000) < 0.4
    ledger = BudgetLedger(40)
    feed(ledger, flags, batch_sizes(rng, len(flags), 1, 90))
    blocks, best = brute_force(flags.astype(np.int64), 40)
    assert ledger.block_learned == blocks
    assert ledger.max_sliding == best
    assert ledger.decisions == 1000


def test_ledger_with_empty_batches():
    ledger = BudgetLedger(4)
    ledger.record(np.zeros(0, bool))
    ledger.record(np.array([1, 1, 1, 0, 1], bool))
    ledger.record(np.zeros(0, bool))
    ledger.record(np.array([1, 1], bool))
    assert ledger.block_learned == [3, 3]
    assert ledger.max_sliding == 3
