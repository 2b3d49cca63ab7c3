"""TokenStats accumulation, the fast-path predicate, table building, fallbacks and the file format."""
from __future__ import annotations


import numpy as np
import pytest

from pipeline.engine.stats import TokenStats
from pipeline.engine.table import RoutingTable, Thresholds, build_table
from pipeline.engine.table_codec import TABLE_FORMAT

V, E, K = 20, 4, 2


def routing(stats, rows):
    """rows: (token, [experts], [weights], confidence, entropy)."""
    tokens = np.array([r[0] for r in rows], dtype=np.int64)
    experts = np.array([r[1] for r in rows], dtype=np.int64)
    weights = np.array([r[2] for r in rows], dtype=np.float32)
    conf = np.array([r[3] for r in rows], dtype=np.float32)
    ent = np.array([r[4] for r in rows], dtype=np.float32)
    stats.observe_routing(tokens, experts, weights, conf, ent)


def random_stats(seed=0, n=500, vocab=V, experts=E, k=K):
    rng = np.random.default_rng(seed)
    stats = TokenStats(vocab, experts)
    tokens = rng.integers(0, vocab // 2, n)
    ex = np.stack([rng.permutation(experts)[:k] for _ in range(n)])
    w = rng.random((n, k)).astype(np.float32)
    w = np.sort(w / w.sum(axis=1, keepdims=True), axis=1)[:, ::-1].astype(np.float32)
    stats.observe_tokens(np.concatenate([tokens, rng.integers(0, vocab, 200)]))
    stats.observe_routing(tokens, ex, w, rng.random(n).astype(np.float32), (rng.random(n) * 2).astype(np.float32))
    return stats


# --- TokenStats -------------------------------------------------------------------------------


def test_observe_tokens_counts_only_frequency():
    stats = TokenStats(V, E)
    stats.observe_tokens(np.array([1, 1, 5, 19, 1]))
    assert stats.frequency[[1, 5, 19, 0]].tolist() == [3, 1, 1, 0]
    assert stats.total_frequency == 5
    assert stats.routed.sum() == 0 and stats.expert_weight.sum() == 0 and stats.top1.sum() == 0
    assert np.isinf(stats.mean_entropy()).all()
    assert (stats.mean_confidence() == 0).all()


def test_observe_routing_accumulates_evidence_but_not_frequency():
    stats = TokenStats(V, E)
    routing(stats, [(3, [2, 0], [0.75, 0.25], 0.7, 0.6),
                    (3, [2, 1], [0.5, 0.5], 0.5, 1.0),
                    (7, [1, 3], [0.9, 0.1], 0.9, 0.2)])
    assert stats.frequency.sum() == 0
    assert stats.routed[3] == 2 and stats.routed[7] == 1 and stats.total_routed == 3
    np.testing.assert_allclose(stats.mean_entropy()[[3, 7]], [0.8, 0.2], rtol=1e-6)
    np.testing.assert_allclose(stats.mean_confidence()[[3, 7]], [0.6, 0.9], rtol=1e-6)
    np.testing.assert_allclose(stats.expert_weight[3], [0.25, 0.5, 1.25, 0.0])
    np.testing.assert_allclose(stats.expert_weight[7], [0.0, 0.9, 0.0, 0.1], rtol=1e-6)
    assert stats.top1[3].tolist() == [0, 0, 2, 0] and stats.top1[7].tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(stats.modal_share()[[3, 7, 0]], [1.0, 1.0, 0.0])
    assert np.isinf(stats.mean_entropy()[0])


def test_observe_routing_with_repeated_tokens_in_one_call_adds_all():
    # np.add.at semantics: duplicates must not overwrite each other
    stats = TokenStats(V, E)
    routing(stats, [(2, [1, 0], [0.6, 0.4], 0.6, 0.5)] * 5)
    np.testing.assert_allclose(stats.expert_weight[2], [2.0, 3.0, 0, 0], rtol=1e-6)
    assert stats.top1[2, 1] == 5


def test_observe_routing_empty_is_a_no_op():
    stats = TokenStats(V, E)
    stats.observe_routing(np.zeros(0, np.int64), np.zeros((0, K), np.int64), np.zeros((0, K), np.float32),
                          np.zeros(0, np.float32), np.zeros(0, np.float32))
    assert stats.total_routed == 0


def test_expert_prior():
    stats = TokenStats(V, E)
    np.testing.assert_allclose(stats.expert_prior(), 0.25)
    routing(stats, [(1, [0, 1], [0.75, 0.25], 0.8, 0.3), (2, [0, 3], [0.5, 0.5], 0.5, 0.7)])
    np.testing.assert_allclose(stats.expert_prior(), [0.625, 0.125, 0.0, 0.25])


def test_decay_keeps_means_and_scales_evidence():
    stats = random_stats(1)
    before = stats.copy()
    stats.decay(0.5)
    np.testing.assert_allclose(stats.frequency, before.frequency * 0.5)
    np.testing.assert_allclose(stats.expert_weight, before.expert_weight * 0.5)
    np.testing.assert_allclose(stats.mean_entropy(), before.mean_entropy())
    np.testing.assert_allclose(stats.mean_confidence(), before.mean_confidence())
    np.testing.assert_allclose(stats.modal_share(), before.modal_share())
    np.testing.assert_allclose(stats.expert_prior(), before.expert_prior())
    stats.decay(1.0)
    np.testing.assert_allclose(stats.routed, before.routed * 0.5)


@pytest.mark.parametrize("factor", [0.0, -0.5, 1.5])
def test_decay_factor_validation(factor):
    with pytest.raises(ValueError):
        TokenStats(V, E).decay(factor)


def test_copy_is_independent():
    stats = random_stats(2)
    clone = stats.copy()
    clone.observe_tokens(np.array([0]))
    assert clone.frequency[0] == stats.frequency[0] + 1


def test_to_bytes_round_trip():
    stats = random_stats(3)
    stats.decay(0.9)
    back = TokenStats.from_bytes(stats.to_bytes())
    assert (back.vocab_size, back.num_experts) == (V, E)
    for name in TokenStats._ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name), err_msg=name)
        assert getattr(back, name).dtype == np.float64


# --- Thresholds -------------------------------------------------------------------------------


def stats_for_predicate():
    """Tokens 0..7 with chosen frequency and mean entropy; token 8 only observed, 9 nothing."""
    stats = TokenStats(12, E)
    freq = {0: 100, 1: 10, 2: 100, 3: 100, 4: 51, 5: 50, 6: 100, 7: 100, 8: 100, 10: 200, 11: 200}
    ent = {0: 0.1, 1: 0.1, 2: 0.49, 3: 0.5, 4: 0.1, 5: 0.1, 6: 2.0, 7: 0.2, 10: 0.1, 11: 3.0}
    for token, f in freq.items():
        stats.observe_tokens(np.full(f, token))
    for token, e in ent.items():
        routing(stats, [(token, [0, 1], [0.5, 0.5], 0.5, e)])
    return stats


def test_thresholds_each_branch_and_boundaries():
    stats = stats_for_predicate()
    mask = Thresholds(min_frequency=50, max_entropy=0.5, static_below=2).eligible(stats)
    expected = {
        0: True,    # static (and by stats)
        1: True,    # static rule only: frequency 10 is too low
        2: True,    # frequency 100 > 50, entropy 0.49 < 0.5
        3: False,   # entropy == max_entropy: strict <
        4: True,    # frequency 51 > 50
        5: False,   # frequency == min_frequency: strict >
        6: False,   # entropy too high
        7: True,
        8: False,   # frequent but no routing evidence
        9: False,   # nothing known
        10: True,
        11: False,
    }
    assert {t: bool(mask[t]) for t in range(12)} == expected


def test_static_rule_needs_evidence_and_is_strict():
    stats = TokenStats(12, E)
    routing(stats, [(3, [0, 1], [0.5, 0.5], 0.5, 9.0), (4, [0, 1], [0.5, 0.5], 0.5, 9.0)])
    mask = Thresholds(min_frequency=1e9, max_entropy=0.0, static_below=4).eligible(stats)
    # 0..2 are below static_below but have no evidence; 3 has evidence and 3 < 4; 4 is not < 4
    assert np.flatnonzero(mask).tolist() == [3]
    none = Thresholds(min_frequency=1e9, max_entropy=0.0, static_below=0).eligible(stats)
    assert not none.any()


@pytest.mark.parametrize("kwargs", [dict(min_frequency=-1), dict(max_entropy=-0.1), dict(static_below=-1)])
def test_thresholds_validation(kwargs):
    with pytest.raises(ValueError):
        Thresholds(**kwargs)


# --- build_table, fallbacks, file format --------------------------------------------------------


def test_build_table_routes_are_top_k_by_accumulated_weight():
    stats = TokenStats(V, E)
    routing(stats, [(5, [3, 1], [0.6, 0.4], 0.6, 0.5),
                    (5, [1, 2], [0.7, 0.3], 0.7, 0.4),
                    (5, [2, 0], [0.5, 0.5], 0.5, 0.9)])
    # expert weight of token 5: e0 0.5, e1 1.1, e2 0.8, e3 0.6 -> top-2 = [1, 2]
    routing(stats, [(6, [0, 3], [0.5, 0.5], 0.5, 0.7)])  # tie 0/3 -> keep lower id first
    table = build_table(stats, Thresholds(min_frequency=0, max_entropy=10, static_below=0), K, "r", 3,
                        {"note": "x"})
    assert table.experts[5].tolist() == [1, 2]
    np.testing.assert_allclose(table.weights[5], [1.1 / 1.9, 0.8 / 1.9], rtol=1e-6)
    assert table.experts[6].tolist() == [0, 3]
    np.testing.assert_allclose(table.weights[6], [0.5, 0.5])
    np.testing.assert_allclose(table.confidence[5], 0.6, rtol=1e-6)
    np.testing.assert_allclose(table.entropy[5], 0.6, rtol=1e-6)
    assert table.known[[5, 6]].all() and table.known.sum() == 2
    assert table.entropy[0] == 0.0  # unknown token: no inf in the table
    assert (table.version, table.router_id, table.top_k, table.num_experts) == (3, "r", K, E)
    assert table.meta["note"] == "x" and table.meta["tokens_routed"] == 4.0
    # frequency is 0 (never observe_tokens'd) so the predicate does not hold
    assert table.size == 0


def test_build_table_weights_normalised_and_sorted_on_random_stats():
    stats = random_stats(4, vocab=40, experts=6, k=3)
    table = build_table(stats, Thresholds(), 3, "r", 1)
    known = table.known
    np.testing.assert_allclose(table.weights[known].sum(axis=1), 1.0, atol=1e-6)
    for t in np.flatnonzero(known):
        order = np.argsort(-stats.expert_weight[t], kind="stable")[:3]
        assert table.experts[t].tolist() == order.tolist()
    assert (np.diff(table.weights[known], axis=1) <= 1e-7).all()
    np.testing.assert_array_equal(table.eligible, Thresholds().eligible(stats))
    assert table.size == int(Thresholds().eligible(stats).sum())


def test_fallback_routes_for_known_and_unknown_tokens():
    stats = TokenStats(V, E)
    routing(stats, [(1, [2, 3], [0.8, 0.2], 0.8, 0.4), (2, [3, 0], [0.6, 0.4], 0.6, 0.9),
                    (2, [3, 0], [0.6, 0.4], 0.6, 0.9)])
    table = build_table(stats, Thresholds(), K, "r", 1)
    # prior: e0 0.8, e1 0, e2 0.8, e3 1.4 -> [3, 0] (0 before 2 on the tie), weights 1.4/2.2, 0.8/2.2
    assert table.prior_experts.tolist() == [3, 0]
    np.testing.assert_allclose(table.prior_weights, [1.4 / 2.2, 0.8 / 2.2], rtol=1e-6)
    experts, weights, conf, ent = table.fallback_routes(np.array([1, 9, 2, 0]))
    assert experts.tolist() == [[2, 3], [3, 0], [3, 0], [3, 0]]
    np.testing.assert_allclose(weights[0], [0.8, 0.2], rtol=1e-6)
    np.testing.assert_allclose(weights[1], table.prior_weights)
    np.testing.assert_allclose(conf, [0.8, 1.4 / 2.2, 0.6, 1.4 / 2.2], rtol=1e-6)
    np.testing.assert_allclose(ent, [0.4, np.log(E), 0.9, np.log(E)], rtol=1e-6)
    assert weights.dtype == conf.dtype == ent.dtype == np.float32


def test_empty_table_is_cold_start():
    table = RoutingTable.empty(V, E, K, "rid")
    assert table.version == 0 and table.size == 0 and not table.known.any()
    assert table.prior_experts.tolist() == [0, 1]
    np.testing.assert_allclose(table.prior_weights, [0.5, 0.5])
    experts, weights, _, ent = table.fallback_routes(np.arange(V))
    assert (experts == [0, 1]).all()
    np.testing.assert_allclose(ent, np.log(E), rtol=1e-6)


def test_with_version_leaves_the_original_unchanged():
    table = build_table(random_stats(5), Thresholds(), K, "r", 1)
    v2 = table.with_version(2)
    assert (table.version, v2.version) == (1, 2)
    np.testing.assert_array_equal(v2.experts, table.experts)


def assert_tables_equal(a: RoutingTable, b: RoutingTable) -> None:
    """Equal on everything the table serves; rows of never-routed tokens are not stored (the
    fallback uses the prior for them), so per-token arrays are compared on known tokens."""
    assert (a.version, a.router_id, a.top_k, a.num_experts, a.thresholds, a.vocab_size) == \
           (b.version, b.router_id, b.top_k, b.num_experts, b.thresholds, b.vocab_size)
    np.testing.assert_array_equal(a.eligible, b.eligible)
    np.testing.assert_array_equal(a.known, b.known)
    np.testing.assert_array_equal(a.prior_experts, b.prior_experts)
    np.testing.assert_array_equal(a.prior_weights, b.prior_weights)
    known = a.known
    for name in ("experts", "weights", "confidence", "entropy", "frequency"):
        np.testing.assert_array_equal(getattr(a, name)[known], getattr(b, name)[known], err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name  # float32 stays bit-exact
    assert a.meta == b.meta


def test_save_load_round_trip(tmp_path):
    stats = random_stats(6)
    table = build_table(stats, Thresholds(min_frequency=5, max_entropy=1.0, static_below=3), K, "rid-1", 7,
                        {"source": "test"})
    assert table.size > 0
    path = tmp_path / "table.bin"
    table.save(path)
    loaded = RoutingTable.load(path)
    assert_tables_equal(table, loaded)
    assert TABLE_FORMAT.encode() in path.read_bytes()[:200]
    assert_tables_equal(table, RoutingTable.from_bytes(table.to_bytes()))
    # routing through the loaded table gives the same fallbacks
    tokens = np.arange(V)
    for x, y in zip(table.fallback_routes(tokens), loaded.fallback_routes(tokens)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("fmt", [None, "var-fastpath-table/3", "something-else"])
def test_from_bytes_rejects_wrong_format(fmt):
    raw = build_table(random_stats(7), Thresholds(), K, "r", 1).to_bytes()
    good = TABLE_FORMAT.encode()
    bad = raw.replace(b'"format":"' + good + b'",', b"") if fmt is None else raw.replace(good, fmt.encode())
    with pytest.raises(ValueError, match="not a fast-path table"):
        RoutingTable.from_bytes(bad)
    for junk in (b"{}", b"[1]", b"not json", raw[:40]):
        with pytest.raises(ValueError, match="not a fast-path table"):
            RoutingTable.from_bytes(junk)
