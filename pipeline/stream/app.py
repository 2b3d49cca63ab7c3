"""The Faust application: topics, the per-stream window table and the router agent.

* ``{topic_tokens}`` -- token events, key = stream id (one stream stays on one partition).
* ``{topic_outcomes}`` -- routing outcomes (:mod:`pipeline.outcomes`), key = stream id.
* ``{topic_deadletter}`` -- rejected messages: original bytes, reason in headers.
* Table ``windows`` -- stream id -> ``[last_seq, last_offset, *last W-1 tokens]``, backed by a
  changelog topic, so a worker that takes over a partition continues every window exactly.
  The table uses the key partitioner (``use_partitioner=True``) with raw keys: a window lives on
  the same partition number as its stream's token messages.

The agent consumes micro-batches (``take_events``), routes each through
:class:`~pipeline.stream.processor.RouterProcessor`, waits until its outcomes and dead letters
are acknowledged by the broker, and only then writes each touched stream's window once. If a
worker dies after the outcomes but before the window reached the changelog, the redelivered
messages are routed again (duplicates, counted by the replay); if the window made it, they are
recognised by offset and skipped.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP

from pipeline.engine.context import StreamWindow
from pipeline.engine.engine import VAREngine
from pipeline.engine.events import Tier
from pipeline.engine.table import RoutingTable
from pipeline.replay import engine_config, router_spec
from pipeline.engine.routers import build_router
from pipeline.observability import RouterMetrics, configure_logging, serve_metrics
from pipeline.settings import Settings
from pipeline.stores.keys import RedisKeys
from pipeline.stores.redis_store import RedisRoutingStore

from .continuity import KafkaOffsets, OffsetContinuity
from .processor import BatchOutput, DeadLetter, InMessage, RouterProcessor

log = logging.getLogger(__name__)


def worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


def require_vocab(settings: Settings) -> int:
    if settings.vocab_size is None:
        from pipeline.cli.common import UserError

        raise UserError("router workers need the vocabulary size: set VAR_VOCAB_SIZE or --vocab-size")
    return settings.vocab_size


def broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust app settings for a router worker (one broker or many; memory store)."""
    return {
        "broker": broker_url(settings.kafka_bootstrap),
        "store": "memory://",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": 1,
        "table_standby_replicas": 0,
        "web_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": min(3.0, settings.session_timeout_s / 4),
        "broker_rebalance_timeout": max(20.0, 2 * settings.session_timeout_s),
        "broker_request_timeout": max(90.0, settings.session_timeout_s * 2),
        "broker_commit_interval": 1.0,
        "producer_linger": 0.005,
        "datadir": tempfile.mkdtemp(prefix="var-worker-"),
    }


@dataclass
class RouterApp:
    """The Faust app plus the router state it drives."""

    app: faust.App
    processor: RouterProcessor
    store: RedisRoutingStore
    metrics: RouterMetrics


def build_processor(settings: Settings, name: str) -> tuple[RouterProcessor, RedisRoutingStore]:
    router = build_router(router_spec(settings, require_vocab(settings)), settings.device)
    config = engine_config(settings)
    spec = router.spec
    engine = VAREngine(router, RoutingTable.empty(spec.vocab_size, spec.num_experts, spec.top_k, router.router_id),
                       config)
    store = RedisRoutingStore(settings.redis_url, RedisKeys(settings.namespace, router.router_id),
                              config.cache.ttl_s, config.layer, settings.redis_timeout_s)
    # Outcomes name the worker *process* (name/incarnation): a restarted worker starts its governor
    # positions at 0 again, and the budget check must not mix the two runs.
    incarnation = f"{name}/{uuid.uuid4().hex[:6]}"
    return RouterProcessor(engine, store, incarnation, learned_only=settings.router_mode == "learned"), store


def create_app(settings: Settings) -> RouterApp:
    """Build the router worker's Faust app (not started)."""
    name = worker_name(settings)
    processor, store = build_processor(settings, name)
    app = faust.App(settings.app_id, **faust_settings(settings))
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    tokens = app.topic(settings.topic_tokens, partitions=settings.partitions, **raw)
    outcomes = app.topic(settings.topic_outcomes, **raw)
    deadletter = app.topic(settings.topic_deadletter, **raw)
    # key_type=bytes makes Faust use the raw codec for keys (the changelog key == the message key);
    # values are JSON lists.
    windows = app.Table("windows", default=None, partitions=settings.partitions, key_type=bytes,
                        use_partitioner=True)
    metrics = RouterMetrics(name)
    offsets = KafkaOffsets(settings.kafka_bootstrap, settings.app_id, settings.topic_tokens)
    continuity = OffsetContinuity(offsets.start, offsets.end)

    def lookup(stream: str) -> StreamWindow | None:
        value = windows.get(stream.encode())
        return StreamWindow.from_list(value) if value is not None else None

    async def publish(out: BatchOutput) -> None:
        futures = [await outcomes.send(key=k, value=v) for k, v in out.outcomes]
        futures += [await deadletter.send(key=d.key, value=d.value, headers=d.headers(settings.topic_tokens))
                    for d in out.deadletters]
        await gather_sends(futures)

    async def seek(seeks: dict[int, int]) -> None:
        for partition, offset in seeks.items():
            await app.consumer.seek(TP(settings.topic_tokens, partition), offset)

    @app.timer(interval=1.0)
    async def watch_for_stalls() -> None:
        if app.rebalancing or not app.flow_control.is_active():
            return
        continuity.observe_generation(app.consumer_generation_id)
        assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_tokens)
        await seek(await continuity.stalls(assigned))
        for partition, lag in continuity.lag.items():
            metrics.consumer_lag.labels(worker=name, partition=str(partition)).set(lag)

    @app.agent(tokens, name="router")
    async def route(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.take_max, within=settings.take_within_s):
            generation = app.consumer_generation_id
            continuity.observe_generation(generation)
            messages, seeks = await continuity.admit(current_messages(events, generation))
            await seek(seeks)
            if not messages:
                continue
            if settings.router_mode == "passthrough":
                await gather_sends([await outcomes.send(key=m.key, value=m.value) for m in messages])
                continue
            started = time.perf_counter()
            try:
                out = await processor.process(messages, lookup)
            except Exception as exc:  # a bug must not kill the agent or lose the batch silently
                log.exception("routing a batch of %d messages failed; dead-lettering it", len(messages))
                out = BatchOutput(deadletters=[DeadLetter(m.key, m.value, f"internal error: {exc!r}", m.partition,
                                                          m.offset) for m in messages])
            await publish(out)
            for stream_id, window in out.windows.items():
                windows[stream_id.encode()] = window.to_list()
            try:
                record_batch(metrics, processor, out, len(messages), time.perf_counter() - started, continuity.gaps)
            except Exception:  # metrics are never worth a routing failure
                log.exception("updating metrics failed")

    return RouterApp(app, processor, store, metrics)


async def gather_sends(futures: list) -> None:
    """Wait until the broker acknowledged every send."""
    if futures:
        await asyncio.gather(*futures)


def record_batch(metrics: RouterMetrics, processor: RouterProcessor, out: BatchOutput, messages: int,
                 seconds: float, offset_gaps: int) -> None:
    """Update the worker's metrics after a routed batch (counters follow the engine's totals)."""
    engine, store = processor.engine, processor.store
    metrics.batch_size.observe(messages)
    metrics.latency.observe(seconds)
    if out.result is not None:
        for tier, count in out.result.decisions.tier_counts().items():
            metrics.tier(tier).inc(count)
    c = engine.counters
    if c.decisions:
        metrics.learned_share.set(c.tiers[Tier.LEARNED] / c.decisions)
    if c.cache_lookups:
        metrics.cache_hit_rate.set(c.cache_hits / c.cache_lookups)
    metrics.window_max.set(engine.ledger.max_window_fraction)
    metrics.table_version.set(engine.table.version)
    metrics.deadletters.inc(len(out.deadletters))
    metrics.redelivered.inc(out.redelivered)
    metrics.observe_totals(getattr(store, "round_trips", 0), getattr(store, "degraded", 0), offset_gaps)
    log.debug("batch of %d messages: %d routed, %d dead letters, %d redelivered", messages, out.routed,
              len(out.deadletters), out.redelivered, extra={"batch_messages": messages, "table_version": engine.table.version})


def current_messages(events: list, generation: int | None) -> list[InMessage]:
    """The batch's messages in (partition, offset) order, without stale or repeated ones.

    Events fetched before a rebalance (an older consumer generation) are dropped: after the
    rebalance Faust seeks back to the committed offsets and fetches them again, and routing the
    stale copies first would advance windows past events not yet routed.
    """
    seen: set[tuple[int, int]] = set()
    fresh = []
    for event in events:
        msg = event.message
        if generation is not None and msg.generation_id not in (None, generation):
            log.info("dropping stale message p%s@%s (generation %s, now %s)", msg.partition, msg.offset,
                     msg.generation_id, generation)
            continue
        if (msg.partition, msg.offset) not in seen:
            seen.add((msg.partition, msg.offset))
            fresh.append(InMessage(msg.key, msg.value, msg.partition, msg.offset))
    if len(fresh) < len(events):
        log.info("dropped %d stale or repeated messages from a batch of %d", len(events) - len(fresh), len(events))
    fresh.sort(key=lambda m: (m.partition, m.offset))
    return fresh


def run_worker(settings: Settings) -> None:
    """Run a router worker until it is stopped (SIGINT/SIGTERM)."""
    from faust.worker import Worker

    router_app = create_app(settings)
    configure_logging(settings.log_level, settings.log_format, worker_name(settings))
    serve_metrics(settings.metrics_port, router_app.metrics.registry)
    log.info("router worker %s: topics %s -> %s, redis namespace %s, metrics port %s", router_app.processor.worker,
             settings.topic_tokens, settings.topic_outcomes, settings.namespace, settings.metrics_port or "off")
    Worker(router_app.app, loglevel=settings.log_level, quiet=True, override_logging=False,
           redirect_stdouts=False).execute_from_commandline()
