"""Operating the pipeline: the local stack topology, metrics endpoints, a Redis outage."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.observability import scrape_samples, total
from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.stack.ports import free_port
from pipeline.stack.redis_server import RedisServer
from pipeline.stream.collector import Collected, collect

from .harness import check_contexts, make_harness

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def wait_for_metrics(port: int, timeout_s: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return scrape_samples(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_metrics_endpoint_counters_move(kafka_bootstrap, redis_url, tmp_path):
    port = free_port()
    h = make_harness(kafka_bootstrap, redis_url, tmp_path,
                     SyntheticSpec(vocab_size=1000, num_streams=4, tokens_per_stream=1000, seed=4),
                     metrics_port=port, log_format="json")
    h.start_routers(1)
    try:
        before = wait_for_metrics(port)
        got = asyncio.run(_produce_and_collect(h, message_size=8))
        after = scrape_samples(port)
    finally:
        h.pool.stop_all()
    assert got.distinct == h.tokens
    assert total(before, "var_decisions_total") == 0
    assert total(after, "var_decisions_total") == h.tokens
    assert total(after, "var_decisions_total", tier="fast") > 0
    assert total(after, "var_batch_size_count") > 0 and total(after, "var_route_batch_seconds_count") > 0
    assert total(after, "var_redis_round_trips_total") >= total(after, "var_batch_size_count")
    assert total(after, "var_table_version") == h.prepared.table.version
    assert 0 < total(after, "var_learned_share") <= 1
    log_line = (tmp_path / "logs" / "router-0.log").read_text().splitlines()[0]
    assert json.loads(log_line)["worker"] == "router-0"
    tail = subprocess.run([sys.executable, "-m", "pipeline", "outcomes", "tail", "--from-beginning", "--max", "2",
                           "--idle-exit", "10"], env={**os.environ, "PYTHONPATH": str(ROOT),
                                                      "KAFKA_BOOTSTRAP": kafka_bootstrap,
                                                      "VAR_TOPIC_OUTCOMES": h.settings.topic_outcomes},
                          capture_output=True, text=True, timeout=60)
    lines = tail.stdout.splitlines()
    assert tail.returncode == 0 and len(lines) >= 2, tail.stderr
    assert all("seq" in line and "experts" in line and "table v" in line for line in lines)


async def _produce_and_collect(h, message_size: int, rate: float | None = None,
                               got: Collected | None = None) -> Collected:
    collector = asyncio.create_task(h.collect(idle_timeout_s=60, got=got))
    await h.produce(message_size, rate)
    return await collector


def test_redis_outage_degrades_but_loses_nothing(kafka_bootstrap, tmp_path):
    redis = RedisServer(tmp_path / "redis", free_port())
    redis.start()
    port = free_port()
    try:
        h = make_harness(kafka_bootstrap, redis.url, tmp_path,
                         SyntheticSpec(vocab_size=1000, num_streams=8, tokens_per_stream=1500, seed=8),
                         metrics_port=port, redis_timeout_s=0.2)
        h.start_routers(1)
        got = Collected()

        async def run() -> Collected:
            task = asyncio.create_task(_produce_and_collect(h, 4, rate=1500, got=got))
            while got.distinct < h.tokens // 4:
                await asyncio.sleep(0.2)
            redis.stop()
            outage_start = got.distinct
            await asyncio.sleep(3.0)
            assert got.distinct > outage_start, "routing must continue while Redis is down"
            redis.start()
            return await task

        got = asyncio.run(run())
        samples = scrape_samples(port)
    finally:
        h.pool.stop_all()
        redis.stop()
    assert got.distinct == h.tokens, h.worker_logs()
    check_contexts(h, got.outcomes())
    assert total(samples, "var_redis_degraded_total") > 0
    assert total(samples, "var_table_version") == h.prepared.table.version  # kept the in-memory table
    assert total(samples, "var_learned_share_window_max") <= h.settings.budget


def test_local_stack_runs_the_compose_topology(tmp_path):
    """`var stack up --workers 3 --stats-worker`: broker, Redis, 3 routers and the stats worker as
    local processes; produce, route, watch a table get published, tear down."""
    state = tmp_path / "stack"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VAR_VOCAB_SIZE": "1000", "VAR_SESSION_TIMEOUT_S": "6",
           "VAR_REFRESH_EVERY": "1000", "VAR_REFRESH_INTERVAL_S": "1"}
    env.pop("KAFKA_BOOTSTRAP", None)
    env.pop("REDIS_URL", None)
    var = [sys.executable, "-m", "pipeline"]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(var + list(args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert not check or done.returncode == 0, f"var {' '.join(args)}: {done.stderr[-2000:]}"
        return done

    try:
        run("stack", "up", "--free-ports", "--state-dir", str(state), "--workers", "3", "--stats-worker")
        status = json.loads(run("stack", "status", "--state-dir", str(state), "--json").stdout)
        assert {"kafka", "redis", "router-0", "router-1", "router-2", "stats"} <= set(status)
        assert all(s["alive"] for s in status.values())
        kafka = status["kafka"]["address"]
        from pipeline.stream.topics import wait_for_group

        assert asyncio.run(wait_for_group(kafka, "var-router", 3, 90)), "routers did not join"
        env["KAFKA_BOOTSTRAP"] = kafka
        run("produce", "--synthetic", "--streams", "12", "--tokens-per-stream", "300", "--message-size", "4")
        got = asyncio.run(collect(kafka, "var-outcomes", 12 * 300, idle_timeout_s=60))
        assert got.distinct == 12 * 300
        assert len(set(got.outcomes().workers)) == 3
        env["REDIS_URL"] = status["redis"]["address"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shown = run("stats", "show", "--json", check=False)
            if shown.returncode == 0 and json.loads(shown.stdout).get("version", 0) >= 1:
                break
            time.sleep(1)
        assert shown.returncode == 0 and json.loads(shown.stdout)["version"] >= 1, shown.stderr
    finally:
        down = run("stack", "down", "--state-dir", str(state), check=False)
    assert "router-0" in down.stdout and "stats" in down.stdout and "kafka" in down.stdout
    after = run("stack", "status", "--state-dir", str(state), check=False)
    assert after.returncode != 0  # nothing recorded any more
