"""``var bench pipeline``: the streaming pipeline against its framework ceiling and its baseline.

On one broker and one corpus, one case after another, each with a fresh run id (topics, group,
Redis namespace) and one worker process:

* ``passthrough`` -- a bare Faust agent that forwards every message (the framework ceiling);
* ``learned``     -- the router worker with every token through the learned router;
* ``var``         -- the router worker with VAR (cache -> fast path -> learned, governor);
* ``var-misses``  -- the same with ``cache_scope=misses`` (fast-path tokens skip the Redis lookup);

for per-token and chunked messages, and for the large router with chunked messages; and the
per-token passthrough and VAR once more with Faust's own intake (``VAR_INTAKE=faust``: its wait
per message and ``Stream.take_events``), for the ratio. Each case
has two phases: a *throughput* phase (send the events as fast as possible; tokens/s between the
first and the last outcome) and a *latency* phase at half the load just measured (capped at
``per_token_rate`` / ``chunked_rate``; event -> outcome latency from the send time to the outcome's
Kafka timestamp, which the worker's producer sets), and whether the worker kept up with it
(:func:`kept_up`: a per-token worker drains a backlog faster than it keeps up with a steady
stream, so half the backlog rate can be more than it sustains).
"""
from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer
from redis.exceptions import RedisError

from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.events import EventChunk
from pipeline.engine.offline import collect_statistics
from pipeline.engine.pairs import stats_pair_cap
from pipeline.engine.records import RecordError, encode_chunk
from pipeline.engine.routers import PRESETS, build_router
from pipeline.engine.table import build_table
from pipeline.corpus.jsonl import iter_batches
from pipeline.assembly import router_spec, thresholds
from pipeline.settings import Settings
from pipeline.stores.namespace import drop_namespace
from pipeline.stores.redis_access import RedisAccess
from pipeline.stack.ports import free_port
from pipeline.stream.kafka_replay import scoped_settings
from pipeline.table_sets import publish_table_and_stats
from pipeline.stream.producer import PRODUCER_BATCH_BYTES, rechunk
from pipeline.stream.topics import TopicError, delete_run_topics, ensure_topics, pipeline_topics, wait_for_group
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.worker_pool import WorkerPool

from .pipeline_report import cpu_seconds, scrape, stage_costs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    shape: str  # "per-token" | "chunked"
    size: str  # "seed" | "large"
    mode: str  # "passthrough" | "learned" | "var"
    intake: str = "batched"  # VAR_INTAKE: "batched" | "faust" (Faust's own per-message intake)


CASES = [Case("per-token", "seed", mode) for mode in ("passthrough", "learned", "var")]
CASES += [Case("per-token", "seed", mode, "faust") for mode in ("passthrough", "var")]
CASES += [Case("chunked", "seed", mode) for mode in ("passthrough", "learned", "var", "var-misses")]
CASES += [Case("chunked", "large", mode) for mode in ("learned", "var", "var-misses")]


@dataclass(frozen=True)
class BenchConfig:
    per_token_tokens: int = 100_000
    chunked_tokens: int = 300_000
    chunk_size: int = 64
    latency_s: float = 2.0
    per_token_rate: float = 20_000.0  # caps of the latency phase's rate (half the measured maximum)
    chunked_rate: float = 150_000.0
    streams: int = 16
    log_dir: Path = Path(".var/logs/bench")


def _corpus(cfg: BenchConfig, vocab: int, seed: int, train_tokens: int = 100_000) -> tuple[list[EventChunk], list[EventChunk]]:
    """Training records (offline phase) and online records (enough for every phase)."""
    online = cfg.chunked_tokens + int(cfg.chunked_rate * cfg.latency_s) + 2 * cfg.chunk_size * cfg.streams
    spec = SyntheticSpec(vocab_size=vocab, num_streams=cfg.streams,
                         tokens_per_stream=(online + train_tokens) // cfg.streams + 1, seed=seed)
    chunks = generate(spec)
    return list(itertools.islice(chunks, train_tokens)), list(chunks)


def _first_tokens(chunks: list[EventChunk], tokens: int) -> list[EventChunk]:
    """The leading chunks holding about ``tokens`` tokens (at least one chunk)."""
    out: list[EventChunk] = []
    n = 0
    for chunk in chunks:
        if out and n >= tokens:
            break
        out.append(chunk)
        n += len(chunk)
    return out


def _split(chunks: list[EventChunk], first: int, then: int) -> tuple[list[EventChunk], list[EventChunk]]:
    return chunks[:first], chunks[first:first + then]


async def _send(bootstrap: KafkaAccess, topic: str, chunks: list[EventChunk], rate: float | None) -> dict[tuple[str, int], float]:
    """Produce chunks (optionally at ``rate`` tokens/s); returns send time (ms) per (stream, first seq)."""
    producer = bootstrap.producer(linger_ms=2, max_batch_size=PRODUCER_BATCH_BYTES)
    await producer.start()
    sent, futures, tokens, start = {}, [], 0, time.perf_counter()
    try:
        for chunk in chunks:
            sent[(chunk.stream, chunk.first_seq)] = time.time() * 1000
            futures.append(await producer.send(topic, encode_chunk(chunk), key=chunk.stream.encode()))
            tokens += len(chunk)
            if rate and (ahead := tokens / rate - (time.perf_counter() - start)) > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


def _outcome_tokens(raw: bytes) -> tuple[str, int, int]:
    """(stream, first seq, tokens) of an outcome -- or of a forwarded input record (passthrough):
    both carry ``stream``, ``seq`` and ``token``/``tokens``, and only those are read. The full
    decode (:func:`pipeline.outcomes.decode_outcome`, ~1.7 µs/token against ~0.25 for the JSON
    alone) made the measuring consumer take ~0.45 of the two cores at 270k tokens/s."""
    try:
        record = orjson.loads(raw)
        tokens = record["tokens"] if "tokens" in record else [record["token"]]
        return str(record["stream"]), int(record["seq"]), len(tokens)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"not an outcome or token record: {exc!r}") from None


async def _drain(consumer: AIOKafkaConsumer, tokens: int, idle_s: float = 60.0) -> tuple[list[tuple[str, int, int, float]], float, float]:
    """Read outcomes until ``tokens`` tokens arrived: ([(stream, seq, n, kafka ts ms)], first, last arrival).

    Throughput is measured from the start of sending to the last outcome (the worker is already
    in the group), so a backlog routed in one big batch is timed correctly."""
    got, count, first, last, quiet_since = [], 0, 0.0, 0.0, time.monotonic()
    while count < tokens and time.monotonic() - quiet_since < idle_s:
        batches = await consumer.getmany(timeout_ms=100, max_records=20_000)
        now = time.perf_counter()
        for records in batches.values():
            for rec in records:
                try:
                    stream, seq, n = _outcome_tokens(rec.value)
                except RecordError:
                    continue
                got.append((stream, seq, n, float(rec.timestamp)))
                count += n
                first, last = first or now, now
                quiet_since = time.monotonic()
    return got, first, last


async def _measure(run: Settings, throughput_chunks: list[EventChunk], latency_pool: list[EventChunk],
                   cap: float, latency_s: float, snapshot: Callable[[], dict[str, float]],
                   worker_pids: list[int]) -> tuple[dict[str, float], dict[str, float]]:
    """(throughput and latency figures, ``snapshot()`` taken right after the throughput phase).
    The latency phase sends ``latency_s`` worth of ``latency_pool`` at half the throughput just
    measured (at most ``cap`` tokens/s)."""
    consumer = KafkaAccess.from_settings(run).consumer(run.topic_outcomes, group_id=None, auto_offset_reset="earliest",
                                                       fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    # The measuring client must not stall what it measures: a full collection of this process
    # (corpus, tables, ~1M objects) took 90-290 ms, its producer stopped between an event's send
    # time and its send. Nothing is collected while a case is timed (a few MB of garbage).
    gc.disable()
    try:
        n1 = sum(len(c) for c in throughput_chunks)
        cpu = (time.process_time(), cpu_seconds(worker_pids))
        first = time.perf_counter()
        sender = asyncio.create_task(_send(KafkaAccess.from_settings(run), run.topic_tokens, throughput_chunks, None))
        _, _, last = await _drain(consumer, n1)
        await sender
        wall = time.perf_counter() - first
        # cores used in the throughput phase: this process (producer + measuring consumer), workers
        cores = {"bench_cores": (time.process_time() - cpu[0]) / wall,
                 "worker_cores": (cpu_seconds(worker_pids) - cpu[1]) / wall}
        metrics = snapshot()
        rate = min(cap, 0.5 * n1 / max(last - first, 1e-9))
        latency_chunks = _first_tokens(latency_pool, int(rate * latency_s))
        n2 = sum(len(c) for c in latency_chunks)
        sender = asyncio.create_task(_send(KafkaAccess.from_settings(run), run.topic_tokens, latency_chunks, rate))
        got, _, _ = await _drain(consumer, n2)
        sent = await sender
    finally:
        gc.enable()
        await consumer.stop()
    latencies = [ts - sent[(s, q)] for s, q, _, ts in got if (s, q) in sent]
    return {"tokens_per_s": n1 / max(last - first, 1e-9), "latency_rate": rate, **cores,
            "latency_kept_up": kept_up(sent, got, n2, rate),
            "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "latency_p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan")}, metrics


def kept_up(sent: dict[tuple[str, int], float], got: list[tuple[str, int, int, float]], tokens: int,
            rate: float) -> bool:
    """Whether the worker routed the latency phase at the rate it was sent: its tokens over the
    span from the first send to the last outcome are at least 90% of ``rate``. A worker that
    falls behind (its latency grows through the phase) does not; its percentiles then measure the
    backlog, not the pipeline."""
    if not sent or not got:
        return False
    span_s = (max(ts for *_, ts in got) - min(sent.values())) / 1000
    return tokens / max(span_s, 1e-9) >= 0.9 * rate


def run_case(case: Case, base: Settings, cfg: BenchConfig, tables: dict, corpus: list[EventChunk],
             workers: int = 1) -> dict[str, object]:
    """One case with ``workers`` router processes (metrics: the first one's)."""
    preset = PRESETS[case.size]
    size = cfg.chunk_size if case.shape == "chunked" else 1
    total = cfg.chunked_tokens if case.shape == "chunked" else cfg.per_token_tokens
    rate = cfg.chunked_rate if case.shape == "chunked" else cfg.per_token_rate
    port = free_port()
    mode, scope = ("var", "misses") if case.mode == "var-misses" else (case.mode, "all")
    run = scoped_settings(base.with_(hidden=preset["hidden"], experts=preset["num_experts"], router_mode=mode,
                                     cache_scope=scope, metrics_port=port, intake=case.intake), uuid.uuid4().hex[:8],
                          base.vocab_size or 1000)
    asyncio.run(ensure_topics(KafkaAccess.from_settings(run), pipeline_topics(run), run.replication_factor))
    if mode == "var":
        asyncio.run(publish_table_and_stats(run, tables[case.size], None))
    first, then = _split(list(rechunk(corpus, size)), total // size, int(rate * cfg.latency_s) // size)
    pool = WorkerPool(run, cfg.log_dir / run.app_id)
    try:
        # each worker serves its metrics on a port of its own (the first one's are read)
        started = [pool.start(f"router-{i}", settings=run.with_(metrics_port=port if i == 0 else free_port()))
                   for i in range(workers)]
        worker = started[0]
        if not asyncio.run(wait_for_group(KafkaAccess.from_settings(run), run.app_id, workers, 120)):
            raise worker.failure(f"the bench worker of case {case.shape} {case.size} {case.mode} did not start")
        def snapshot() -> dict[str, float]:
            try:
                return scrape(port) if case.mode != "passthrough" else {}
            except OSError as exc:
                raise worker.failure(f"cannot read the metrics of case {case.shape} {case.size} {case.mode} ({exc})")
        figures, phase = asyncio.run(_measure(run, first, then, rate, cfg.latency_s, snapshot,
                                             [w.process.pid for w in started]))
        for w in started:
            if not w.alive():
                raise w.failure(f"case {case.shape} {case.size} {case.mode} failed")
        metrics = snapshot()
    finally:
        pool.stop_all()
        asyncio.run(discard_run(run))
    batches = metrics.get("var_batch_size_count", 0.0)
    result: dict[str, object] = dict(figures)  # plus the entries below (of other types)
    result["redis_round_trips_per_batch"] = metrics.get("var_redis_round_trips_total", 0.0) / batches if batches else 0.0
    result["learned_share"] = metrics.get("var_learned_share", float("nan"))
    result["stage_us_per_token"] = stage_costs(phase)  # the throughput phase only
    return {"shape": case.shape, "size": case.size, "mode": case.mode, "intake": case.intake, "message_tokens": size,
            **result}


async def discard_run(run: Settings) -> None:
    """Delete a finished case's topics and Redis namespace: a bench leaves nothing behind on the
    user's broker (each case made five topics, 8 partitions apiece), and later cases do not run
    on a broker that grew by the earlier ones. A failure is logged, not raised: the case's
    figures (or its own error) matter more."""
    try:
        await delete_run_topics(KafkaAccess.from_settings(run), run)
        await drop_namespace(RedisAccess.from_settings(run), run.namespace)
    except (TopicError, RedisError, OSError) as exc:
        log.warning("could not remove the topics or Redis keys of run %s: %s", run.app_id, exc)


def build_tables(base: Settings, train: list[EventChunk]) -> dict:
    tables = {}
    for size, preset in PRESETS.items():
        s = base.with_(hidden=preset["hidden"], experts=preset["num_experts"])
        router = build_router(router_spec(s, s.vocab_size or 1000))
        stats = collect_statistics(router, iter_batches(train, s.batch_size), s.context_window, pair_cap=stats_pair_cap(s.pair_cap))
        tables[size] = build_table(stats, thresholds(s), s.top_k, router.router_id, 1)
    return tables


def run_bench(cfg: BenchConfig, settings: Settings, say: Callable[[str], None]) -> list[dict[str, object]]:
    """Every case of :data:`CASES` (synthetic vocabulary of 1000, 6 s session timeout); ``var bench
    pipeline`` (pipeline/cli/bench_cmd.py) prints them (:mod:`pipeline.bench.pipeline_report`)."""
    base = settings.with_(vocab_size=1000, session_timeout_s=6.0)
    train, corpus = _corpus(cfg, 1000, base.seed)
    tables = build_tables(base, train)
    results = []
    for case in CASES:
        say(f"{case.shape} {case.size} {case.mode} ...")
        results.append(run_case(case, base, cfg, tables, corpus))
    return results
