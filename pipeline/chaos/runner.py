"""Run one chaos scenario on real Kafka, real Redis and worker processes, and check it.

1. A run-scoped deployment (topics, consumer group, Redis namespace) on the run's own services;
   the offline table is published as a replay would.
2. The scenario's router workers (and stats worker) start as OS processes; the run waits until
   the group is stable.
3. The held-out corpus is produced (per-token or chunked; poison interleaved), outcomes are
   collected, and the scenario's faults fire when their share of the outcomes has arrived.
4. The checks of :mod:`pipeline.chaos.checks` run on everything that came back.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


from pipeline.corpus.realtext import record_text
from pipeline.engine.events import EventChunk
from pipeline.engine.records import encode_chunk
from pipeline.replay import Prepared, offline_phase
from pipeline.settings import Settings
from pipeline.sources import FileSource
from pipeline.stream.collector import Collected, collect
from pipeline.stream.kafka_access import KafkaAccess, kafka_access
from pipeline.stream.kafka_replay import scoped_settings
from pipeline.stream.producer import produce_messages, rechunk
from pipeline.stream.topics import ensure_topics, pipeline_topics, wait_for_group
from pipeline.stream.worker_pool import WorkerPool, WorkerProcess

from .checks import RunChecks, check_deadletters, check_outcomes, corpus_context_hashes
from .poison import Poison, interleave, poison_set
from .scenarios import Scenario, Step
from .services import ChaosServices

log = logging.getLogger(__name__)


@dataclass
class ChaosOptions:
    message_size: int = 1
    corpus: str | None = None  # a recorded corpus; default: the bundled plays, `streams` interleaved
    events: int | None = None  # at most this many held-out events (default: all)
    streams: int = 64
    partitions: int = 8
    timeout_s: float = 900.0
    idle_timeout_s: float = 150.0
    work_dir: Path = Path(".var/chaos")
    progress: bool = False
    seed: int = 0


@dataclass
class ChaosCorpus:
    prepared: Prepared
    chunks: list[EventChunk]
    name: str

    @property
    def events(self) -> int:
        return sum(len(c) for c in self.chunks)


def load_corpus(settings: Settings, opts: ChaosOptions) -> ChaosCorpus:
    """The offline phase on the corpus, and its held-out events (capped at ``opts.events``)."""
    path = opts.corpus
    if path is None:
        opts.work_dir.mkdir(parents=True, exist_ok=True)
        path = str(opts.work_dir / f"plays-{opts.streams}.jsonl.gz")
        if not Path(path).exists():
            record_text(path, max_open=opts.streams)
    prepared, rest = offline_phase(FileSource(path), settings)
    chunks, events = [], 0
    for chunk in rest:
        if opts.events is not None and events >= opts.events:
            break
        chunks.append(chunk)
        events += len(chunk)
    return ChaosCorpus(prepared, chunks, path)


@dataclass
class _Fleet:
    """The scenario's worker processes and the ones it killed or stopped on purpose."""

    pool: WorkerPool
    routers: int = 0
    stats: int = 0
    retired: set[str] = field(default_factory=set)
    fired: int = 0
    stuck: list[str] = field(default_factory=list)  # stopped gracefully? no: had to be killed

    def start_router(self) -> None:
        self.pool.start(f"router-{self.routers}")
        self.routers += 1

    def start_stats(self) -> None:
        self.pool.start(f"stats-{self.stats}", ("stats", "worker"))
        self.stats += 1

    def oldest(self, prefix: str) -> WorkerProcess:
        """The oldest live worker, retired: the scenario ends it on purpose."""
        worker = self.oldest_alive(prefix)
        self.retired.add(worker.name)
        return worker

    def oldest_alive(self, prefix: str) -> WorkerProcess:
        alive = [w for w in self.pool.workers if w.name.startswith(prefix) and w.alive()]
        if not alive:
            raise RuntimeError(f"no live {prefix} worker to act on")
        return alive[0]

    def deaths(self) -> list[str]:
        return [f"{w.name} (exit {w.process.returncode}, log {w.log_path})" for w in self.pool.workers
                if not w.alive() and w.name not in self.retired]


async def _act(step: Step, fleet: _Fleet, services: ChaosServices) -> None:
    log.warning("chaos step: %s", step)
    if step.action in ("start_router", "start_stats") and step.seconds:
        await asyncio.sleep(step.seconds)
    if step.action == "start_router":
        fleet.start_router()
    elif step.action == "start_stats":
        fleet.start_stats()
    elif step.action == "kill_router":
        await asyncio.to_thread(fleet.pool.kill, fleet.oldest("router"))
    elif step.action == "pause_router":
        await asyncio.to_thread(fleet.pool.pause, fleet.oldest_alive("router"), step.seconds)
    elif step.action == "kill_stats":
        await asyncio.to_thread(fleet.pool.kill, fleet.oldest("stats"))
    elif step.action == "stop_router":
        worker = fleet.oldest("router")
        if not await asyncio.to_thread(fleet.pool.stop, worker):
            fleet.stuck.append(f"{worker.name} did not stop within 30 s of SIGTERM (log {worker.log_path})")
    elif step.action == "restart_kafka":
        await asyncio.to_thread(services.restart_kafka, step.seconds)
    elif step.action == "kill_broker":
        await asyncio.to_thread(services.kill_broker, int(step.seconds))
    elif step.action == "restart_redis":
        await asyncio.to_thread(services.restart_redis, step.seconds)
    else:
        raise ValueError(f"unknown chaos action {step.action!r}")


async def _run_steps(steps: tuple[Step, ...], got: Collected, expected: int, fleet: _Fleet,
                     services: ChaosServices, done: asyncio.Event) -> None:
    for step in steps:
        while got.distinct < step.at * expected and not done.is_set():
            await asyncio.sleep(0.1)
        if done.is_set():
            return
        await _act(step, fleet, services)
        fleet.fired += not step.recovery


DeadLetters = list[tuple["bytes | None", bytes, "dict[str, bytes]"]]


async def read_all(bootstrap: KafkaAccess | str, topic: str, at_least: int, timeout_s: float) -> DeadLetters:
    """Every record of ``topic`` from the beginning: until ``at_least`` arrived and the topic is
    quiet for a second, or ``timeout_s``."""
    consumer = kafka_access(bootstrap).consumer(topic, group_id=None, auto_offset_reset="earliest",
                                                enable_auto_commit=False)
    await consumer.start()
    out: DeadLetters = []
    deadline, quiet_since = time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            records = [r for rs in batches.values() for r in rs]
            out += [(r.key, r.value, dict(r.headers or ())) for r in records]
            if records:
                quiet_since = time.monotonic()
            elif len(out) >= at_least and time.monotonic() - quiet_since > 1.0:
                break
    finally:
        await consumer.stop()
    return out


def _expected(corpus: ChaosCorpus, poison: list[Poison], window: int) -> dict[tuple[str, int], int]:
    anchors = [p.anchor for p in poison if p.anchor is not None]
    return corpus_context_hashes([*corpus.chunks, *anchors], window)


@dataclass
class _Returned:
    """What a run's event loop hands back (kept out of the loop's task result: asyncio.run's
    SIGINT handling can repr the previous main task, and a repr of every outcome takes minutes)."""

    got: Collected = field(default_factory=Collected)
    deadletters: DeadLetters = field(default_factory=list)
    complete: bool = False


async def _drive(scenario: Scenario, run: Settings, services: ChaosServices, fleet: _Fleet,
                 items: list, expected: int, poison: int, opts: ChaosOptions, out: _Returned) -> None:
    """Wait for the group, produce, collect, fire the faults; then read the dead letters."""
    await wait_for_group(KafkaAccess.from_settings(run), run.app_id, scenario.routers, 120.0)
    got, done = out.got, asyncio.Event()
    collector = asyncio.create_task(collect(KafkaAccess.from_settings(run), run.topic_outcomes, expected, None,
                                            opts.idle_timeout_s, opts.progress, done, got))
    faults = asyncio.create_task(_run_steps(scenario.steps, got, expected, fleet, services, done))
    producer = asyncio.create_task(produce_messages(items, KafkaAccess.from_settings(run), run.topic_tokens,
                                                    run.topic_deadletter))
    try:
        await asyncio.wait_for(asyncio.shield(collector), opts.timeout_s)
    except asyncio.TimeoutError:
        log.error("chaos run %s: deadline of %.0f s passed", scenario.name, opts.timeout_s)
    finally:
        done.set()
    await collector
    await faults
    await producer
    out.complete = got.distinct >= expected
    out.deadletters = await read_all(KafkaAccess.from_settings(run), run.topic_deadletter, poison, 60.0)


def run_scenario(scenario: Scenario, base: Settings, services: ChaosServices, corpus: ChaosCorpus,
                 opts: ChaosOptions) -> RunChecks:
    """One run of ``scenario`` (see the module docstring); returns its checks."""
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    run = scoped_settings(base.with_(kafka_bootstrap=services.bootstrap, redis_url=services.redis_url,
                                     partitions=opts.partitions, replication_factor=services.replication_factor),
                          run_id, corpus.prepared.vocab_size)
    asyncio.run(ensure_topics(KafkaAccess.from_settings(run), pipeline_topics(run), run.replication_factor))
    from pipeline.table_sets import publish_table_and_stats

    asyncio.run(publish_table_and_stats(run, corpus.prepared.table, corpus.prepared.stats))
    poison = poison_set(scenario.poison, corpus.prepared.vocab_size, opts.seed) if scenario.poison else []
    good: list[tuple[tuple[bytes | None, bytes], int]] = [((c.stream.encode(), encode_chunk(c)), len(c))
                                                         for c in rechunk(corpus.chunks, opts.message_size)]
    expected = _expected(corpus, poison, run.context_window)
    log_dir = opts.work_dir / "logs" / f"{scenario.name}-{opts.message_size}-{run_id}"
    fleet = _Fleet(WorkerPool(run, log_dir))
    checks = RunChecks(scenario.name, opts.message_size, log_dir=str(log_dir))
    try:
        for _ in range(scenario.routers):
            fleet.start_router()
        if scenario.stats_worker:
            fleet.start_stats()
        out = _Returned()
        asyncio.run(_drive(scenario, run, services, fleet, interleave(good, poison, opts.seed), len(expected),
                           len(poison), opts, out))
        checks.unexpected_deaths = fleet.deaths() + fleet.stuck
        checks.faults_planned = sum(not step.recovery for step in scenario.steps)
        checks.faults_fired = fleet.fired
    finally:
        fleet.pool.stop_all()
    checks.ended_by_itself = out.complete
    check_outcomes(checks, expected, out.got.all_parts, out.got.seen)
    checks.outcomes_out, checks.duplicates = out.got.distinct, out.got.duplicates
    check_deadletters(checks, poison, out.deadletters)
    checks.seconds = time.perf_counter() - started
    return checks
