"""The stats refresher's core (no I/O): evidence rules, refresh timing, snapshots, the closed loop,
the offline ``var stats build`` sharing its code, and the worker's message handling."""
from __future__ import annotations

import asyncio
import os

import numpy as np
import orjson
import pytest

from pipeline.cli.main import main
from pipeline.corpus.jsonl import iter_batches, write_corpus
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import Tier
from pipeline.engine.offline import collect_statistics
from pipeline.engine.refresher import (RefreshPolicy, SnapshotError, StatsRefresher, embedded_hook, read_snapshot,
                                       refresh_table)
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.table import RoutingTable, Thresholds
from pipeline.outcomes import LayerOutcomes, Outcomes
from pipeline.settings import Settings

V, E, K = 50, 4, 2
RID = "router-x"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def outcomes(tokens, tiers, experts=None, version=0, router_id=RID, entropy=0.1) -> Outcomes:
    n = len(tokens)
    experts = np.tile([0, 1], (n, 1)) if experts is None else np.asarray(experts, np.int64)
    layer = LayerOutcomes(0, experts, np.tile(np.float32([0.7, 0.3]), (n, 1)), np.full(n, 0.9, np.float32),
                          np.full(n, entropy, np.float32), np.asarray(tiers, np.int8), np.zeros(n, np.uint64),
                          np.arange(n), np.full(n, version), [router_id] * n)
    return Outcomes(["s"] * n, np.arange(n), np.asarray(tokens, np.int64), ["w"] * n, [layer])


def refresher(clock=None, **policy) -> StatsRefresher:
    return StatsRefresher(V, E, K, RID, RefreshPolicy(**{"every": 10, "interval_s": 5.0, **policy}),
                          clock or FakeClock())


def test_frequency_counts_every_tier_but_only_learned_outcomes_are_evidence():
    r = refresher()
    tiers = [Tier.CACHE, Tier.FAST, Tier.LEARNED, Tier.BUDGET_FALLBACK]
    used = r.observe(outcomes([3, 3, 3, 3], tiers))
    assert used == 1
    assert r.stats.frequency[3] == 4 and r.stats.routed[3] == 1
    assert r.counters.outcomes == 4 and r.counters.learned == 1


def test_fast_path_outcomes_never_confirm_the_table():
    """A token served only by the fast path gains frequency but no routing evidence."""
    r = refresher()
    r.observe(outcomes([5] * 3, [Tier.LEARNED] * 3, entropy=0.9))
    r.observe(outcomes([5] * 100, [Tier.FAST] * 100, entropy=0.0))
    assert r.stats.routed[5] == 3 and r.stats.mean_entropy()[5] == pytest.approx(0.9)


@pytest.mark.parametrize("field, value, reason", [
    ("router_ids", ["other"], "router id"),
    ("tokens", np.asarray([V]), "vocabulary"),
    ("experts", np.asarray([[0, E]]), "expert ids"),
    ("experts", np.asarray([[0, 1, 2]]), "top-k"),
    ("entropy", np.float32([np.nan]), "finite"),
    ("weights", np.float32([[-0.5, 1.5]]), "finite"),
])
def test_check_rejects_outcomes_this_refresher_cannot_count(field, value, reason):
    o = outcomes([1], [Tier.LEARNED])
    assert refresher().check(o) is None
    setattr(o if field == "tokens" else o.layers[0], field, value)
    assert reason in refresher().check(o)


def test_refresh_is_due_after_n_outcomes_or_t_seconds_with_news():
    clock = FakeClock()
    r = refresher(clock)
    assert not r.due()
    clock.now = 100.0
    assert not r.due(), "nothing arrived: no refresh however long"
    r.observe(outcomes([1], [Tier.LEARNED]))
    assert r.due(), "interval passed and something arrived"
    r.published(r.build(), 1)
    r.observe(outcomes([1] * 9, [Tier.LEARNED] * 9))
    assert not r.due()
    r.observe(outcomes([1], [Tier.LEARNED]))
    assert r.due(), "every=10 outcomes"


def test_postpone_waits_an_interval_after_a_failed_publication():
    clock = FakeClock()
    r = refresher(clock)
    r.observe(outcomes([1] * 20, [Tier.LEARNED] * 20))
    r.postpone()
    assert not r.due()
    clock.now = 5.0
    assert r.due()


def test_published_decays_the_statistics_and_records_the_prediction():
    r = refresher(decay=0.5)
    r.observe(outcomes([2] * 8, [Tier.LEARNED] * 8))
    refresh = r.build()
    assert refresh.table.version == 1 and refresh.table.meta["outcomes"] == 8
    r.published(refresh, 7)
    assert r.stats.frequency[2] == 4 and r.counters.last_version == 7 and r.counters.since_refresh == 0
    assert r.predicted[7] == refresh.prediction.learned_share
    assert r.build().table.version == 8


def test_report_compares_prediction_with_the_tiers_observed_under_each_version():
    r = refresher()
    r.observe(outcomes(range(10), [Tier.LEARNED] * 10))
    r.published(r.build(), 1)
    r.observe(outcomes([1] * 10, [Tier.FAST] * 6 + [Tier.LEARNED] * 3 + [Tier.CACHE], version=1))
    row = {row["version"]: row for row in r.report()}[1]
    assert row["observed_learned_share"] == pytest.approx(0.3)
    assert row["observed_non_fast_share"] == pytest.approx(0.4)
    assert row["predicted_learned_share"] == r.predicted[1]


def test_snapshot_round_trip_keeps_statistics_offsets_and_counters():
    r = refresher()
    r.observe(outcomes([1, 2, 2], [Tier.LEARNED, Tier.FAST, Tier.LEARNED]))
    r.advance({0: 17, 3: 4})
    r.published(r.build(), 3)
    raw = r.snapshot()
    back = refresher()
    back.restore(raw)
    assert back.offsets == {0: 17, 3: 4}
    assert back.counters == r.counters
    np.testing.assert_array_equal(back.stats.expert_weight, r.stats.expert_weight)
    np.testing.assert_array_equal(back.observed[0], r.observed[0])
    assert back.predicted == r.predicted
    header, stats = read_snapshot(raw)
    assert header["counters"]["outcomes"] == 3 and stats.total_frequency == 3


def test_restore_refuses_other_routers_shapes_and_garbage():
    raw = refresher().snapshot()
    with pytest.raises(SnapshotError, match="router"):
        StatsRefresher(V, E, K, "another").restore(raw)
    with pytest.raises(SnapshotError, match="vocab"):
        StatsRefresher(V + 1, E, K, RID).restore(raw)
    for garbage in (b"", b"hello", raw[:20], raw[:-30]):
        with pytest.raises(SnapshotError):
            refresher().restore(garbage)


def test_refresh_table_with_every_outcome_learned_equals_the_offline_table():
    """Offline and online share one code path: the same evidence gives the same table."""
    spec = RouterSpec(vocab_size=200, hidden=16, num_experts=4, top_k=2, window=3)
    router = build_router(spec)
    chunks = list(generate(SyntheticSpec(vocab_size=200, num_streams=3, tokens_per_stream=800, seed=2)))
    offline = collect_statistics(router, iter_batches(chunks, 256), spec.window)
    engine = VAREngine(router, RoutingTable.empty(200, 4, 2, router.router_id),
                       EngineConfig(context_window=3, budget=BudgetPolicy(enabled=False)))
    online = StatsRefresher(200, 4, 2, router.router_id, RefreshPolicy(every=10**9))
    windows: dict = {}
    for batch in iter_batches(chunks, 256):
        result = engine.complete_learned(engine.prepare(batch, windows))
        windows.update(result.windows)
        online.observe_result(result)
    policy = RefreshPolicy(thresholds=Thresholds(20, 0.8, 5))
    a = refresh_table(offline, policy, 2, router.router_id, 1).table
    b = refresh_table(online.stats, policy, 2, router.router_id, 1).table
    np.testing.assert_array_equal(a.eligible, b.eligible)
    np.testing.assert_array_equal(a.experts, b.experts)


def closed_loop(adaptive_target: float | None, every: int = 2000):
    """Cold start in-process: empty table, governor off, refresher hook after each batch."""
    spec = RouterSpec(vocab_size=1000)
    router = build_router(spec)
    engine = VAREngine(router, RoutingTable.empty(1000, 8, 2, router.router_id),
                       EngineConfig(context_window=4, budget=BudgetPolicy(enabled=False)))
    r = StatsRefresher(1000, 8, 2, router.router_id,
                       RefreshPolicy(every=every, interval_s=1e9, adaptive_target=adaptive_target), FakeClock())
    hook, windows, tiers = embedded_hook(r), {}, []
    for batch in iter_batches(generate(SyntheticSpec(vocab_size=1000, num_streams=12, tokens_per_stream=4000,
                                                     seed=3)), 256):
        result = engine.route_batch(batch, windows)
        tiers.append(result.decisions.tiers)
        if (table := hook(result)) is not None:
            engine.set_table(table)
    return np.concatenate(tiers), r, engine


def test_closed_loop_cold_start_learned_share_falls_under_the_adaptive_target():
    tiers, r, engine = closed_loop(adaptive_target=0.10)
    fifths = [float(np.mean(part == Tier.LEARNED)) for part in np.array_split(tiers, 5)]
    assert fifths[0] > 0.2 and fifths[-1] < 0.15, fifths
    assert engine.table.version == r.counters.last_version >= 20
    late = [row for row in r.report() if row["version"] >= 10]
    predicted = np.mean([row["predicted_learned_share"] for row in late])
    observed = np.mean([row["observed_learned_share"] for row in late])
    assert predicted <= 0.10 and abs(observed - predicted) < 0.03, (predicted, observed)


def test_closed_loop_with_fixed_thresholds_also_improves():
    tiers, _, _ = closed_loop(adaptive_target=None)
    fifths = [float(np.mean(part == Tier.LEARNED)) for part in np.array_split(tiers, 5)]
    assert fifths[-1] < fifths[0] - 0.15, fifths


# --- the offline command shares the code ------------------------------------------------
@pytest.fixture
def corpus_file(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("VAR_"):
            monkeypatch.delenv(name)
    path = tmp_path / "c.jsonl"
    write_corpus(path, generate(SyntheticSpec(vocab_size=300, num_streams=4, tokens_per_stream=2000, seed=4)))
    return path


def test_stats_build_adaptive_then_show(corpus_file, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["stats", "build", str(corpus_file), "--out", str(out), "--adaptive", "--adaptive-target",
                 "0.1"]) == 0
    table = RoutingTable.load(out)
    assert table.meta["adaptive"]["target"] == 0.1 and table.meta["predicted_learned_share"] <= 0.1
    capsys.readouterr()
    assert main(["stats", "show", "--file", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "(adaptive)" in shown and "table v1" in shown and "predicted learned share" in shown


@pytest.mark.parametrize("argv, words", [
    (["stats", "build", "{corpus}"], ["--out", "--publish"]),
    (["stats", "build", "{corpus}", "--out", "x.json", "--seed-stats"], ["--seed-stats", "--publish"]),
    (["stats", "worker"], ["vocabulary size"]),
    (["stats", "show", "--file", "missing.json"], ["no such table file"]),
])
def test_stats_user_errors_are_one_line(corpus_file, capsys, argv, words):
    assert main([a.format(corpus=corpus_file) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("var: error:") and "\n" not in err
    assert all(w in err for w in words), err


# --- the worker's message handling (no broker, no Redis) ---------------------------------
class Rec:
    def __init__(self, value, offset):
        self.value, self.offset = value, offset


class TP:
    def __init__(self, partition):
        self.partition, self.topic = partition, "t"

    def __hash__(self):
        return self.partition


def test_worker_skips_malformed_and_foreign_outcomes_and_still_advances_offsets(caplog):
    import redis.asyncio as aioredis

    from pipeline.stats_metrics import StatsMetrics
    from pipeline.table_sets import build_refresher
    from workers.stats_worker import StatsWorker

    settings = Settings.load(env={}, cli={}).with_(vocab_size=100)
    r = build_refresher(settings)
    good = {"v": 1, "stream": "a", "seq": 0, "token": 7, "experts": [1, 2], "weights": [0.6, 0.4], "confidence": 0.6,
            "entropy": 0.5, "tier": "learned", "ctx": 1, "pos": 0, "table_version": 0, "router_id": r.router_ids[0],
            "layer": 0, "worker": "w"}
    foreign = dict(good, router_id="someone-else")
    values = [orjson.dumps(good), b"\xff garbage", None, orjson.dumps(foreign), orjson.dumps(dict(good, token=10**6))]
    worker = StatsWorker(settings, r, consumer=None, redis=aioredis.Redis.from_url("redis://127.0.0.1:1"),
                         metrics=StatsMetrics("t"))
    counted = worker.ingest({TP(2): [Rec(v, 40 + i) for i, v in enumerate(values)]})
    assert counted == 1 and r.counters.learned == 1 and r.offsets == {2: 45}
    skipped = [rec.getMessage() for rec in caplog.records if "skipping outcome" in rec.getMessage()]
    assert len(skipped) == 4 and any("p2@41" in m and "JSON" in m for m in skipped)
    assert worker.metrics.skipped.labels(worker="t", reason="malformed")._value.get() == 2
    assert worker.metrics.skipped.labels(worker="t", reason="rejected")._value.get() == 2
    asyncio.run(worker.redis.aclose())
