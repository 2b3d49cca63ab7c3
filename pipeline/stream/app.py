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
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP

from pipeline.engine.context import StreamWindow
from pipeline.engine.engine import VAREngine
from pipeline.engine.table import RoutingTable
from pipeline.replay import engine_config, router_spec
from pipeline.engine.routers import build_router
from pipeline.settings import Settings
from pipeline.stores.keys import RedisKeys
from pipeline.stores.redis_store import RedisRoutingStore

from .continuity import KafkaStartOffsets, OffsetContinuity
from .processor import BatchOutput, InMessage, RouterProcessor

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
    stats: dict[str, int]


def build_processor(settings: Settings, name: str) -> tuple[RouterProcessor, RedisRoutingStore]:
    router = build_router(router_spec(settings, require_vocab(settings)), settings.device)
    config = engine_config(settings)
    spec = router.spec
    engine = VAREngine(router, RoutingTable.empty(spec.vocab_size, spec.num_experts, spec.top_k, router.router_id),
                       config)
    store = RedisRoutingStore(settings.redis_url, RedisKeys(settings.namespace, router.router_id),
                              config.cache.ttl_s, config.layer, settings.redis_timeout_s)
    return RouterProcessor(engine, store, name), store


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
    stats = {"batches": 0, "routed": 0, "deadletters": 0, "redelivered": 0}
    continuity = OffsetContinuity(KafkaStartOffsets(settings.kafka_bootstrap, settings.app_id, settings.topic_tokens))

    def lookup(stream: str) -> StreamWindow | None:
        value = windows.get(stream.encode())
        return StreamWindow.from_list(value) if value is not None else None

    async def publish(out: BatchOutput) -> None:
        futures = [await outcomes.send(key=k, value=v) for k, v in out.outcomes]
        futures += [await deadletter.send(key=d.key, value=d.value, headers=d.headers(settings.topic_tokens))
                    for d in out.deadletters]
        if futures:
            await asyncio.gather(*futures)

    @app.agent(tokens, name="router")
    async def route(stream: faust.StreamT) -> None:
        seen_generation = None
        async for events in stream.take_events(settings.take_max, within=settings.take_within_s):
            generation = app.consumer_generation_id
            if generation != seen_generation:
                continuity.reset()
                seen_generation = generation
            messages, seeks = await continuity.admit(current_messages(events, generation))
            for partition, offset in seeks.items():
                await app.consumer.seek(TP(settings.topic_tokens, partition), offset)
            if not messages:
                continue
            out = await processor.process(messages, lookup)
            log.debug("batch of %d messages: %d routed, %d dead letters, %d redelivered", len(messages),
                      out.routed, len(out.deadletters), out.redelivered)
            await publish(out)
            for stream_id, window in out.windows.items():
                windows[stream_id.encode()] = window.to_list()
            stats["batches"] += 1
            stats["routed"] += out.routed
            stats["deadletters"] += len(out.deadletters)
            stats["redelivered"] += out.redelivered

    return RouterApp(app, processor, store, stats)


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


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run a router worker until it is stopped (SIGINT/SIGTERM)."""
    from faust.worker import Worker

    router_app = create_app(settings)
    log.info("router worker %s: topics %s -> %s, redis namespace %s", router_app.processor.worker,
             settings.topic_tokens, settings.topic_outcomes, settings.namespace)
    Worker(router_app.app, loglevel=loglevel, quiet=True).execute_from_commandline()
