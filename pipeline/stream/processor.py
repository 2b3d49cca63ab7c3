"""What a router worker does with one micro-batch of Kafka messages -- without touching Kafka.

The Faust agent (``pipeline.stream.app``) hands over raw messages and a window lookup and gets
back the outcome and dead-letter messages and the windows to write; the routing store is the
only I/O here, and it is an injected interface (Redis in production, memory in tests).

The engine is a :class:`~pipeline.engine.layered.LayeredEngine`: every MoE layer of a model (or
the one layer of a synthetic router), sharing the stream windows. Per batch: parse every message
(bad ones go to the dead-letter list with the reason), build one EventBatch with each stream's
events together (:func:`by_stream`: they become consecutive decisions), compute contexts
from the streams' windows, ONE store fetch (every layer's cache keys + the table-set pointer),
swap every layer's table if the set's version moved (the set is loaded whole, or not at all),
route each layer (cache -> fast path -> learned, one router call per layer, its own governor),
ONE store write of every layer's new decisions. The outcomes carry every layer's decisions, one
record per stream and batch (per run of consecutive seqs; long runs are cut at
:func:`~pipeline.outcomes.tokens_per_record`), however many messages brought its tokens -- so
per-token input costs one outcome send per stream and batch, not one per message. Events whose
seq does not increase are dead-lettered -- unless their offset shows they
are redeliveries of messages already routed before a crash or rebalance, which are skipped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Awaitable, Callable, Sequence

import numpy as np

from pipeline.engine.context import REDELIVERED, ContextWindow
from pipeline.engine.engine import VAREngine
from pipeline.engine.events import EventBatch, EventChunk
from pipeline.engine.layered import LayeredEngine, LayeredResult
from pipeline.engine.profile import lap
from pipeline.engine.records import RecordError, parse_record_bytes
from pipeline.outcomes import encode_outcomes
from pipeline.stores.base import RoutingStore, StoreUnavailable

log = logging.getLogger(__name__)


def by_stream(chunks: list[EventChunk], origin: list[int]) -> tuple[list[EventChunk], list[int]]:
    """The chunks (and their message indices) grouped by stream, each stream's in arrival order
    (a stream lives on one partition, so that is its offset order): every stream's events are
    then consecutive decisions, and one outcome record carries them all."""
    order = sorted(range(len(chunks)), key=lambda i: chunks[i].stream)
    return [chunks[i] for i in order], [origin[i] for i in order]


def record_runs(events: EventBatch) -> np.ndarray:
    """A label per routed event: equal for consecutive events of one stream with consecutive
    seqs (what one outcome record may hold), new at every other row."""
    sid, seqs = events.stream_ids, events.seqs
    breaks = (sid[1:] != sid[:-1]) | (seqs[1:] != seqs[:-1] + 1)
    return np.concatenate(([0], np.cumsum(breaks))).astype(np.int64)


@dataclass(frozen=True, slots=True)
class InMessage:
    """A consumed Kafka message (only what routing needs)."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message: the original bytes and why."""

    key: bytes | None
    value: bytes
    reason: str
    partition: int
    offset: int

    def headers(self, source_topic: str) -> dict[str, bytes]:
        return {"var-reason": self.reason.encode(), "var-source-topic": source_topic.encode(),
                "var-partition": str(self.partition).encode(), "var-offset": str(self.offset).encode()}


@dataclass(slots=True)
class BatchOutput:
    outcomes: Sequence[tuple[bytes | None, bytes]] = field(default_factory=list)  # key None: passthrough, keyless
    deadletters: list[DeadLetter] = field(default_factory=list)
    certificates: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, record)
    windows: dict[str, ContextWindow] = field(default_factory=dict)
    routed: int = 0
    redelivered: int = 0
    result: LayeredResult | None = None
    # The batch's cache write when process() was asked to defer it: the caller runs it (while it
    # publishes the outcomes, which do not depend on it) and must await it before the next batch.
    cache_write: Callable[[], Awaitable[None]] | None = None


WindowLookup = Callable[[str], "ContextWindow | None"]


class RouterProcessor:
    """Routes message batches with one (layered) engine and one routing store of as many layers."""

    def __init__(self, engine: LayeredEngine | VAREngine, store: RoutingStore, worker: str,
                 learned_only: bool = False, records: str = "stream") -> None:
        """``learned_only``: the always-learned baseline (no store calls, every token routed).
        ``records``: ``stream`` -- one outcome record per stream and batch; ``message`` -- one
        per input message, in message order (the form before per-stream records).
        A bare :class:`VAREngine` is routed as a one-layer engine."""
        if records not in ("stream", "message"):
            raise ValueError(f"outcome records must be 'stream' or 'message', got {records!r}")
        self.records = records
        self.engine = engine if isinstance(engine, LayeredEngine) else LayeredEngine([engine])
        if getattr(store, "layers", 1) != len(self.engine):
            raise ValueError(f"the routing store serves {getattr(store, 'layers', 1)} layers, "
                             f"the engine routes {len(self.engine)}")
        self.store = store
        self.worker = worker
        self.learned_only = learned_only
        self.table_reloads = 0
        self._unusable_version: int | None = None  # announced but not loadable: not retried per batch

    def _parse(self, messages: list[InMessage], out: BatchOutput) -> tuple[list[EventChunk], list[int]]:
        """Valid chunks (and the index of their message); invalid messages are dead-lettered."""
        vocab = self.vocab_size
        chunks, origin = [], []
        for i, msg in enumerate(messages):
            try:
                chunk = parse_record_bytes(msg.value, msg.offset, vocab)
                if msg.key is not None and msg.key != chunk.stream.encode():
                    raise RecordError(f"message key {msg.key!r} does not match stream {chunk.stream!r}")
            except RecordError as exc:
                out.deadletters.append(DeadLetter(msg.key, msg.value, str(exc), msg.partition, msg.offset))
                continue
            chunks.append(chunk)
            origin.append(i)
        return chunks, origin

    @property
    def vocab_size(self) -> int:
        return self.engine.layers[0].router.spec.vocab_size

    @property
    def table_version(self) -> int:
        """The version of the table set in use (every layer's table has it)."""
        return self.engine.layers[0].table.version

    async def _refresh_tables(self, version: int | None) -> None:
        """Load and swap every layer's table when the published set moved (all layers or none)."""
        current = self.table_version
        if version is None or version in (current, self._unusable_version):
            return
        try:
            tables = await self.store.load_tables(version)
        except StoreUnavailable as exc:  # a timeout is not "missing": try again on a later batch
            log.debug("fast-path table set v%s not loaded now (%s); keeping v%s", version, exc, current)
            return
        if tables is None:
            log.warning("fast-path table set v%s announced but not loadable; keeping v%s", version, current)
            self._unusable_version = version
            return
        try:
            previous = [engine.table for engine in self.engine.layers]
            try:
                self.engine.set_tables(tables)
            except ValueError:
                self.engine.set_tables(previous)  # never leave the layers on mixed versions
                raise
        except ValueError as exc:
            log.error("ignoring fast-path table set v%s: %s", version, exc)
            self._unusable_version = version
            return
        self.table_reloads += 1
        log.info("fast-path table set v%s loaded (%s tokens per layer)", version, [t.size for t in tables])

    async def process(self, messages: list[InMessage], lookup: WindowLookup, defer_write: bool = False) -> BatchOutput:
        """Route one batch; see the module docstring for the steps and guarantees. With
        ``defer_write`` the batch's cache write is not done here but returned, not started, as
        ``out.cache_write`` (the router agent runs it while the outcomes are being published)."""
        out = BatchOutput()
        profile = self.engine.profile
        if profile is not None:
            profile.start()
        chunks, origin = self._parse(messages, out)
        if not chunks:
            return out
        if self.records == "stream":
            chunks, origin = by_stream(chunks, origin)
        batch = EventBatch.from_chunks(chunks)
        windows = {name: w for name in batch.stream_names if (w := lookup(name)) is not None}
        lap(profile, "parse")
        plan = self.engine.prepare(batch, windows)
        if self.learned_only:
            result = self.engine.complete_learned(plan)
        else:
            cached, version = await self.store.fetch(plan.unique_keys, [len(p.unique_keys) for p in plan.layers])
            await self._refresh_tables(version)
            lap(profile, "store fetch")
            result = self.engine.complete(plan, cached)
            write = partial(self.store.write, result.cache_keys, result.cache_values,
                            [len(r.write_keys) for r in result.layers])
            if defer_write:
                out.cache_write = write
            else:
                await write()
                lap(profile, "store write")
        lengths = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
        message_of_row = np.repeat(np.asarray(origin, dtype=np.int64), lengths)
        self._reject(batch, result, message_of_row, messages, out)
        runs = record_runs(result.events) if self.records == "stream" else message_of_row[result.accepted]
        out.outcomes = encode_outcomes(result, runs, self.worker)
        lap(profile, "outcome encoding")
        out.windows = result.windows
        out.routed = len(result.events)
        out.result = result
        return out

    def _reject(self, batch: EventBatch, result: LayeredResult, message_of_row: np.ndarray,
                messages: list[InMessage], out: BatchOutput) -> None:
        """Dead-letter each message with out-of-order events once; count redeliveries.

        A chunk that overlaps what was already routed has its later tokens routed; its dead letter
        (the original bytes) says which seqs were rejected and which were routed.
        """
        routed = np.zeros(len(messages), dtype=np.int64)
        np.add.at(routed, message_of_row[result.accepted], 1)
        seen: set[int] = set()
        for rejection in result.rejections:
            if rejection.kind == REDELIVERED:
                out.redelivered += 1
                log.debug("skipping redelivered event: %s", rejection.reason)
                continue
            index = int(message_of_row[rejection.index])
            if index in seen:
                continue
            seen.add(index)
            msg = messages[index]
            reason = rejection.reason
            if routed[index]:
                reason += f"; the message's last {routed[index]} token(s) were routed"
            out.deadletters.append(DeadLetter(msg.key, msg.value, reason, msg.partition, msg.offset))
