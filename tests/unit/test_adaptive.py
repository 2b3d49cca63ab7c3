"""Adaptive thresholds: meet the learned-router target with the highest expected agreement."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.engine.adaptive import choose_thresholds, predict, token_agreement
from pipeline.engine.stats import TokenStats
from pipeline.engine.table import Thresholds

E = 4


def make_stats(freq, routed, entropy, agree, vocab=None) -> TokenStats:
    """Tokens with given frequency, learned decisions, mean entropy and share of top-1 on expert 0."""
    vocab = vocab or len(freq)
    s = TokenStats(vocab, E)
    for t, (f, n, h, a) in enumerate(zip(freq, routed, entropy, agree)):
        s.frequency[t], s.routed[t], s.entropy_sum[t] = f, n, h * n
        s.top1[t, 0], s.top1[t, 1] = a * n, (1 - a) * n
        s.expert_weight[t, 0], s.expert_weight[t, 1] = 0.6 * n, 0.4 * n
    return s


@pytest.fixture
def stats() -> TokenStats:
    rng = np.random.default_rng(0)
    v = 60
    freq = np.round(1000 / (np.arange(v) + 1) ** 1.1)
    entropy = rng.uniform(0.05, 1.5, v)
    agree = np.clip(1.05 - entropy / 1.5 + rng.normal(0, 0.05, v), 0.3, 1.0)
    return make_stats(freq, freq * 0.5, entropy, agree)


def brute_force(stats: TokenStats, target: float) -> tuple[float, float]:
    """Best feasible expected agreement over every (F, H) pair, by calling predict()."""
    known = stats.routed > 0
    fs = np.unique(np.concatenate(([0.0], stats.frequency[known])))
    hs = np.nextafter(np.unique(stats.mean_entropy()[known]), np.inf)
    best = (-1.0, 1.0)
    for f, h in itertools.product(fs, hs):
        p = predict(stats, Thresholds(float(f), float(h), 0))
        if p.learned_share <= target + 1e-12 and p.expected_agreement > best[0]:
            best = (p.expected_agreement, p.learned_share)
    return best


@pytest.mark.parametrize("target", [0.05, 0.1, 0.2, 0.4])
def test_choice_meets_the_target_with_the_best_agreement_of_the_grid(stats, target):
    choice = choose_thresholds(stats, target, grid=1000)  # grid >= tokens: every entropy is a candidate
    assert choice.feasible and choice.prediction.learned_share <= target + 1e-12
    best_agreement, _ = brute_force(stats, target)
    assert choice.prediction.expected_agreement == pytest.approx(best_agreement, abs=1e-12)
    again = predict(stats, choice.thresholds)
    assert again == choice.prediction, "the prediction is reproducible from the thresholds alone"


def test_a_coarse_grid_still_meets_the_target(stats):
    choice = choose_thresholds(stats, 0.1, grid=8)
    assert choice.feasible and choice.prediction.learned_share <= 0.1
    assert choice.prediction.expected_agreement <= brute_force(stats, 0.1)[0] + 1e-12


def test_a_looser_target_never_lowers_agreement(stats):
    agreements = [choose_thresholds(stats, t, grid=1000).prediction.expected_agreement for t in (0.05, 0.1, 0.3, 1.0)]
    assert agreements == sorted(agreements)


def test_target_one_keeps_everything_on_the_learned_router(stats):
    choice = choose_thresholds(stats, 1.0)
    assert choice.prediction.fast_tokens == 0 and choice.prediction.expected_agreement == 1.0


def test_unreachable_target_takes_the_lowest_share_and_says_so():
    # half the traffic comes from tokens without routing evidence: never below 50%
    s = make_stats([100, 100, 100, 100], [10, 10, 0, 0], [0.1, 0.2, 0, 0], [1.0, 0.9, 0, 0])
    choice = choose_thresholds(s, 0.1)
    assert not choice.feasible
    assert choice.prediction.learned_share == pytest.approx(0.5) and choice.prediction.fast_tokens == 2


def test_no_evidence_returns_the_fallback():
    fallback = Thresholds(50, 0.5, 3)
    choice = choose_thresholds(TokenStats(10, E), 0.1, fallback)
    assert choice.thresholds == fallback and not choice.feasible and choice.candidates == 0


def test_static_tokens_stay_eligible_and_count_as_fast(stats):
    choice = choose_thresholds(stats, 0.3, Thresholds(static_below=5))
    assert choice.thresholds.static_below == 5
    assert choice.thresholds.eligible(stats)[:5].all()


def test_agreement_estimate_shrinks_little_evidence_towards_chance():
    s = make_stats([10, 1000], [1, 100], [0.1, 0.1], [1.0, 1.0])
    a = token_agreement(s)
    assert a[0] == pytest.approx((1 + 1 / E) / 2) and a[1] > 0.99 and a[0] < a[1]


def test_target_outside_unit_interval_is_rejected(stats):
    with pytest.raises(ValueError):
        choose_thresholds(stats, 1.5)


def test_banned_tokens_take_no_fast_traffic_and_the_choice_still_meets_the_target(stats):
    """Tokens banned for their audits have no entry in the published table: the prediction counts
    their whole traffic as learned, and the adaptive choice is made for the table without them."""
    thresholds = Thresholds(0.0, 10.0, 0)  # every token with evidence eligible
    banned = np.zeros(stats.vocab_size, bool)
    banned[[0, 2]] = True  # the two most frequent tokens of the three heaviest
    plain, without = predict(stats, thresholds), predict(stats, thresholds, banned)
    share = stats.frequency / stats.frequency.sum()
    assert without.learned_share == pytest.approx(plain.learned_share + share[banned].sum())
    assert without.fast_tokens == plain.fast_tokens - 2
    for target in (0.4, 0.6):
        choice = choose_thresholds(stats, target, banned=banned)
        assert choice.prediction == predict(stats, choice.thresholds, banned)
        assert not choice.feasible or choice.prediction.learned_share <= target + 1e-12
        blind = choose_thresholds(stats, target)  # chosen as if nothing were banned
        assert choice.prediction.learned_share <= predict(stats, blind.thresholds, banned).learned_share + 1e-12
