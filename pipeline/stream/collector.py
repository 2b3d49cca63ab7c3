"""Consume routing outcomes (and dead letters) back from Kafka and account for completeness.

Every outcome is identified by (stream, seq). The first outcome for an event counts; later ones
are duplicates (a redelivered uncommitted tail after a worker died). Completeness compares the
events produced with the distinct outcomes received. Every outcome carries all layers; the first
valid one fixes the layers of the run, and an outcome with other layers counts as invalid.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from tqdm import tqdm

from pipeline.outcomes import OutcomeError, Outcomes, decode_outcome

from .kafka_access import KafkaAccess, kafka_access

log = logging.getLogger(__name__)


@dataclass
class Collected:
    """Distinct outcomes in arrival order, plus duplicate/invalid counts and dead letters."""

    parts: list[Outcomes] = field(default_factory=list)
    all_parts: list[Outcomes] = field(default_factory=list)  # duplicates included (for the budget ledger)
    seen: set[tuple[str, int]] = field(default_factory=set)
    duplicates: int = 0
    invalid: int = 0
    messages: int = 0
    deadletters: list[tuple[bytes | None, bytes, dict[str, bytes]]] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None
    stream_prefix: str = ""  # only outcomes of streams with this prefix count (attached replays)
    layers: tuple[int, ...] | None = None  # the layers every outcome must carry (set by the first)
    # After an idle timeout: outcome partition -> (records read up to, log end). Every position at
    # its end means the workers never produced the rest; one behind means this consumer stalled.
    unread: dict[int, tuple[int, int]] | None = None
    unrouted: dict[int, tuple[int, int]] | None = None  # token partition -> (committed, end), same case

    @property
    def distinct(self) -> int:
        return len(self.seen)

    def outcomes(self) -> Outcomes:
        return Outcomes.concat(self.parts)

    def add(self, raw: bytes) -> None:
        self.messages += 1
        try:
            part = decode_outcome(raw)
        except OutcomeError as exc:
            self.invalid += 1
            log.warning("skipping invalid outcome: %s", exc)
            return
        if self.stream_prefix and not part.streams[0].startswith(self.stream_prefix):
            return
        layers = tuple(layer.layer for layer in part.layers)
        if self.layers is None:
            self.layers = layers
        elif layers != self.layers:
            self.invalid += 1
            log.warning("skipping an outcome of layers %s in a run of layers %s", layers, self.layers)
            return
        self.all_parts.append(part)
        keys = list(zip(part.streams, part.seqs.tolist()))
        fresh = np.fromiter((k not in self.seen for k in keys), dtype=bool, count=len(keys))
        self.duplicates += int((~fresh).sum())
        if fresh.any():
            self.seen.update(k for k, f in zip(keys, fresh) if f)
            self.parts.append(part.select(np.flatnonzero(fresh)) if not fresh.all() else part)
        now = time.perf_counter()
        self.first_at = self.first_at or now
        self.last_at = now


async def collect(bootstrap: KafkaAccess | str, outcome_topic: str, expected: int, deadletter_topic: str | None = None,
                  idle_timeout_s: float = 60.0, progress: bool = False, stop: asyncio.Event | None = None,
                  got: Collected | None = None) -> Collected:
    """Read both topics from the beginning until ``expected`` distinct outcomes arrived, or until
    nothing new arrived for ``idle_timeout_s``, or ``stop`` is set. Pass ``got`` to watch progress."""
    topics = [outcome_topic] + ([deadletter_topic] if deadletter_topic else [])
    consumer = kafka_access(bootstrap).consumer(*topics, group_id=None, auto_offset_reset="earliest",
                                                enable_auto_commit=False, fetch_max_bytes=16 * 1024 * 1024)
    await consumer.start()
    got = got if got is not None else Collected()
    last_progress = time.monotonic()
    try:
        with tqdm(total=expected, unit="tok", unit_scale=True, file=sys.stderr, disable=not progress,
                  desc="outcomes") as bar:
            while got.distinct < expected and not (stop and stop.is_set()):
                batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
                before = got.distinct
                _take(got, batches, outcome_topic)
                if got.distinct > before or any(batches.values()):
                    bar.update(got.distinct - before)
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > idle_timeout_s:
                    got.unread = await _positions(consumer, outcome_topic)
                    log.warning("no outcome for %.0f s; stopping with %d of %d (outcome partition: read/end %s)",
                                idle_timeout_s, got.distinct, expected, got.unread)
                    break
            if deadletter_topic:
                await _drain(consumer, got, outcome_topic)
    finally:
        await consumer.stop()
    return got


async def _positions(consumer: AIOKafkaConsumer, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic``: this consumer's position and the log end offset."""
    tps = sorted((tp for tp in consumer.assignment() if tp.topic == topic), key=lambda tp: tp.partition)
    try:
        ends = await consumer.end_offsets(tps)
        return {tp.partition: (await consumer.position(tp), ends[tp]) for tp in tps}
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:  # a diagnosis only: never fail the collection
        log.warning("cannot read the outcome partitions' offsets: %r", exc)
        return {}


async def _drain(consumer: AIOKafkaConsumer, got: Collected, outcome_topic: str) -> None:
    """A short final poll so dead letters produced alongside the last outcomes are seen."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        _take(got, await consumer.getmany(timeout_ms=200), outcome_topic)


def _take(got: Collected, batches: dict, outcome_topic: str) -> None:
    """File fetched records: outcomes into ``got``, everything else as dead letters."""
    for tp, records in batches.items():
        for rec in records:
            if tp.topic == outcome_topic:
                got.add(rec.value)
            else:
                got.deadletters.append((rec.key, rec.value, dict(rec.headers or ())))
