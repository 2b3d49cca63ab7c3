"""The stats refresher worker on a real Kafka broker and a real Redis server (the closed loop).

Router workers start with an empty table (v0, nothing on the fast path); the stats worker reads
their outcomes, publishes new table versions, and the routers pick them up without restarting.
The corpus is produced at a fixed rate so that the loop has time to close during the replay.

Measured on the 2-core development machine (one run; the asserted bounds are looser):
cold start, 72k tokens at 4,000 tokens/s, adaptive target 10%, governor off -> learned share by
fifth of the replay 0.23, 0.11, 0.11, 0.10, 0.10 (the first ~1,000 outcomes, before table v1: ~1.0);
36 table versions; the final table held 295-736 fast-path tokens covering 88-100% of the offline
table's tokens and 93-100% of their traffic (same corpus, same adaptive policy; the adaptive choice
among near-equal threshold pairs varies between runs) -- the bounds asserted are 75% of its tokens
and 90% of its traffic.
Predicted vs observed learned share per version: 9.3-10.0% predicted, 9-13% observed (the last
versions within 1.5 points).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import redis

from pipeline.corpus.jsonl import iter_batches
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.events import Tier
from pipeline.engine.offline import collect_statistics
from pipeline.engine.refresher import read_snapshot, refresh_table
from pipeline.engine.routers import build_router
from pipeline.engine.table import RoutingTable
from pipeline.plot import plot_timeline, timeline_summary
from pipeline.assembly import router_spec
from pipeline.settings import Settings
from pipeline.stores.keys import RedisKeys
from pipeline.stream.collector import Collected, collect
from pipeline.stream.kafka_replay import scoped_settings
from pipeline.stream.producer import produce_chunks, produce_raw, rechunk
from pipeline.timeline import outcome_timeline
from pipeline.stream.topics import ensure_topics, pipeline_topics, wait_for_group
from pipeline.stream.worker_pool import WorkerPool
from pipeline.observability import scrape_samples, total
from pipeline.table_sets import build_refresher, refresh_policy

pytestmark = pytest.mark.integration

CORPUS = SyntheticSpec(vocab_size=1000, num_streams=12, tokens_per_stream=6000, seed=3)
RATE = 4000.0  # tokens/s produced
MESSAGE_SIZE = 8


@dataclass
class Loop:
    """One run-scoped closed loop: settings, corpus, worker processes, Redis access."""

    settings: Settings
    chunks: list
    pool: WorkerPool
    keys: RedisKeys
    redis: redis.Redis

    @property
    def tokens(self) -> int:
        return sum(len(c) for c in self.chunks)

    def start_routers(self, count: int = 1) -> None:
        self.pool.start_routers(count)
        ready = asyncio.run(wait_for_group(self.settings.kafka_bootstrap, self.settings.app_id, count, 90))
        assert ready, self.logs()

    def start_stats(self, name: str = "stats", timeout_s: float = 60.0):
        worker = self.pool.start(name, ("stats", "worker"))
        deadline = time.monotonic() + timeout_s
        while "stats worker on" not in worker.log_tail(200):
            assert worker.alive() and time.monotonic() < deadline, self.logs()
            time.sleep(0.2)
        return worker

    def snapshot(self) -> dict:
        raw = self.redis.get(self.keys.stats_snapshot)
        return read_snapshot(raw)[0] if raw is not None else {"counters": {"outcomes": 0, "last_version": 0}}

    def current_table(self) -> RoutingTable:
        version = int(self.redis.get(self.keys.table_pointer))
        return RoutingTable.from_bytes(self.redis.get(self.keys.table(version)))

    def wait_counted(self, outcomes: int, timeout_s: float = 30.0) -> dict:
        """Until the stats worker's snapshot includes ``outcomes`` outcome rows."""
        deadline = time.monotonic() + timeout_s
        while (snap := self.snapshot())["counters"]["outcomes"] < outcomes and time.monotonic() < deadline:
            time.sleep(0.3)
        return snap

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} (exit {w.process.poll()})\n{w.log_tail(20)}" for w in self.pool.workers)


@pytest.fixture
def loop(kafka_bootstrap, redis_url, tmp_path):
    base = Settings.load(env={}, cli={}).with_(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, partitions=4, session_timeout_s=6.0, log_level="info",
        governor=False, refresh_every=2000, refresh_interval_s=2.0, adaptive=True, adaptive_target=0.10)
    settings = scoped_settings(base, uuid.uuid4().hex[:8], CORPUS.vocab_size)
    asyncio.run(ensure_topics(kafka_bootstrap, pipeline_topics(settings)))
    router_id = router_spec(settings, CORPUS.vocab_size).router_id
    client = redis.Redis.from_url(redis_url)
    loop = Loop(settings, list(generate(CORPUS)), WorkerPool(settings, tmp_path / "logs"),
                RedisKeys(settings.namespace, router_id), client)
    yield loop
    loop.pool.stop_all()
    client.close()


async def produce(loop: Loop, chunks=None) -> None:
    await produce_chunks(rechunk(loop.chunks if chunks is None else chunks, MESSAGE_SIZE),
                         loop.settings.kafka_bootstrap, loop.settings.topic_tokens, RATE)


def collector(loop: Loop, got: Collected) -> asyncio.Task:
    s = loop.settings
    return asyncio.create_task(collect(s.kafka_bootstrap, s.topic_outcomes, loop.tokens, s.topic_deadletter, 60,
                                       got=got))


def offline_table(loop: Loop) -> RoutingTable:
    """The offline phase on the same corpus, same policy (``var stats build``'s code path)."""
    s = loop.settings
    router = build_router(router_spec(s, CORPUS.vocab_size))
    stats = collect_statistics(router, iter_batches(loop.chunks, s.batch_size), s.context_window)
    return refresh_table(stats, refresh_policy(s), s.top_k, router.router_id, 1).table


def test_cold_start_learned_share_falls_under_the_budget(loop, tmp_path, capsys):
    loop.start_routers(1)
    router_pid = loop.pool.workers[0].process.pid
    loop.start_stats()

    async def run() -> Collected:
        got = Collected()
        task = collector(loop, got)
        await produce(loop)
        return await task
    got = asyncio.run(run())
    assert got.distinct == loop.tokens and got.invalid == 0, loop.logs()
    outcomes = got.outcomes()
    fifths = [float(np.mean(part == Tier.LEARNED)) for part in np.array_split(outcomes.layers[0].tiers, 5)]
    versions = sorted(set(outcomes.layers[0].table_versions.tolist()))
    # The worker saves its snapshot right after publishing, so once the snapshot has counted every
    # outcome the current table is one built from all of them (read earlier, it may be one built
    # from part of the traffic, under load: a race of the test, not of the worker).
    snap = loop.wait_counted(loop.tokens)
    final, offline = loop.current_table(), offline_table(loop)
    both = final.eligible & offline.eligible
    share = offline.frequency / offline.frequency.sum()
    overlap, traffic_overlap = both.sum() / offline.size, share[both].sum() / share[offline.eligible].sum()
    refresher = build_refresher(loop.settings)
    refresher.restore(loop.redis.get(loop.keys.stats_snapshot))
    late = [r for r in refresher.report()[0] if r["predicted_learned_share"] is not None and r["outcomes"] >= 500]
    timeline = outcome_timeline(outcomes)
    figures = {"learned_share_by_fifth": fifths, "versions": len(versions), "final_version": final.version,
               "final_size": final.size, "offline_size": offline.size, "overlap": float(overlap),
               "traffic_overlap": float(traffic_overlap), "final_thresholds": str(final.thresholds),
               "predicted_vs_observed": [(r["version"], r["predicted_learned_share"], r["observed_learned_share"],
                                          r["observed_non_fast_share"]) for r in late],
               "timeline": timeline_summary(timeline)}
    (tmp_path / "figures.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2 |
                                                         orjson.OPT_SERIALIZE_NUMPY))
    report = SimpleNamespace(timeline=timeline, budget=loop.settings.budget, governor=False, source="synthetic",
                             mode="kafka cold start (1 router + stats worker, adaptive 10%)")
    plot_timeline(report, tmp_path / "cold_start.png")
    print(orjson.dumps(figures, option=orjson.OPT_SERIALIZE_NUMPY).decode())

    # before the first table (version 0): (nearly) all learned -- measured on exactly those outcomes,
    # not on the first timeline point, which may already include decisions under table v1
    untabled = outcomes.layers[0].table_versions == 0
    first = float(np.mean(outcomes.layers[0].tiers[untabled] == Tier.LEARNED))
    assert untabled.any() and first > 0.5, (int(untabled.sum()), first)
    assert fifths[-1] < fifths[0] and fifths[-1] < loop.settings.budget, figures
    assert len(versions) >= 5 and final.version >= versions[-1], figures
    assert loop.pool.workers[0].alive() and loop.pool.workers[0].process.pid == router_pid, "router never restarted"
    assert overlap >= 0.75 and traffic_overlap >= 0.90, figures
    assert snap["counters"]["outcomes"] == loop.tokens, "every outcome counted exactly once"
    # The tables' predictions hold on the traffic they route: under each of the last five versions
    # the learned share observed is the one it predicted (within 0.05). Until 2026-12-05 about a
    # third of runs had one version reading ~0.3 against ~0.1 predicted, at a point that moved from
    # run to run: the version that dropped tokens for their live audits, whose prediction was made
    # before the ban (pipeline/engine/adaptive.py, "Audit bans"). Such a version now predicts ~0.2
    # and observes it.
    recent = late[-5:]
    assert len(recent) == 5, figures
    for r in recent:
        assert abs(r["observed_learned_share"] - r["predicted_learned_share"]) < 0.05, (r, figures)
    show_reports_the_loop(loop, capsys)


def show_reports_the_loop(loop: Loop, capsys) -> None:
    """``var stats show`` reads the current table and the worker's predicted vs observed shares."""
    from pipeline.cli.main import main

    capsys.readouterr()
    s = loop.settings
    assert main(["stats", "show", "--redis-url", s.redis_url, "--namespace", s.namespace]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"table v{loop.current_table().version} ") and "(adaptive)" in shown, shown
    assert f"stats worker: {loop.tokens:,} outcomes counted" in shown, shown
    assert shown.count("predicted learned share") >= 1 + 4, shown


def wait_until(check, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_stats_worker_killed_and_restarted_resumes_without_counting_twice(loop):
    loop.start_routers(1)
    first = loop.start_stats("stats")

    async def run() -> tuple[Collected, dict, int]:
        got = Collected()
        task = collector(loop, got)
        producer = asyncio.create_task(produce(loop))
        assert await asyncio.to_thread(wait_until, lambda: loop.snapshot()["counters"]["last_version"] >= 3)
        loop.pool.kill(first)
        before, at_kill = loop.snapshot()["counters"], got.distinct
        await asyncio.sleep(3.0)  # the routers carry on alone
        routed_while_down = got.distinct - at_kill
        await asyncio.to_thread(loop.start_stats, "stats-restarted")
        await producer
        return await task, before, routed_while_down

    got, before, routed_while_down = asyncio.run(run())
    assert got.distinct == loop.tokens and not got.deadletters, loop.logs()
    assert routed_while_down > 0, "routers kept routing while the stats worker was down"
    after = loop.wait_counted(loop.tokens)["counters"]
    restarted = loop.pool.workers[-1]
    assert f"resumed {before['outcomes']:,} outcomes" in restarted.log_tail(400), loop.logs()
    assert after["outcomes"] == loop.tokens, "every outcome counted exactly once across the restart"
    assert after["outcomes"] >= before["outcomes"] and after["learned"] >= before["learned"]
    assert after["last_version"] > before["last_version"], "versions keep increasing after the restart"
    assert int(got.outcomes().layers[0].table_versions.max()) > before["last_version"], "routers use the new versions"


GARBAGE_STREAM = "garbage"
GARBAGE_REASONS = ("JSON", "version-2", "per-token values", "vocabulary", "router id", "one entry per token")


def garbage(router_id: str) -> list[tuple[bytes | None, bytes]]:
    good = {"v": 1, "stream": GARBAGE_STREAM, "seq": 0, "token": 7, "experts": [1, 2], "weights": [0.6, 0.4], "confidence": 0.6,
            "entropy": 0.5, "tier": "learned", "ctx": 1, "pos": 0, "table_version": 0, "router_id": router_id,
            "layer": 0, "worker": "w"}
    bad = [b"not json {", orjson.dumps({"v": 3}), orjson.dumps(dict(good, tier="warp")),
           orjson.dumps(dict(good, token=10**6)), orjson.dumps(dict(good, router_id="someone-else")),
           orjson.dumps({k: v for k, v in dict(good, tokens=[1, 2]).items() if k != "token"}), b""]
    return [(GARBAGE_STREAM.encode(), value) for value in bad]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_malformed_outcomes_are_skipped_and_the_worker_keeps_publishing(loop):
    loop.start_routers(1)
    port = free_port()
    loop.pool.settings = loop.settings.with_(metrics_port=port)  # only the stats worker serves metrics
    stats = loop.start_stats()
    half = len(loop.chunks) // 2
    bad = garbage(loop.keys.router_id)

    async def run() -> tuple[Collected, int]:
        got = Collected()
        task = collector(loop, got)
        await produce(loop, loop.chunks[:half])
        assert await asyncio.to_thread(wait_until, lambda: loop.snapshot()["counters"]["last_version"] >= 2)
        await produce_raw(loop.settings.kafka_bootstrap, loop.settings.topic_outcomes, bad)
        version_at_garbage = loop.snapshot()["counters"]["last_version"]
        await produce(loop, loop.chunks[half:])
        return await task, version_at_garbage

    got, version_at_garbage = asyncio.run(run())
    assert len([key for key in got.seen if key[0] != GARBAGE_STREAM]) == loop.tokens, loop.logs()
    after = loop.wait_counted(loop.tokens)["counters"]
    assert stats.alive(), loop.logs()
    assert after["outcomes"] == loop.tokens, "garbage is never counted"
    assert wait_until(lambda: loop.snapshot()["counters"]["last_version"] > version_at_garbage + 1)
    log = stats.log_tail(2000)
    skipped = [line for line in log.splitlines() if "skipping outcome" in line]
    assert len(skipped) == len(bad), log
    for reason in GARBAGE_REASONS:
        assert any(reason in line for line in skipped), (reason, skipped)
    metrics = scrape_samples(port)
    skipped = {reason: total(metrics, "var_stats_skipped_total", reason=reason, worker="stats")
               for reason in ("malformed", "rejected")}
    assert skipped == {"malformed": len(bad) - 2, "rejected": 2}, metrics
    assert total(metrics, "var_stats_outcomes_total", worker="stats") >= loop.tokens - loop.settings.refresh_every
    assert total(metrics, "var_stats_table_version", worker="stats") > version_at_garbage


def test_stats_build_publishes_and_show_reads_redis(redis_url, tmp_path, capsys, monkeypatch):
    import os

    from pipeline.cli.main import main
    from pipeline.corpus.jsonl import write_corpus

    for name in list(os.environ):
        if name.startswith("VAR_"):
            monkeypatch.delenv(name)
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, generate(SyntheticSpec(vocab_size=300, num_streams=4, tokens_per_stream=2000, seed=4)))
    where = ["--redis-url", redis_url, "--namespace", f"t-{uuid.uuid4().hex[:8]}"]
    assert main(["stats", "build", str(corpus), "--publish", "--seed-stats", *where]) == 0
    assert "seeded the stats worker's statistics" in capsys.readouterr().out
    assert main(["stats", "build", str(corpus), "--publish", "--seed-stats", "--adaptive", *where]) == 0
    out = capsys.readouterr().out
    assert "published table v2" in out and "kept the stats worker's existing statistics" in out
    assert main(["stats", "show", *where]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("table v2") and "(adaptive)" in shown and "stats worker: 8,000 outcomes counted" in shown
    assert main(["stats", "show", "--redis-url", redis_url, "--namespace", "nothing-here"]) == 2
    assert "no table published" in capsys.readouterr().err
