"""The stats refresher worker: outcomes topic -> statistics -> new fast-path table versions in Redis.

The logic lives in :mod:`pipeline.engine.refresher` and :mod:`pipeline.engine.layered_refresher`
(no I/O); this module is its Kafka/Redis edge. It learns one fast-path table per MoE layer the
router workers route (every layer of a model, the one layer of a synthetic router), each from
that layer's decisions in the outcomes, and publishes them together as one table set (one
version number, one atomic step).

Why a plain aiokafka consumer rather than a Faust agent:

* The statistics are global -- one table is built from all traffic -- so a single worker must
  read *every* partition of the outcomes topic. It assigns them to itself (``assign``) instead of
  joining a group, so there is no rebalance, and a restarted worker starts reading at once
  instead of waiting for the dead one's session to expire. Run one per deployment.
* Counting each outcome exactly once across restarts needs the read position stored *with* the
  statistics (and with the live-audit counts: per token, and per table version and layer, which
  ``var stats show`` reads from the snapshot). The snapshot in Redis (``RedisKeys.stats_snapshot``) holds the statistics and the
  next offset of every outcome partition they include; on start the worker restores it and seeks
  to those offsets. Faust commits offsets on its own schedule, which cannot be tied to a Redis
  value. The consumer group ``stats_group`` is used only to commit the same offsets to Kafka, so
  the worker's lag shows up in the usual tools.

Each loop: ``getmany`` (at most ``take_max`` messages, ``take_within_s`` wait) -> decode and check
every message (malformed or foreign ones are skipped with a logged reason and counted, never
raised) -> one vectorised update of the statistics -> when due: build the table, publish it
(``RedisRoutingStore.publish_tables``: allocate a version with INCR, then one script writes
every layer's ``v{n}:l{layer}``, moves the pointer only forward and gives the superseded
version's layers a grace TTL), save the snapshot, commit the offsets. A crash
between publishing and saving the snapshot only means the outcomes since the previous snapshot
are read and counted again into that older snapshot (never twice into the same statistics), and
the next table gets a higher version. On SIGTERM the snapshot is saved before exiting.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from pipeline.engine.layered_refresher import LayeredRefresher
from pipeline.engine.refresher import Clock, Refresh, SnapshotError
from pipeline.errors import VARError
from pipeline.observability import configure_logging, serve_metrics
from pipeline.outcomes import OutcomeError, Outcomes, decode_outcome
from pipeline.settings import Settings
from pipeline.stats_metrics import StatsMetrics
from pipeline.stores.redis_store import RedisRoutingStore
from pipeline.stores.redis_access import RedisAccess
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.topics import TopicError, partition_ids

from pipeline.table_sets import build_refresher, model_prior, routing_store, seed_statistics

log = logging.getLogger(__name__)
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
SKIP_LOG_LIMIT = 20  # skipped messages logged one by one per refresh period; the rest are summed up


class StatsWorkerError(VARError, RuntimeError):
    """The worker cannot start or resume (an unreadable snapshot, a missing topic); one-line message."""


@dataclass
class SkipLog:
    """Logs why messages were skipped -- one by one up to a limit, then a count."""

    limit: int = SKIP_LOG_LIMIT
    logged: int = 0
    suppressed: int = 0

    def skip(self, partition: int, offset: int, reason: str) -> None:
        if self.logged < self.limit:
            self.logged += 1
            log.warning("skipping outcome p%d@%d: %s", partition, offset, reason,
                        extra={"partition": partition, "offset": offset, "reason": reason})
        else:
            self.suppressed += 1

    def flush(self) -> None:
        if self.suppressed:
            log.warning("skipped %d more outcomes (reasons not logged)", self.suppressed)
        self.logged = self.suppressed = 0


@dataclass
class StatsWorker:
    """One refresher bound to a consumer, a Redis client and a routing store."""

    settings: Settings
    refresher: LayeredRefresher
    consumer: AIOKafkaConsumer
    redis: aioredis.Redis
    metrics: StatsMetrics
    store: RedisRoutingStore = field(init=False)
    skips: SkipLog = field(default_factory=SkipLog)

    def __post_init__(self) -> None:
        self.store = routing_store(self.settings, self.refresher.router_ids, client=self.redis)
        self.keys = self.store.keys

    async def start(self) -> None:
        """Restore the snapshot (if any) and position the consumer on every outcome partition."""
        try:
            raw: Any = await self.redis.get(self.keys.stats_snapshot)  # bytes | None (the client does not decode)
        except _REDIS_ERRORS as exc:
            raise StatsWorkerError(f"cannot read the stats snapshot from {RedisAccess.from_settings(self.settings).display}: {exc}") from None
        if raw is not None:
            try:
                self.refresher.restore(raw)
            except SnapshotError as exc:
                raise StatsWorkerError(f"cannot resume from {self.keys.stats_snapshot}: {exc} "
                                       "(delete the key to start cold)") from None
        prior = model_prior(self.settings) if raw is None else None
        if prior is not None:  # cold start of a model's table set: the training text's statistics
            seed_statistics(self.refresher, prior)
        topic = self.settings.topic_outcomes
        partitions = await topic_partitions(KafkaAccess.from_settings(self.settings), topic)
        await self.consumer.start()
        tps = [TopicPartition(topic, p) for p in partitions]
        self.consumer.assign(tps)
        for tp in tps:
            if tp.partition in self.refresher.offsets:
                self.consumer.seek(tp, self.refresher.offsets[tp.partition])
            else:
                await self.consumer.seek_to_beginning(tp)
        c = self.refresher.counters
        log.info("stats worker on %s (%d partitions), router %s (%d layers): %s at %s", topic, len(tps),
                 self.keys.router_id, len(self.refresher),
                 f"resumed {c.outcomes:,} outcomes, last table v{c.last_version}" if raw else
                 "cold start" + (" from the model's training statistics" if prior else ""),
                 self.refresher.offsets or "the beginning")
        if prior is not None:
            await self.refresh()  # the first table set at once, before any outcome

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then save the snapshot."""
        try:
            while not stop.is_set():
                await self.step()
        finally:
            await self.save()

    async def step(self) -> None:
        s = self.settings
        batches = await self.consumer.getmany(timeout_ms=max(1, int(s.take_within_s * 1000)), max_records=s.take_max)
        self.ingest(batches)
        if self.refresher.due():
            await self.refresh()

    def ingest(self, batches: dict[Any, list[Any]]) -> int:
        """Decode, check and count one fetched batch; returns the outcome rows counted."""
        parts: list[Outcomes] = []
        for tp, records in batches.items():
            for rec in records:
                part = self._decode(rec.value, tp.partition, rec.offset)
                if part is not None:
                    parts.append(part)
        merged = Outcomes.concat(parts)
        learned = sum(self.refresher.observe(merged)) if parts else 0
        self.refresher.advance({tp.partition: records[-1].offset + 1 for tp, records in batches.items() if records})
        self.metrics.outcomes.inc(len(merged))
        self.metrics.learned.inc(learned)
        return len(merged)

    def _decode(self, raw: bytes | None, partition: int, offset: int) -> Outcomes | None:
        try:
            part = decode_outcome(raw or b"")
        except OutcomeError as exc:
            self._skip(partition, offset, "malformed", str(exc))
            return None
        reason = self.refresher.check(part)
        if reason is not None:
            self._skip(partition, offset, "rejected", reason)
            return None
        return part

    def _skip(self, partition: int, offset: int, kind: str, reason: str) -> None:
        self.metrics.skip(kind)
        self.skips.skip(partition, offset, reason)

    async def refresh(self) -> int | None:
        """Build and publish the next table set (every layer), then save the snapshot; None if
        publishing failed."""
        refreshes = self.refresher.build()
        try:
            version = await self.store.publish_tables([r.table for r in refreshes])
        except _REDIS_ERRORS as exc:
            self.metrics.publish_errors.inc()
            self.refresher.postpone()
            log.error("cannot publish a table (%s: %s); retrying in %.0f s", type(exc).__name__, exc,
                      self.settings.refresh_interval_s)
            return None
        self.refresher.published(refreshes, version)
        self._record_publication(refreshes, version)
        await self.save()
        return version

    def _record_publication(self, refreshes: list[Refresh], version: int) -> None:
        """Metrics (the table size summed over layers, the highest predicted learned share) and
        one log line per layer."""
        m = self.metrics
        m.tables.inc()
        m.table_version.set(version)
        m.table_size.set(sum(r.table.size for r in refreshes))
        m.predicted_share.set(max(r.prediction.learned_share for r in refreshes))
        m.last_refresh.set(time.time())
        self.skips.flush()
        for layer, (refresh, rows) in enumerate(zip(refreshes, self.refresher.report())):
            table, t = refresh.table, refresh.table.thresholds
            last = rows[-1] if rows else {}
            where = f" layer {layer}" if len(refreshes) > 1 else ""
            log.info("published table v%d%s: %d fast-path tokens (frequency > %.4g, entropy < %.4g%s), %d pair "
                     "entries (pair entropy < %.4g), %d tokens dropped for their audits; predicted learned share "
                     "%.1f%%; last observed (v%s): learned %.1f%%, not fast %.1f%%, predicted %s",
                     version, where, table.size, t.min_frequency, t.max_entropy, ", adaptive" if refresh.choice else "",
                     len(table.pair_entries), t.pair_max_entropy, table.meta.get("audit_banned", 0),
                     100 * refresh.prediction.learned_share, last.get("version"),
                     100 * (last.get("observed_learned_share") or 0), 100 * (last.get("observed_non_fast_share") or 0),
                     _pct(last.get("predicted_learned_share")),
                     extra={"table_version": version, "layer": layer, "fast_tokens": table.size,
                            "pair_entries": len(table.pair_entries), "report": last})

    async def save(self) -> None:
        """Store the snapshot, then commit the same offsets to Kafka (for lag monitoring)."""
        try:
            await self.redis.set(self.keys.stats_snapshot, self.refresher.snapshot())
        except _REDIS_ERRORS as exc:
            log.error("cannot save the stats snapshot (%s: %s); will retry at the next refresh", type(exc).__name__, exc)
            return
        self.metrics.snapshots.inc()
        offsets = {TopicPartition(self.settings.topic_outcomes, p): o for p, o in self.refresher.offsets.items()}
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:
                log.warning("cannot commit offsets to Kafka (%s); the snapshot has them", exc)

    async def close(self) -> None:
        await self.consumer.stop()
        await self.redis.aclose()


async def topic_partitions(bootstrap: KafkaAccess | str, topic: str) -> list[int]:
    """Partition ids of ``topic`` (raises :class:`StatsWorkerError` if it does not exist)."""
    try:
        return await partition_ids(bootstrap, topic)
    except TopicError as exc:
        raise StatsWorkerError(str(exc)) from None


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def create_worker(settings: Settings, name: str, clock: Clock = time.monotonic) -> StatsWorker:
    consumer = KafkaAccess.from_settings(settings).consumer(group_id=settings.stats_group, enable_auto_commit=False,
                                                            auto_offset_reset="earliest",
                                                            fetch_max_bytes=16 * 1024 * 1024)
    client = RedisAccess.from_settings(settings).client(max(5.0, settings.redis_timeout_s))
    return StatsWorker(settings, build_refresher(settings, clock), consumer, client, StatsMetrics(name))


async def serve(settings: Settings, name: str, stop: asyncio.Event | None = None) -> StatsWorker:
    """Run a stats worker until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    worker = create_worker(settings, name)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    serve_metrics(settings.metrics_port, worker.metrics.registry, settings.metrics_host)
    try:
        await worker.start()
        await worker.run(stop)
    finally:
        await worker.close()
    return worker


def run_stats_worker(settings: Settings, name: str) -> None:
    """Entry point of ``var stats worker``."""
    configure_logging(settings.log_level, settings.log_format, name)
    asyncio.run(serve(settings, name))


