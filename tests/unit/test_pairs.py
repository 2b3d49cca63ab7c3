"""The (previous token, token) fast path: back-off order, bounds, no cross-context use, no prior
for a seen token, the joint adaptive choice, the byte format and the budget split."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.engine.adaptive import choose_thresholds, fast_path_error, predict
from pipeline.engine.budget import BudgetPolicy, split_budget
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import EventBatch, EventChunk, KeyKind, Tier
from pipeline.engine.pairs import PairStats, pair_ids
from pipeline.engine.routers import RouterOutput, RouterSpec
from pipeline.engine.stats import TokenStats
from pipeline.engine.table import RoutingTable, Thresholds, build_table

V, E, K = 12, 4, 2


def route_of(expert: int, n: int) -> tuple[np.ndarray, ...]:
    """``n`` learned decisions with top-1 ``expert``, second ``(expert + 1) % E``, confident."""
    experts = np.tile([expert, (expert + 1) % E], (n, 1)).astype(np.int64)
    weights = np.tile([0.9, 0.1], (n, 1)).astype(np.float32)
    return experts, weights, np.full(n, 0.9, np.float32), np.full(n, 0.1, np.float32)


def observe(stats: TokenStats, prev: int, token: int, expert: int, n: int) -> None:
    tokens, prevs = np.full(n, token), np.full(n, prev)
    stats.observe(tokens, prevs, np.ones(n, bool), *route_of(expert, n))


@pytest.fixture
def table() -> RoutingTable:
    """Token 5 goes to expert 0, except after token 3 (expert 2) -- a pair with its own entry.
    Token 7 was seen once after 3 (too little evidence for a pair entry). Token 9 never routed."""
    stats = TokenStats(V, E, pair_cap=100)
    observe(stats, 1, 5, 0, 40)
    observe(stats, 3, 5, 2, 10)
    observe(stats, 2, 7, 1, 30)
    observe(stats, 3, 7, 3, 1)
    stats.observe_tokens(np.asarray([9, 9]))  # seen in traffic, never routed: no entry
    return build_table(stats, Thresholds(min_frequency=0, max_entropy=1.0, static_below=0, pair_min_count=3,
                                         pair_max_entropy=1.0), K, "r", 1)


def test_back_off_order_pair_then_token_then_prior(table):
    prev, tokens = np.asarray([3, 1, 8, -1, 3, 3]), np.asarray([5, 5, 5, 5, 7, 9])
    look = table.resolve(prev, tokens)
    assert look.kind.tolist() == [KeyKind.PAIR, KeyKind.PAIR, KeyKind.TOKEN, KeyKind.TOKEN, KeyKind.TOKEN,
                                  KeyKind.PRIOR]
    experts = table.routes(look, np.arange(len(tokens)), tokens)[0][:, 0]
    # the pair (3, 5) says expert 2; token 5 alone says expert 0 (40 of 50); (3, 7) has one observation
    assert experts.tolist()[:5] == [2, 0, 0, 0, 1]
    assert look.eligible.tolist() == [True, True, True, True, True, False]


def test_a_pair_entry_is_never_used_for_another_previous_token(table):
    assert len(table.pair_entries) == 3  # (1,5), (3,5), (2,7)
    for prev in range(-1, V):
        look = table.resolve(np.asarray([prev]), np.asarray([5]))
        route = table.routes(look, np.arange(1), np.asarray([5]))[0][0, 0]
        if prev == 3:
            assert look.kind[0] == KeyKind.PAIR and route == 2
        else:
            assert route == 0, prev  # (1,5) has its own entry (also expert 0); others back off
            assert look.kind[0] == (KeyKind.PAIR if prev == 1 else KeyKind.TOKEN)
    # the pair id is injective: (3, 5) is not (5, 3) nor any other (p, t)
    ids = pair_ids(np.repeat(np.arange(V), V), np.tile(np.arange(V), V), V)
    assert len(np.unique(ids)) == V * V


def test_pair_statistics_and_table_stay_bounded_and_keep_the_most_traffic():
    rng = np.random.default_rng(0)
    stats = TokenStats(50, E, pair_cap=64)
    heavy = [(1, 2), (3, 4), (5, 6)]
    for step in range(40):
        prev, tokens = rng.integers(0, 50, 500), rng.integers(0, 50, 500)
        prev[:30], tokens[:30] = np.repeat([p for p, _ in heavy], 10), np.repeat([t for _, t in heavy], 10)
        stats.observe(tokens, prev, rng.random(500) < 0.5, *route_of(1, 500))
        assert len(stats.pairs) <= 64 + 64 // 4
    kept = set(stats.pairs.view().keys.tolist())
    assert {p * 50 + t for p, t in heavy} <= kept
    table = build_table(stats, Thresholds(pair_min_count=1, pair_cap=10), K, "r", 1)
    assert len(table.pair_entries) == 10
    assert table.pair_entries.nbytes < 10 * 64
    assert {p * 50 + t for p, t in heavy} <= set(table.pair_entries.keys.tolist())
    with pytest.raises(ValueError):
        PairStats(50, E, -1)


class ConstantRouter:
    """Always expert 3 (so learned decisions are recognisable); counts what it routes."""

    def __init__(self) -> None:
        self.spec = RouterSpec(vocab_size=V, num_experts=E, top_k=K, window=2)
        self.router_id = "r"
        self.routed = 0

    def route(self, contexts: np.ndarray) -> RouterOutput:
        self.routed += len(contexts)
        e, w, c, h = route_of(3, len(contexts))
        return RouterOutput(e, w, c, h)


def test_over_budget_tokens_take_their_own_entry_and_only_unseen_tokens_the_prior(table):
    table = table.with_version(1)
    strict = replace(table, eligible=np.zeros(V, bool))  # nothing on the fast path: every event asks the router
    strict.pairs.eligible = np.zeros(len(strict.pair_entries), bool)
    router = ConstantRouter()
    engine = VAREngine(router, strict, EngineConfig(context_window=2, budget=BudgetPolicy(budget=0.1, window=10)))
    chunks = [EventChunk("a", 0, (3, 5, 1, 5, 9, 7, 3, 7, 11, 5))]
    d = engine.route_batch(EventBatch.from_chunks(chunks), {}).decisions
    assert router.routed == 1 and d.tiers[0] == Tier.LEARNED
    over = d.tiers != Tier.LEARNED
    seen = strict.known[np.asarray(chunks[0].tokens)]
    assert (d.tiers[over & seen] == Tier.BUDGET_FALLBACK).all()
    # never routed: 9 and 11, and 1 and 3 (seen only as previous tokens)
    assert (d.tiers[over & ~seen] == Tier.PRIOR).all() and (~seen).sum() == 5
    assert d.key_kinds()[1] == KeyKind.PAIR and d.experts[1, 0] == 2  # (3, 5): the pair's own route
    assert d.key_kinds()[3] == KeyKind.PAIR and d.experts[3, 0] == 0  # (1, 5)
    assert d.key_kinds()[9] == KeyKind.TOKEN and d.experts[9, 0] == 0  # (11, 5): back-off to token 5
    assert (d.key_kinds()[d.tiers == Tier.PRIOR] == KeyKind.PRIOR).all()
    assert d.key_kinds()[0] == KeyKind.EXACT


def test_adaptive_chooses_pair_and_token_thresholds_together():
    rng = np.random.default_rng(1)
    stats = TokenStats(V, E, pair_cap=1000)
    for token in range(V):  # each token: a few contexts with their own expert, noisy overall
        for prev in range(4):
            n = int(rng.integers(3, 30))
            observe(stats, prev, token, int((token + prev * (token % 3)) % E), n)
    base = Thresholds(static_below=0, pair_min_count=3)
    for target in (0.05, 0.2, 0.5):
        choice = choose_thresholds(stats, target, base, grid=200)
        assert choice.feasible and choice.prediction.learned_share <= target + 1e-9
        assert choice.thresholds.pair_min_count == 3 and choice.thresholds.pair_cap == base.pair_cap
        tokens_only = choose_thresholds(stats, target, Thresholds(static_below=0, pair_cap=0), grid=200)
        assert choice.prediction.expected_agreement >= tokens_only.prediction.expected_agreement - 1e-12
        assert predict(stats, choice.thresholds) == choice.prediction
    assert 0.0 < fast_path_error(stats, base) < fast_path_error(stats, Thresholds(pair_cap=0))


def test_table_bytes_round_trip_with_pairs(table):
    again = RoutingTable.from_bytes(table.to_bytes())
    for name in ("keys", "eligible", "experts", "weights", "confidence", "entropy", "frequency"):
        np.testing.assert_array_equal(getattr(again.pair_entries, name), getattr(table.pair_entries, name))
    assert again.thresholds == table.thresholds
    np.testing.assert_array_equal(again.known, table.known)


def test_stats_bytes_round_trip_with_pairs(table):
    stats = TokenStats(V, E, pair_cap=100)
    observe(stats, 3, 5, 2, 10)
    again = TokenStats.from_bytes(stats.to_bytes())
    assert len(again.pairs) == 1 and again.pairs.cap == 100
    np.testing.assert_array_equal(again.pairs.view().expert_weight, stats.pairs.view().expert_weight)
    merged = again.copy()
    merged.merge(stats)
    assert merged.pairs.view().routed.tolist() == [20.0]


def test_split_budget_follows_the_error_and_holds_the_caps():
    budgets = split_budget(0.15, [0.03, 0.08, 0.10, 0.15], 0.3)
    assert budgets == sorted(budgets) and np.mean(budgets) == pytest.approx(0.15)
    capped = split_budget(0.15, [0.0, 0.0, 0.01, 1.0], 0.25)
    assert max(capped) == 0.25 and np.mean(capped) <= 0.15 + 1e-12
    assert split_budget(0.1, [0, 0], 0.3) == [0.1, 0.1]


def test_outcomes_carry_the_previous_token_and_the_key_kind(table):
    from pipeline.engine.layered import LayeredEngine
    from pipeline.engine.refresher import RefreshPolicy, StatsRefresher
    from pipeline.outcomes import Outcomes, decode_outcome, encode_outcomes

    engine = LayeredEngine([VAREngine(ConstantRouter(), table.with_version(1), EngineConfig(context_window=2))])
    chunks = [EventChunk("a", 0, (3, 5, 1)), EventChunk("b", 0, (9,)), EventChunk("a", 3, (5, 7))]
    result = engine.route_batch(EventBatch.from_chunks(chunks), {})
    records = encode_outcomes(result, np.asarray([0, 0, 0, 1, 2, 2]), "w")
    got = Outcomes.concat([decode_outcome(value) for _, value in records])
    assert got.prevs.tolist() == [-1, 3, 5, -1, 1, 5]
    d = result.layers[0].decisions
    np.testing.assert_array_equal(got.layers[0].key_kinds, d.key_kinds())
    assert d.key_kinds()[1] == KeyKind.PAIR  # (3, 5)
    # the stats refresher learns the same pairs from the outcomes as from the engine's result
    policy = RefreshPolicy(thresholds=Thresholds(pair_cap=50))
    a, b = (StatsRefresher(V, E, K, "r", policy) for _ in range(2))
    a.observe(got)
    b.observe_result(result.layers[0])
    va, vb = a.stats.pairs.view(), b.stats.pairs.view()
    np.testing.assert_array_equal(va.keys, vb.keys)
    np.testing.assert_array_equal(va.frequency, vb.frequency)
    np.testing.assert_array_equal(va.expert_weight, vb.expert_weight)
    assert set(va.keys.tolist()) == {3 * V + 5, 5 * V + 1, 1 * V + 5, 5 * V + 7}


def test_error_split_gives_each_layer_its_share_of_the_total():
    from pipeline.assembly import layer_budgets
    from pipeline.settings import Settings

    even = Settings.load(env={}, cli={}).with_(router="model", budget=0.15)
    assert layer_budgets(even, 4) == [0.15] * 4
    split = layer_budgets(even.with_(budget_split="error", budget_layer_max=0.3), 4)
    assert np.mean(split) == pytest.approx(0.15) and max(split) <= 0.3
    assert split == sorted(split), split  # the bundled model's deeper layers err more on the fast path
    assert layer_budgets(Settings.load(env={}, cli={}).with_(budget_split="error"), 1) == [0.15]  # synthetic
