"""``var replay --via kafka``: the embedded replay's job, done by the streaming system.

1. Offline phase in-process (the same code as the embedded replay) and publish the table to
   Redis -- or publish nothing (``cold``) and let the stats worker build tables as it learns.
2. Unless ``attach``, everything is scoped to a fresh run id: topics, consumer group and Redis
   namespace, so a replay never sees another run's windows, cache or outcomes.
3. Start ``workers`` router processes (and optionally the stats worker), produce the held-out
   events (per-token or chunked messages), consume every outcome back.
4. Report like the embedded replay, plus completeness; the exact reference decisions are
   computed in-process from the same events.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from pipeline.assembly import is_model
from pipeline.engine.context import corpus_context_hashes
from pipeline.engine.events import EventChunk, TIER_LABELS, Tier
from pipeline.engine.table import RoutingTable
from pipeline.outcomes import Outcomes
from pipeline.quality import QualityAccumulator
from pipeline.replay import Prepared, ReplayError, offline_phase
from pipeline.report import ReplayReport
from pipeline.settings import Settings, redact_url
from pipeline.sources import CorpusSource
from pipeline.stores.redis_access import RedisAccess
from pipeline.stores.registry import router_mismatch, running_workers
from pipeline.table_sets import publish_table_and_stats

from .collector import Collected, collect
from .continuity import KafkaOffsets
from .replay_checks import align, budget_ledger, completeness_section, context_mismatches, exact_reference
from pipeline.timeline import outcome_timeline
from .kafka_access import KafkaAccess
from .producer import produce_chunks, rechunk
from .published import load_published, wait_for_tables
from .topics import ensure_topics, pipeline_topics, wait_for_group
from .worker_pool import WorkerPool

log = logging.getLogger(__name__)


# The collector's patience: longer than a router worker's Kafka request timeout (90 s, see
# ``app.faust_settings``), since a worker whose fetch or send hangs waits that long before it
# reconnects and retries -- a stall of that length delays outcomes, it does not lose them.
IDLE_TIMEOUT_S = 150.0


@dataclass
class KafkaReplayOptions:
    workers: int = 1
    message_size: int = 1
    attach: bool = False
    cold: bool = False
    stats_worker: bool = False
    rate: float | None = None
    idle_timeout_s: float = IDLE_TIMEOUT_S
    log_dir: Path = Path(".var/logs")
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


def scoped_settings(settings: Settings, run_id: str, vocab_size: int) -> Settings:
    """Run-scoped topics, consumer group and Redis namespace."""
    return settings.with_(
        topic_tokens=f"{settings.topic_tokens}-{run_id}", topic_outcomes=f"{settings.topic_outcomes}-{run_id}",
        topic_deadletter=f"{settings.topic_deadletter}-{run_id}", app_id=f"{settings.app_id}-{run_id}",
        topic_certificates=f"{settings.topic_certificates}-{run_id}",
        namespace=f"{settings.namespace}-{run_id}", vocab_size=vocab_size)


async def _watch_workers(pool: WorkerPool, stop: asyncio.Event) -> None:
    """Stop collecting as soon as every router worker has exited (a crash, not a hang)."""
    routers = {w.name for w in pool.workers if w.name.startswith("router")}
    while not stop.is_set():
        if routers and routers <= {w.name for w in pool.dead()}:
            stop.set()
            return
        await asyncio.sleep(0.5)


async def _produce_and_collect(chunks: list[EventChunk], settings: Settings, opts: KafkaReplayOptions,
                               pool: WorkerPool, progress: bool, got: Collected) -> float:
    """Produce and collect into ``got``; returns the start time. ``got`` is filled in place, not
    returned: asyncio.run's SIGINT handling may repr the finished main task later, and a repr of
    every outcome array takes minutes."""
    expected = sum(len(c) for c in chunks)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_workers(pool, stop))
    start = time.perf_counter()
    # Attached replays share topics with earlier runs: their streams carry the run id, and only
    # those outcomes count.
    collector = asyncio.create_task(collect(KafkaAccess.from_settings(settings), settings.topic_outcomes, expected,
                                            settings.topic_deadletter, opts.idle_timeout_s, progress, stop, got))
    await produce_chunks(rechunk(chunks, opts.message_size), KafkaAccess.from_settings(settings), settings.topic_tokens,
                         opts.rate, progress=False, total=expected, deadletter_topic=settings.topic_deadletter)
    got = await collector
    stop.set()
    await watcher
    return start


def _check_workers(pool: WorkerPool) -> None:
    crashed = [w for w in pool.workers if not w.alive() and w.process.returncode not in (0, -15)]
    if crashed and all(not w.alive() for w in pool.workers if w.name.startswith("router")):
        raise crashed[0].failure("the replay's router workers stopped")


async def _router_frontier(run: Settings) -> dict[int, tuple[int, int]]:
    """Per token partition: the router group's committed offset and the log end."""
    offsets = KafkaOffsets(KafkaAccess.from_settings(run), run.app_id, run.topic_tokens)
    try:
        partitions = list(range(run.partitions))
        starts, ends = await offsets.start(partitions), await offsets.end(partitions)
        return {p: (starts[p], ends[p]) for p in partitions}
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        log.warning("cannot read the router group's offsets: %r", exc)
        return {}
    finally:
        await offsets.close()


def route_through_pipeline(chunks: list[EventChunk], run: Settings, opts: KafkaReplayOptions, progress: bool,
                           wait_for_group_s: float = 0.0) -> tuple[Collected, float, list[str]]:
    """Start ``opts.workers`` router processes (and the stats worker if asked) with the run's
    settings, produce ``chunks``, collect every outcome back, stop the workers. Returns (what was
    collected, the start time, one line per worker that had exited before the end). Raises
    :class:`~pipeline.stream.worker_pool.WorkerFailed` when every router worker crashed.

    ``wait_for_group_s`` > 0: first wait (that long at most) until every router is in the stable
    consumer group, so that all of them share the work; producing starts either way."""
    pool = WorkerPool(run, opts.log_dir / opts.run_id)
    try:
        pool.start_routers(opts.workers)
        if wait_for_group_s > 0 and opts.workers and not asyncio.run(
                wait_for_group(KafkaAccess.from_settings(run), run.app_id, opts.workers, wait_for_group_s)):
            log.warning("not all %d router workers joined group %s within %.0f s; producing anyway",
                        opts.workers, run.app_id, wait_for_group_s)
        if opts.stats_worker:
            pool.start("stats", ("stats", "worker"))
            if opts.cold and is_model(run):  # its first table set comes from the model's training text
                wait_for_tables(run, pool)
        got = Collected(stream_prefix=f"{opts.run_id}/" if opts.attach else "")
        start = asyncio.run(_produce_and_collect(chunks, run, opts, pool, progress, got))
        if got.unread is not None:  # timed out: say whether the routers or the collector stopped
            got.unrouted = asyncio.run(_router_frontier(run))
            log.warning("token partition: committed/end %s", got.unrouted)
        _check_workers(pool)
        exits = [f"{w.name} (exit {w.process.returncode}, log {w.log_path})" for w in pool.workers if not w.alive()]
    finally:
        pool.stop_all()
    return got, start, exits


def _held_out(source: CorpusSource, settings: Settings, opts: KafkaReplayOptions) -> tuple[Prepared, list[EventChunk]]:
    prepared, rest = offline_phase(source, settings)
    if opts.cold:
        spec = prepared.router.spec
        prepared.table = RoutingTable.empty(spec.vocab_size, spec.num_experts, spec.top_k, prepared.router.router_id)
        prepared.table_source = "cold start (empty table)"
    return prepared, list(rest)


def run_kafka_replay(source: CorpusSource, settings: Settings, opts: KafkaReplayOptions,
                     progress: bool = False) -> tuple[ReplayReport, Collected]:
    """Run the replay through Kafka, Faust workers and Redis; see the module docstring."""
    wall_start = time.perf_counter()
    prepared, chunks = _held_out(source, settings, opts)
    if opts.attach:
        chunks = [EventChunk(f"{opts.run_id}/{c.stream}", c.first_seq, c.tokens, c.offset) for c in chunks]
    run = settings.with_(vocab_size=prepared.vocab_size) if opts.attach else \
        scoped_settings(settings, opts.run_id, prepared.vocab_size)
    asyncio.run(ensure_topics(KafkaAccess.from_settings(run), pipeline_topics(run), run.replication_factor))
    if opts.attach:  # say up front when the running workers route with another router
        try:
            workers = asyncio.run(running_workers(RedisAccess.from_settings(run), run.namespace, run.topic_tokens))
        except (RedisError, OSError) as exc:
            raise ReplayError(f"cannot reach Redis at {redact_url(run.redis_url)} to find the running workers ({exc})") from None
        problem = router_mismatch(workers, prepared.router.router_id)
        if problem:
            raise ReplayError(problem)
    if not opts.cold:
        prepared.table.version, _ = asyncio.run(publish_table_and_stats(run, prepared.table, prepared.stats))
    got, start, exits = route_through_pipeline(chunks, run, opts, progress)
    report = build_kafka_report(source, run, prepared, chunks, got, start, wall_start, opts)
    assert report.completeness is not None
    report.completeness["worker_exits"] = exits
    report.completeness["complete"] = report.completeness["complete"] and not exits
    return report, got


def _final_table(settings: Settings, prepared: Prepared, versions: list[int]) -> dict[str, object]:
    """The newest table the routers used (read back from Redis when the stats worker made it)."""
    table = prepared.table
    if versions and max(versions) != table.version:
        loaded = asyncio.run(load_published(settings, [table.router_id], max(versions)))
        table = loaded[0] if loaded else table
    source = prepared.table_source if table is prepared.table else f"stats worker ({len(versions)} versions used)"
    return {"version": max(versions) if versions else table.version, "size": table.size, "source": source,
            "versions_seen": versions, "thresholds": table.thresholds.to_dict()}


def build_kafka_report(source: CorpusSource, settings: Settings, prepared: Prepared, chunks: list[EventChunk],
                       got: Collected, start: float, wall_start: float, opts: KafkaReplayOptions) -> ReplayReport:
    outcomes = got.outcomes()
    streams, seqs, tokens, exact_e, exact_w = exact_reference(prepared, chunks, settings)
    rows = align(outcomes, streams, seqs)
    have = rows >= 0
    quality = QualityAccumulator(prepared.vocab_size, settings.experts, settings.seed, settings.quality_sample)
    if have.any():
        r = rows[have]
        quality.add([s for s, h in zip(streams, have) if h], tokens[have], outcomes.layers[0].experts[r],
                    outcomes.layers[0].weights[r], exact_e[have], exact_w[have])
    max_window, blocks, sizes = budget_ledger(Outcomes.concat(got.all_parts), settings.budget_window)
    first = outcomes.layers[0] if outcomes.layers else None
    tiers = first.tiers if first is not None else np.zeros(0, np.int8)
    counts = np.bincount(tiers.astype(np.int64), minlength=len(TIER_LABELS))
    wrong = context_mismatches(corpus_context_hashes(chunks, settings.context_window), got.all_parts)
    versions = sorted(set(first.table_versions.tolist())) if first is not None else []
    return ReplayReport(
        source=source.name, mode=f"kafka ({opts.workers} worker{'s' if opts.workers != 1 else ''}, "
                                 f"{opts.message_size} token{'s' if opts.message_size != 1 else ''}/message)",
        router={"id": prepared.router.router_id, "kind": prepared.router.spec.kind, "device": settings.device},
        table=_final_table(settings, prepared, versions),
        tokens=len(outcomes), train_tokens=prepared.train_tokens,
        tiers={label: int(counts[i]) for i, label in enumerate(TIER_LABELS)},
        cache_lookups=len(outcomes) if settings.cache_scope == "all" else int((tiers != Tier.FAST).sum()),
        learned_calls=int(counts[Tier.LEARNED]),
        budget=settings.budget, budget_window=settings.budget_window, governor=settings.governor,
        max_window_learned=max_window, window_learned=blocks, window_sizes=sizes, quality=quality.result(),
        timeline=outcome_timeline(outcomes, settings.batch_size),
        routing_s=(got.last_at or start) - (got.first_at or start), wall_s=time.perf_counter() - wall_start,
        completeness=completeness_section(got, have, wrong, opts.run_id),
    )
