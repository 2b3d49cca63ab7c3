"""The Faust application: topics, the per-stream context-window table and the router agent.

* ``{topic_tokens}`` -- token events, key = stream id (one stream stays on one partition).
* ``{topic_outcomes}`` -- routing outcomes (:mod:`pipeline.outcomes`), key = stream id.
* ``{topic_deadletter}`` -- rejected messages: original bytes, reason in headers.
* ``{topic_certificates}`` -- window certificates (:mod:`pipeline.engine.certificates`), key =
  ``<worker incarnation>/l<layer>``; sealed every budget window, when idle and when revoked.
* Table ``windows`` -- stream id -> ``[last_seq, last_offset, *last W-1 tokens]``, backed by a
  changelog topic, so a worker that takes over a partition continues every window exactly.
  The table uses the key partitioner (``use_partitioner=True``) with raw keys: a window lives on
  the same partition number as its stream's token messages.

The agent takes micro-batches from its channel queue (:mod:`pipeline.stream.channel_batches`;
the consumer delivers fetched batches, :mod:`pipeline.stream.faust_transport`) and hands each to
:class:`~pipeline.stream.agent.RouterAgent`, which routes it, waits until its outcomes and dead
letters are acknowledged by the broker, then writes each touched stream's window once (waiting
for the changelog records too), and only then lets the batch's offsets be committed -- by the
agent itself: the token topic is ``acks=False`` (see :mod:`pipeline.stream.consumer_control`).
If a worker dies after the outcomes but before the window reached the changelog, the
redelivered messages are routed again (duplicates, counted by the replay); if the window made
it, they are recognised by offset and skipped.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence, cast

import faust
from redis.exceptions import RedisError

from pipeline.engine.profile import StageClock
from pipeline.assembly import build_engine, build_routers
from pipeline.observability import RouterMetrics, configure_logging, serve_metrics
from pipeline.settings import Settings
from pipeline.stores.redis_store import RedisRoutingStore
from pipeline.stores.registry import REFRESH_S, register
from pipeline.table_sets import require_vocab, routing_store

from .agent import RouterAgent, Topics
from .batch_metrics import record_batch
from .certify import WorkerCertifier
from .consumer_control import ConsumerControl
from .continuity import KafkaOffsets, OffsetContinuity
from .kafka_access import KafkaAccess
from .processor import InMessage, RouterProcessor
from .context_windows import ContextWindowTable
from .faust_config import faust_settings, worker_name
from .faust_transport import FaustIntakeApp, VarFaustApp
from .window_table import WindowTable
from .channel_batches import channel_batches
from .worker_pool import WorkerFailed

log = logging.getLogger(__name__)
IDLE_SEAL_S = 2.0  # seal the open certificate ranges after this long without a batch


@dataclass
class RouterApp:
    """The Faust app plus the router state it drives."""

    app: faust.App
    processor: RouterProcessor
    store: RedisRoutingStore
    metrics: RouterMetrics
    agent: RouterAgent


def build_processor(settings: Settings, name: str) -> tuple[RouterProcessor, RedisRoutingStore]:
    """The worker's engine (every layer of a model, or one synthetic router; empty tables until
    the store's pointer names a table set) and its Redis store of as many layers."""
    routers = build_routers(settings, require_vocab(settings))
    engine = build_engine(settings, routers)
    store = routing_store(settings, [r.router_id for r in routers], timeout_s=settings.redis_timeout_s)
    # Outcomes name the worker *process* (name/incarnation): a restarted worker starts its governor
    # positions at 0 again, and the budget check must not mix the two runs.
    incarnation = f"{name}/{uuid.uuid4().hex[:6]}"
    return RouterProcessor(engine, store, incarnation, learned_only=settings.router_mode == "learned",
                           records=settings.outcome_records), store


def create_app(settings: Settings) -> RouterApp:
    """Build the router worker's Faust app (not started); the batch logic is :class:`RouterAgent`,
    which tests drive without a broker. Here it is only wired to Faust: topics and the
    context-window table (:func:`_router_agent`), the timers (:func:`_add_timers`) and the agent
    that hands it each micro-batch (:func:`_add_route`)."""
    name = worker_name(settings)
    processor, store = build_processor(settings, name)
    processor.engine.attach_profile(StageClock())  # a few clock reads per batch: always on
    app_type = VarFaustApp if settings.intake == "batched" else FaustIntakeApp
    app = app_type(settings.app_id, Table=WindowTable, **faust_settings(settings))  # window_table.py
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    # acks=False: Faust neither acks nor commits the token topic, and never "fills gaps" over
    # offsets it did not deliver; the agent commits what it routed (see consumer_control).
    tokens = app.topic(settings.topic_tokens, partitions=settings.partitions, acks=False, **raw)
    metrics = RouterMetrics(name)
    agent = _router_agent(app, settings, processor, raw)
    _add_timers(app, settings, agent, processor, store, metrics, name)
    _add_route(app, tokens, settings, agent, metrics)
    return RouterApp(app, processor, store, metrics, agent)


def _router_agent(app: faust.App, settings: Settings, processor: RouterProcessor, raw: dict[str, Any]) -> RouterAgent:
    """The :class:`RouterAgent` over this app's output topics, context-window table and consumer."""
    topics = {name: app.topic(name, **raw) for name in
              (settings.topic_outcomes, settings.topic_deadletter, settings.topic_certificates)}
    # Each stream's context window, changelog-backed. key_type=bytes makes Faust use the raw codec
    # for keys (the changelog key == the message key); values are JSON lists. The table keeps the
    # name "windows": it names the changelog topic ("<app_id>-windows-changelog"), so renaming it
    # would orphan every deployed worker's state.
    # cast: app.Table() is typed as TableT, which lacks the serializers faust.Table has
    window_table = cast("faust.Table[bytes, Any]",
                        app.Table("windows", default=None, partitions=settings.partitions, key_type=bytes,
                                  use_partitioner=True))

    async def changelog(key: bytes, value: Any) -> Any:
        return await window_table.changelog_topic.send(key=key, value=value,
                                                       key_serializer=window_table.key_serializer,
                                                       value_serializer=window_table.value_serializer)

    async def send(topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes] | None) -> Any:
        return await topics[topic].send(key=key, value=value, headers=headers)

    offsets = KafkaOffsets(KafkaAccess.from_settings(settings), settings.app_id, settings.topic_tokens)
    routing = settings.router_mode != "passthrough"
    key = settings.certificate_key.encode() if settings.certificate_key else None
    return RouterAgent(processor if routing else None,
                       OffsetContinuity(offsets.start, offsets.end), ConsumerControl(app, settings.topic_tokens),
                       ContextWindowTable(window_table, settings.partitions, settings.stream_idle_s, changelog=changelog),
                       send, Topics(settings.topic_outcomes, settings.topic_deadletter, settings.topic_tokens,
                                    settings.topic_certificates),
                       certifier=WorkerCertifier(processor.worker, processor.engine.layers, key) if routing else None)


def _add_timers(app: faust.App, settings: Settings, agent: RouterAgent, processor: RouterProcessor,
                store: RedisRoutingStore, metrics: RouterMetrics, name: str) -> None:
    """Stall watch and lag gauges, the commit of the routed frontier, idle-stream sweeps, the
    worker's registration in Redis, and the rebalance and stop hooks."""

    @app.timer(interval=1.0)
    async def watch_for_stalls() -> None:
        await agent.check_stalls()
        for partition, lag in agent.continuity.lag.items():
            metrics.consumer_lag.labels(worker=name, partition=str(partition)).set(lag)

    @app.timer(interval=settings.commit_interval_s)
    async def commit_routed() -> None:
        await agent.commit()
        if agent.idle.is_set() and time.monotonic() - agent.last_batch_at > IDLE_SEAL_S:
            await agent.publish_certificates(flush=True)  # an idle worker leaves nothing unsealed

    @app.timer(interval=max(1.0, min(30.0, settings.stream_idle_s / 4)))
    async def forget_idle_streams() -> None:
        if not agent.control.quiet():
            agent.windows.sweep(agent.control.assigned())
        metrics.streams.set(len(agent.windows))

    @app.task
    async def announce_at_start() -> None:
        await announce()

    @app.timer(interval=REFRESH_S)
    async def announce() -> None:
        try:
            await register(store.client, settings.namespace, settings.topic_tokens, processor.worker,
                           store.keys.router_id, processor.vocab_size)
        except (RedisError, OSError) as exc:  # Redis down: the registration simply expires
            log.debug("worker registration failed: %r", exc)

    # ignore: faust types receivers as taking any positional arguments; this signal sends (sender, revoked)
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        # Faust waits only for messages of topics with acks, so wait for the batch in progress
        # here; then commit what the agent finished, so the next owner starts exactly there.
        # (The eager protocol revokes *every* partition; nothing is dropped from the table.)
        await wrap_up(agent)

    # ignore: as above (this signal sends only the app)
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(sender: Any, **_: Any) -> None:
        # A graceful stop: Faust has stopped the flow (the agent routes nothing new) but not yet
        # cancelled the agent. Finish its batch and commit, so the next owner does not route
        # again what this worker finished since its last commit.
        try:
            await asyncio.wait_for(wrap_up(agent), settings.session_timeout_s)
        except Exception as exc:  # the stop goes on; the next owner routes the rest again
            log.warning("could not finish the batch and commit before stopping (%r)", exc)


async def wrap_up(agent: RouterAgent) -> None:
    """Wait for the batch in progress, send its certificates (sealing the open ranges), then
    commit the finished frontier -- at a revoke and before a graceful stop."""
    await agent.idle.wait()
    await agent.publish_certificates(flush=True)
    await agent.commit(during_rebalance=True)


def _add_route(app: faust.App, tokens: Any, settings: Settings, agent: RouterAgent, metrics: RouterMetrics) -> None:
    """The Faust agent: micro-batches of the token topic (``take_max`` / ``take_within_s``) to
    :meth:`RouterAgent.handle`, then the batch's metrics."""

    @app.agent(tokens, name="router")
    async def route(stream: faust.StreamT) -> None:
        # ignore: StreamT lacks take_events; the agent is handed a faust.Stream, which has it
        batches = channel_batches(stream.channel, settings.take_max, settings.take_within_s) \
            if settings.intake == "batched" else stream.take_events(  # type: ignore[attr-defined]
                settings.take_max, within=settings.take_within_s)
        async for events in batches:
            started = time.perf_counter()
            out = await agent.handle(current_messages(events, app.consumer_generation_id))
            if out is None or agent.processor is None:
                continue
            try:
                record_batch(metrics, agent.processor, out, len(events), time.perf_counter() - started,
                             agent.continuity.gaps, agent.continuity.repeats)
            except Exception:  # metrics are never worth a routing failure
                log.exception("updating metrics failed")


def current_messages(events: Sequence[Any], generation: int | None) -> list[InMessage]:
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
    serve_metrics(settings.metrics_port, router_app.metrics.registry, settings.metrics_host)
    log.info("router worker %s: topics %s -> %s, redis namespace %s, metrics port %s", router_app.processor.worker,
             settings.topic_tokens, settings.topic_outcomes, settings.namespace, settings.metrics_port or "off")
    worker = Worker(router_app.app, loglevel=settings.log_level, quiet=True, override_logging=False,
                    redirect_stdouts=False)
    # What start-up built (torch, the model, numba's compiled kernels, Faust: ~300k objects) is
    # moved out of the cyclic collector's reach. A full collection scanned all of it: 130 ms with
    # the agent stopped, measured at half load. Objects made from here on are collected as usual.
    gc.freeze()
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        reason = getattr(router_app.app, "_crash_reason", None) or getattr(worker, "_crash_reason", None)
        if reason is not None or done.code not in (0, None):
            # One line for whoever runs the worker; the traceback is in the log above it.
            raise WorkerFailed(f"router worker {router_app.processor.worker} stopped: {reason!r} "
                               "(the traceback is logged above)") from None
        raise
