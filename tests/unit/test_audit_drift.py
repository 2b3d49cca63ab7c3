"""Audits as the stats refresher's evidence: a token whose audits disagree leaves the next table,
its disproved evidence is cleared and it comes back from fresh evidence; and the drift test -- a
checkpoint swapped under the same router id while the table stays."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.adaptive import predict
from pipeline.engine.audit import AuditLedger
from pipeline.engine.audit_evidence import MIN_AUDITS
from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.context import ContextWindow
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import EventBatch, EventChunk, Tier
from pipeline.engine.offline import collect_statistics
from pipeline.engine.refresher import RefreshPolicy, StatsRefresher, read_snapshot, refresh_table
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.snapshot import encode_snapshot
from pipeline.engine.table import Thresholds
from pipeline.outcomes import LayerOutcomes, Outcomes

V, E, K = 50, 4, 2
RID = "router-x"
THRESHOLDS = Thresholds(min_frequency=2, max_entropy=1.0, static_below=0, pair_min_count=2, pair_max_entropy=1.0)


def outcomes(tokens, tiers, audits=None, prevs=None, version=1, experts=(0, 1)) -> Outcomes:
    n = len(tokens)
    layer = LayerOutcomes(0, np.tile(np.asarray(experts, np.int64), (n, 1)), np.tile(np.float32([0.7, 0.3]), (n, 1)),
                          np.full(n, 0.9, np.float32), np.full(n, 0.1, np.float32), np.asarray(tiers, np.int8),
                          np.zeros(n, np.uint64), np.arange(n), np.full(n, version), [RID] * n,
                          audits=None if audits is None else np.asarray(audits, np.int8))
    prev = None if prevs is None else np.asarray(prevs, np.int64)
    return Outcomes(["s"] * n, np.arange(n), np.asarray(tokens, np.int64), ["w"] * n, [layer], prev)


def refresher(**policy) -> StatsRefresher:
    r = StatsRefresher(V, E, K, RID, RefreshPolicy(**{"every": 10 ** 9, "thresholds": THRESHOLDS, **policy}))
    # learned evidence for tokens 3, 4, 5 and for the pair (7, 3)
    r.observe(outcomes([3, 3, 3, 4, 4, 4, 5, 5, 5], [Tier.LEARNED] * 9, prevs=[7, 7, 7, 1, 1, 1, 1, 1, 1]))
    return r


def fast(token: int, agreed: int, disagreed: int, version: int = 1) -> Outcomes:
    n = agreed + disagreed
    return outcomes([token] * n, [Tier.FAST] * n, [1] * agreed + [0] * disagreed, version=version)


def test_refresher_drops_a_token_whose_audits_disagree_with_its_pair_entries():
    r = refresher()
    before = r.build().table
    assert before.eligible[[3, 4, 5]].all() and 7 * V + 3 in before.pair_entries.keys.tolist()
    r.observe(fast(3, agreed=1, disagreed=3 * MIN_AUDITS))  # confidently below 0.5 (Wilson high 0.28): dropped
    r.observe(fast(4, agreed=MIN_AUDITS, disagreed=1))  # agrees: kept
    r.observe(fast(5, agreed=0, disagreed=MIN_AUDITS - 1))  # too few audits to judge: kept
    r.observe(fast(6, agreed=2, disagreed=3))  # 40% of 5 is chance at a true 60% (Wilson high 0.77): kept
    refresh = r.build()
    table = refresh.table
    assert not table.eligible[3] and table.eligible[[4, 5]].all()
    assert not before.eligible[6] or table.eligible[6]
    assert 7 * V + 3 not in table.pair_entries.keys.tolist() and len(table.pair_entries) == len(before.pair_entries) - 1
    assert table.meta["audit_banned"] == 1 and refresh.banned.tolist() == [t == 3 for t in range(V)]
    assert table.known[3]  # its route stays, for the budget fallback
    # The prediction is the published table's: token 3's traffic (its pair's too) is no longer fast.
    blind = predict(r.stats, table.thresholds)
    share = r.stats.frequency[3] / r.stats.total_frequency
    assert refresh.prediction.learned_share == pytest.approx(blind.learned_share + share)
    assert table.meta["predicted_learned_share"] == refresh.prediction.learned_share
    r.published(refresh, 2)
    assert r.predicted[2] == refresh.prediction.learned_share


def test_a_dropped_token_comes_back_from_fresh_learned_evidence_only():
    r = refresher()
    r.observe(fast(3, agreed=0, disagreed=MIN_AUDITS))
    refresh = r.build()
    r.published(refresh, 2)
    assert r.stats.routed[3] == 0 and r.stats.frequency[3] == 3 + MIN_AUDITS  # evidence cleared, traffic kept
    assert r.audits.audited[3] == 0 and r.audits.since[3] == 2
    assert not r.build().table.eligible[3]  # no evidence yet
    r.observe(fast(3, agreed=0, disagreed=MIN_AUDITS, version=1))  # in flight from the old table: ignored
    assert r.audits.audited[3] == 0
    r.observe(outcomes([3] * 3, [Tier.LEARNED] * 3, version=2, experts=(2, 3)))  # fresh evidence
    table = r.build().table
    assert table.eligible[3] and table.experts[3].tolist() == [2, 3] and "audit_banned" not in table.meta


def test_audit_counts_decay_and_survive_a_snapshot():
    r = refresher(decay=0.5)
    r.observe(fast(4, agreed=4, disagreed=2))
    r.published(r.build(), 2)
    assert (r.audits.audited[4], r.audits.agreed[4]) == (3.0, 2.0)
    restored = StatsRefresher(V, E, K, RID, r.policy)
    raw = r.snapshot()
    restored.restore(raw)
    np.testing.assert_array_equal(restored.audits.audited, r.audits.audited)
    assert restored.audit_ledger.rows() == r.audit_ledger.rows() and r.audit_ledger.rows()[0]["audited"] == 6
    header, stats = read_snapshot(raw)
    old = {k: v for k, v in header.items() if k not in ("format", "audits", "audit_ledger")}  # before audits
    older = StatsRefresher(V, E, K, RID, r.policy)
    older.restore(encode_snapshot(old, stats))
    assert older.audits.audited.sum() == 0 and older.audit_ledger.rows() == []
    assert older.stats.routed.sum() == r.stats.routed.sum()


def test_refresh_policy_validates_the_audit_threshold():
    with pytest.raises(ValueError, match="audit min agreement"):
        RefreshPolicy(audit_min_agreement=1.5)


# --- drift ---------------------------------------------------------------------------------------
DV = 60
SPEC = dict(vocab_size=DV, hidden=16, num_experts=4, top_k=2, window=3)
DRIFT_THRESHOLDS = Thresholds(min_frequency=10, max_entropy=1.0, static_below=0, pair_min_count=3, pair_max_entropy=1.0)


def traffic(seed: int, batches: int, size: int = 250, streams: int = 6) -> list[EventBatch]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, DV + 1)
    p /= p.sum()
    seqs, out = [0] * streams, []
    for _ in range(batches):
        chunks = []
        for s, token in zip(rng.integers(streams, size=size).tolist(), rng.choice(DV, size=size, p=p).tolist()):
            chunks.append(EventChunk(f"s{seed}-{s}", seqs[s], (token,)))
            seqs[s] += 1
        out.append(EventBatch.from_chunks(chunks))
    return out


class SwappedCheckpoint:
    """Router B's weights under router A's id: a checkpoint swapped under the same name -- the
    failure the engine's router-id check cannot see and audits exist to catch."""

    def __init__(self, a, b) -> None:
        self.spec, self.router_id, self._b = a.spec, a.router_id, b

    def route(self, contexts, with_logits=False):
        return self._b.route(contexts, with_logits)


def serve(router, table, stats, batches):
    """Route ``batches`` with audits on; the audit ledger and the refresher's next table."""
    engine = VAREngine(router, table, EngineConfig(context_window=3, budget=BudgetPolicy(0.3, 100), audit_rate=0.2))
    refresher = StatsRefresher(DV, 4, 2, router.router_id, RefreshPolicy(every=10 ** 9, thresholds=DRIFT_THRESHOLDS))
    refresher.stats, refresher.counters.last_version = stats.copy(), table.version
    ledger, windows = AuditLedger(), {}
    for batch in batches:
        result = engine.route_batch(batch, windows)
        ledger.observe_decisions([result.decisions])
        refresher.observe_result(result)
    return ledger.rows()[0], refresher.build().table, engine


def test_drift_a_swapped_checkpoint_lowers_audit_agreement_and_shrinks_the_next_table():
    a, b = build_router(RouterSpec(**SPEC, seed=0)), build_router(RouterSpec(**SPEC, seed=1))
    stats = collect_statistics(a, traffic(9, 20), 3, pair_cap=1000)
    table = refresh_table(stats, RefreshPolicy(thresholds=DRIFT_THRESHOLDS), 2, a.router_id, 1).table
    fast_entries = lambda t: t.size + int(t.pair_entries.eligible.sum())  # noqa: E731
    held, same_table, _ = serve(a, table, stats, traffic(5, 20))
    drifted, next_table, engine = serve(SwappedCheckpoint(a, b), table, stats, traffic(5, 20))
    assert abs(held["audited"] - drifted["audited"]) < 0.02 * held["audited"] and held["audited"] > 500
    assert drifted["high"] < held["low"]  # the intervals do not overlap
    assert drifted["agreement"] < 0.3 < 0.8 < held["agreement"]
    assert fast_entries(next_table) < 0.5 * fast_entries(table)
    assert fast_entries(next_table) < 0.5 * fast_entries(same_table)
    assert next_table.meta["audit_banned"] > 10 * same_table.meta.get("audit_banned", 0)
    assert engine.ledger.max_sliding <= BudgetPolicy(0.3, 100).cap


def test_after_drift_the_closed_loop_recovers_agreement_from_fresh_evidence():
    a, b = build_router(RouterSpec(**SPEC, seed=0)), build_router(RouterSpec(**SPEC, seed=1))
    stats = collect_statistics(a, traffic(9, 20), 3, pair_cap=1000)
    policy = RefreshPolicy(every=10 ** 9, thresholds=DRIFT_THRESHOLDS)
    table = refresh_table(stats, policy, 2, a.router_id, 1).table
    engine = VAREngine(SwappedCheckpoint(a, b), table, EngineConfig(context_window=3, budget=BudgetPolicy(0.3, 100),
                                                                     audit_rate=0.2))
    refresher = StatsRefresher(DV, 4, 2, a.router_id, policy)
    refresher.stats, refresher.counters.last_version = stats.copy(), 1
    windows: dict[str, ContextWindow] = {}
    for round_ in range(6):
        for batch in traffic(10 + round_, 10):
            refresher.observe_result(engine.route_batch(batch, windows))
        refresh = refresher.build()
        refresher.published(refresh, refresh.table.version)
        engine.set_table(refresh.table)
    rows = refresher.audit_ledger.rows()
    assert rows[0]["table_version"] == 1 and rows[0]["agreement"] < 0.3
    assert rows[-1]["low"] > rows[0]["high"] and rows[-1]["agreement"] > 0.6


# --- where audits are reported -------------------------------------------------------------------
def test_router_metrics_count_audits_and_set_the_agreement_interval():
    from pipeline.engine.audit import wilson
    from pipeline.engine.events import DecisionBatch
    from pipeline.observability import RouterMetrics

    def batch(layer, version, audits):
        n = len(audits)
        return DecisionBatch(np.zeros((n, 2), np.int64), np.zeros((n, 2), np.float32), np.zeros(n, np.float32),
                             np.zeros(n, np.float32), np.full(n, Tier.FAST, np.int8), np.zeros(n, np.uint64),
                             version, RID, layer, audits=np.asarray(audits, np.int8))

    metrics = RouterMetrics("w1")
    metrics.observe_audits([batch(0, 3, [1, 1, 0, -1]), batch(1, 3, [-1, -1])])
    metrics.observe_audits([batch(0, 3, [1] * 5 + [-1])])
    get = metrics.registry.get_sample_value
    labels = {"worker": "w1", "layer": "0", "table_version": "3"}
    assert get("var_audits_total", {**labels, "result": "agree"}) == 7
    assert get("var_audits_total", {**labels, "result": "disagree"}) == 1
    assert get("var_audits_total", {**labels, "layer": "1", "result": "agree"}) is None
    assert get("var_audit_agreement", {**labels, "bound": "estimate"}) == pytest.approx(7 / 8)
    assert get("var_audit_agreement", {**labels, "bound": "low"}) == pytest.approx(wilson(7, 8)[0])
    assert get("var_audit_agreement", {**labels, "bound": "high"}) == pytest.approx(wilson(7, 8)[1])


def test_stats_show_lists_the_audited_agreement_per_version_and_layer():
    from pipeline.cli.stats_cmd import _snapshot_summary, render_summary, table_summary
    from pipeline.engine.layered_refresher import LayeredRefresher

    both = LayeredRefresher([refresher(), refresher()])
    layer0 = fast(4, agreed=8, disagreed=2, version=2)
    layer1 = outcomes([4] * 10, [Tier.FAST] * 10, [0] + [-1] * 9, version=2).layers[0]
    layer1.layer = 1
    layer0.layers.append(layer1)
    assert both.check(layer0) is None
    both.observe(layer0)
    raw = both.snapshot()
    r0 = both.layers[0]
    snapshot = _snapshot_summary(raw, 0)
    rows = {(row["layer"], row["table_version"]): row for row in snapshot["audits"]}
    assert set(rows) == {(0, 2), (1, 2)}
    assert (rows[(0, 2)]["audited"], rows[(0, 2)]["agreed"]) == (10, 8)
    assert rows[(0, 2)]["low"] == pytest.approx(0.490, abs=1e-3) and rows[(0, 2)]["high"] == pytest.approx(0.943, abs=1e-3)
    summary = table_summary(r0.build().table, 3)
    summary["stats_snapshot"] = snapshot
    text = render_summary(summary)
    assert "v2 layer 0: 80.0% [49.0%, 94.3%] of 10 audited" in text
    assert "v2 layer 1: 0.0% [0.0%, 79.3%] of 1 audited" in text
