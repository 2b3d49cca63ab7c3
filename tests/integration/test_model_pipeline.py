"""Every MoE layer of a real model through the streaming pipeline: real Kafka, real Redis, two router
worker processes and the stats worker, all with ``VAR_ROUTER=model`` (the bundled checkpoint; one
trained for a few steps in the test's tmp dir only if it is absent), over a held-out play.

Checked: every event has exactly one outcome, with all four layers; each layer's context hash is
the corpus's for its receptive field; each layer's learned share in every budget window of every
worker is within the budget; the stats worker published per-layer tables to Redis (the layer in
the key) as one table set that the routers then used; nothing is lost.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import pytest
import redis

from pipeline.assembly import build_routers, model_vocab
from pipeline.engine.context import layer_context_hashes
from pipeline.corpus.realtext import text_chunks
from pipeline.corpus.works import work_path
from pipeline.engine.layered_refresher import read_layer_snapshots
from pipeline.engine.table import RoutingTable
from pipeline.model.checkpoint import BUNDLED_CHECKPOINT
from pipeline.outcomes import Outcomes
from pipeline.settings import Settings
from pipeline.stores.keys import RedisKeys, table_set_id
from pipeline.stream.collector import Collected, collect
from pipeline.stream.kafka_replay import scoped_settings
from pipeline.stream.replay_checks import budget_ledger, context_mismatches
from pipeline.stream.producer import produce_chunks
from pipeline.stream.topics import ensure_topics, pipeline_topics, wait_for_group
from pipeline.stream.worker_pool import WorkerPool

pytestmark = pytest.mark.integration

TOKENS = 4000  # of Macbeth (held out: neither the tokenizer nor the model saw it)
BUDGET, BUDGET_WINDOW = 0.15, 250


def model_router(tmp_path) -> str:
    if BUNDLED_CHECKPOINT.is_file():
        return "model"
    path = tmp_path / "moe-lm.safetensors"
    subprocess.run([sys.executable, "-m", "pipeline", "model", "train", "--steps", "5", "--out", str(path)],
                   check=True, capture_output=True, timeout=600)
    return f"model:{path}"


def held_out_chunks() -> list:
    chunks, total = [], 0
    for chunk in text_chunks([work_path("macbeth")], chunk_size=8):
        chunks.append(chunk)
        total += len(chunk)
        if total >= TOKENS:
            return chunks
    return chunks


def wait_until(predicate, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def test_model_router_workers_route_every_layer_and_the_stats_worker_publishes_table_sets(
        kafka_bootstrap, redis_url, tmp_path):
    base = Settings.load(env={}, cli={}).with_(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, partitions=4, session_timeout_s=6.0, log_level="info",
        router=model_router(tmp_path), budget=BUDGET, budget_window=BUDGET_WINDOW, refresh_every=1000,
        refresh_interval_s=2.0)
    vocab = model_vocab(base)
    settings = scoped_settings(base, uuid.uuid4().hex[:8], vocab)
    routers = build_routers(settings, vocab)
    ids, windows = [r.router_id for r in routers], [r.spec.window for r in routers]
    keys = RedisKeys(settings.namespace, table_set_id(ids))
    chunks = held_out_chunks()
    tokens = sum(len(c) for c in chunks)
    asyncio.run(ensure_topics(kafka_bootstrap, pipeline_topics(settings)))
    pool = WorkerPool(settings, tmp_path / "logs")
    client = redis.Redis.from_url(redis_url)

    def logs() -> str:
        return "\n".join(f"--- {w.name} (exit {w.process.poll()})\n{w.log_tail(20)}" for w in pool.workers)

    try:
        pool.start_routers(2)
        assert asyncio.run(wait_for_group(kafka_bootstrap, settings.app_id, 2, 120)), logs()
        stats = pool.start("stats", ("stats", "worker"))
        assert wait_until(lambda: "stats worker on" in stats.log_tail(200), 120), logs()

        async def run() -> Collected:
            got = Collected()
            task = asyncio.create_task(collect(kafka_bootstrap, settings.topic_outcomes, tokens,
                                               settings.topic_deadletter, 90, got=got))
            half = len(chunks) // 2  # the second half arrives after the first table set is out
            await produce_chunks(chunks[:half], kafka_bootstrap, settings.topic_tokens, rate=1000)
            await asyncio.to_thread(wait_until, lambda: client.get(keys.table_pointer) is not None, 60)
            await produce_chunks(chunks[half:], kafka_bootstrap, settings.topic_tokens, rate=1000)
            return await task

        got = asyncio.run(run())
        assert wait_until(lambda: (raw := client.get(keys.stats_snapshot)) is not None
                          and read_layer_snapshots(raw)[0][0]["counters"]["outcomes"] >= tokens, 60), logs()
    finally:
        pool.stop_all()

    # zero loss, exactly one outcome per event, every layer in every outcome
    assert got.distinct == tokens and got.duplicates == 0 and got.invalid == 0, logs()
    assert not got.deadletters, got.deadletters[:3]
    assert got.layers == (0, 1, 2, 3)
    everything = Outcomes.concat(got.all_parts)
    assert len(everything) == tokens and {len(p.layers) for p in got.all_parts} == {4}
    assert context_mismatches(layer_context_hashes(chunks, windows), got.all_parts) == 0
    assert len({w.split("/")[0] for w in everything.workers}) == 2, "both workers routed partitions"
    for layer, router_id in enumerate(ids):
        columns = everything.layers[layer]
        assert set(columns.router_ids) == {router_id}
        max_window, blocks, sizes = budget_ledger(everything, BUDGET_WINDOW, layer)
        assert max_window <= int(BUDGET * BUDGET_WINDOW), (layer, max_window)
        full = [b for b, s in zip(blocks, sizes) if s == BUDGET_WINDOW]  # a worker's last block is partial
        assert full and all(b <= BUDGET * BUDGET_WINDOW for b in full), (layer, blocks, sizes)
        assert columns.learned().any()
        assert (columns.table_versions == everything.layers[0].table_versions).all()  # one set version
    assert everything.layers[0].table_versions.max() >= 1, "the routers loaded a published table set"

    # the per-layer tables of the current set, each under its layer's key, all of one version
    version = int(client.get(keys.table_pointer))
    names = keys.tables(version, len(ids))
    assert all(name.endswith(f":v{version}:l{layer}") for layer, name in enumerate(names))
    tables = [RoutingTable.from_bytes(client.get(name)) for name in names]
    assert [t.router_id for t in tables] == ids and {t.version for t in tables} == {version}
    assert client.get(keys.table(version, len(ids))) is None  # no fifth layer
    layers = read_layer_snapshots(client.get(keys.stats_snapshot))
    assert [header["router_id"] for header, _ in layers] == ids
    client.close()
