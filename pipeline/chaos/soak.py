"""The soak run: millions of tokens through router workers; memory must stay flat.

The corpus is synthetic and endless in kind: streams (sessions) of ``session_tokens`` tokens,
``open_streams`` of them interleaved at any time, each new one replacing a finished one -- the
shape of real traffic, where conversations end. With ``stream_idle_s`` short, finished streams'
windows are forgotten, so the windows table and each worker's RSS must level off after warm-up.
Every few seconds the run samples each worker's RSS (``/proc``) and windows-table size (its
``var_stream_windows`` metric); completeness is counted with a bitmap (no per-event objects).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson

from pipeline.observability import scrape_samples, total
from pipeline.corpus.synthetic import SyntheticSpec, chain_model, chunked, interleave, stream_blocks, stream_id
from pipeline.engine.events import EventChunk
from pipeline.engine.records import encode_chunk
from pipeline.replay import offline_phase
from pipeline.settings import Settings
from pipeline.sources import SyntheticSource
from pipeline.stack.ports import free_ports
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.kafka_replay import scoped_settings
from pipeline.stream.producer import produce_messages
from pipeline.stream.topics import ensure_topics, pipeline_topics, wait_for_group
from pipeline.stream.worker_pool import WorkerPool

from .services import ChaosServices


@dataclass
class SoakOptions:
    tokens: int = 10_000_000
    workers: int = 2
    message_size: int = 64
    session_tokens: int = 4096
    open_streams: int = 64
    stream_idle_s: float = 20.0
    sample_s: float = 5.0
    vocab_size: int = 1000
    work_dir: Path = Path(".var/chaos")


@dataclass
class SoakResult:
    tokens: int
    outcomes: int = 0
    duplicates: int = 0
    missing: int = 0
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def growth_after_warmup(self, key: str) -> float:
        """Relative change of the per-sample worker sum of ``key`` from the first to the last
        third of the samples taken after warm-up (the first quarter)."""
        values = [sum(s[key].values()) for s in self.samples][len(self.samples) // 4:]
        if len(values) < 6:
            return float("nan")
        third = len(values) // 3
        early, late = float(np.mean(values[:third])), float(np.mean(values[-third:]))
        return (late - early) / early if early else float("nan")


def soak_chunks(opts: SoakOptions, seed: int) -> Iterator[EventChunk]:
    sessions = -(-opts.tokens // opts.session_tokens)
    spec = SyntheticSpec(vocab_size=opts.vocab_size, num_streams=sessions, tokens_per_stream=opts.session_tokens,
                         chunk_size=opts.message_size, seed=seed)
    model = chain_model(spec)
    return interleave(((stream_id(i), chunked(stream_blocks(spec, i, model), opts.message_size))
                       for i in range(sessions)), max_open=opts.open_streams)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _windows(port: int) -> float:
    try:
        return total(scrape_samples(port, timeout_s=2.0), "var_stream_windows")
    except OSError:
        return float("nan")


async def _count(run: Settings, opts: SoakOptions, result: SoakResult, done: asyncio.Event) -> None:
    seen = np.zeros(result.tokens, dtype=bool)
    consumer = KafkaAccess.from_settings(run).consumer(run.topic_outcomes, group_id=None, auto_offset_reset="earliest",
                                                       enable_auto_commit=False, fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    quiet_since = time.monotonic()
    try:
        while result.outcomes < result.tokens and time.monotonic() - quiet_since < 120:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for rec in records:
                    quiet_since = time.monotonic()
                    out = orjson.loads(rec.value)
                    n = len(out["tokens"]) if "tokens" in out else 1
                    base = int(out["stream"].rsplit("-", 1)[1]) * opts.session_tokens + out["seq"]
                    dup = int(seen[base:base + n].sum())
                    seen[base:base + n] = True
                    result.duplicates += dup
                    result.outcomes += n - dup
    finally:
        done.set()
        await consumer.stop()
    result.missing = int((~seen).sum())


async def _sample(pool: WorkerPool, ports: list[int], result: SoakResult, every: float, done: asyncio.Event,
                  start: float) -> None:
    while not done.is_set():
        routers = pool.workers
        result.samples.append({"t": round(time.monotonic() - start, 1), "outcomes": result.outcomes,
                               "rss_mb": {w.name: round(_rss_mb(w.process.pid), 1) for w in routers},
                               "windows": {w.name: _windows(p) for w, p in zip(routers, ports)}})
        try:
            await asyncio.wait_for(done.wait(), every)
        except asyncio.TimeoutError:
            pass


async def _drive(run: Settings, opts: SoakOptions, pool: WorkerPool, ports: list[int], result: SoakResult) -> None:
    await wait_for_group(KafkaAccess.from_settings(run), run.app_id, opts.workers, 120.0)
    done, start = asyncio.Event(), time.monotonic()
    counter = asyncio.create_task(_count(run, opts, result, done))
    sampler = asyncio.create_task(_sample(pool, ports, result, opts.sample_s, done, start))
    items = (((c.stream.encode(), encode_chunk(c)), len(c)) for c in soak_chunks(opts, run.seed))
    await produce_messages(items, KafkaAccess.from_settings(run), run.topic_tokens, run.topic_deadletter)
    await counter
    await sampler
    result.seconds = time.monotonic() - start


def run_soak(base: Settings, opts: SoakOptions, services: ChaosServices) -> SoakResult:
    """Route ``opts.tokens`` tokens through ``opts.workers`` router processes and sample them."""
    train = SyntheticSource(SyntheticSpec(vocab_size=opts.vocab_size, num_streams=16, tokens_per_stream=8192,
                                          seed=base.seed))
    settings = base.with_(kafka_bootstrap=services.bootstrap, redis_url=services.redis_url, vocab_size=opts.vocab_size,
                          stream_idle_s=opts.stream_idle_s, train_fraction=0.95)
    prepared, _ = offline_phase(train, settings)
    run = scoped_settings(settings, uuid.uuid4().hex[:8], opts.vocab_size)
    asyncio.run(ensure_topics(KafkaAccess.from_settings(run), pipeline_topics(run), run.replication_factor))
    from pipeline.table_sets import publish_table_and_stats

    asyncio.run(publish_table_and_stats(run, prepared.table, prepared.stats))
    total = -(-opts.tokens // opts.session_tokens) * opts.session_tokens
    result = SoakResult(total)
    pool, ports = WorkerPool(run, opts.work_dir / "logs" / f"soak-{run.app_id}"), free_ports(opts.workers)
    try:
        for i, port in enumerate(ports):
            pool.start(f"router-{i}", settings=run.with_(metrics_port=port))
        asyncio.run(_drive(run, opts, pool, ports, result))
    finally:
        pool.stop_all()
    return result
