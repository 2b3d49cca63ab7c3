"""Offset continuity for the router agent: never route past a message that was never delivered.

The token topic is neither compacted nor transactional, so within a partition every offset
holds a message and a router must see them all, in order. Faust's consumer can nonetheless
skip messages around a rebalance: records fetched between "resume partitions" and "seek to
committed offsets" are dropped by flow control, and aiokafka does not seek at all when a
partition's committed offset is 0 or missing -- so a fresh group can lose its first messages.
Faust also treats offset jumps as compaction gaps and commits over them. Routing the next
message anyway would be wrong twice: its context would miss the skipped tokens, and the skipped
messages, when they came back, would look like redeliveries.

:class:`OffsetContinuity` tracks, per partition, the next offset the router must see (from the
group's committed offset, or the log start, after each rebalance; then advanced by what it
routes). A batch is cut at the first gap of each partition and the consumer is asked to seek
back to the missing offset; the cut-off messages come again after the seek. A periodic check
(:meth:`OffsetContinuity.stalls`) catches the quieter case: records dropped with nothing after
them, so no later message ever reveals the gap.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from .kafka_access import KafkaAccess, kafka_access
from .processor import InMessage

log = logging.getLogger(__name__)

OffsetLookup = Callable[[list[int]], Awaitable[dict[int, int]]]


class OffsetContinuity:
    """Per-partition "next offset to route" bookkeeping (see module docstring).

    ``start_offsets(partitions)`` says where routing of each partition must begin after a
    rebalance; ``end_offsets(partitions)`` where the log ends (for :meth:`stalls`).

    A gap starts one *pending seek* per partition: until the missing offset arrives, later
    offsets of that partition are dropped without asking for another seek (they are records
    fetched before the seek, still in Faust's buffers). If the missing offset does not come
    within ``idle_s`` the seek is asked for again. ``routed`` / :meth:`committable` give the
    contiguous frontier of what the agent finished (outcomes acknowledged, windows written):
    the only offsets it may commit.
    """

    def __init__(self, start_offsets: OffsetLookup, end_offsets: OffsetLookup | None = None,
                 idle_s: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._start_offsets, self._end_offsets = start_offsets, end_offsets
        self.idle_s, self.clock = idle_s, clock
        self.expected: dict[int, int] = {}
        self.last_progress: dict[int, float] = {}
        self.pending: dict[int, tuple[int, float]] = {}
        self.done: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.generation: int | None = None
        self._generation_at = clock()
        self.behind: dict[int, tuple[int, float]] = {}  # partition -> (log end seen, when) while behind it
        self.gaps = 0
        self.dropped = 0
        self.repeats = 0
        self.lag: dict[int, int] = {}

    def observe_generation(self, generation: int | None) -> None:
        """Forget everything when the consumer generation (the assignment) changes."""
        if generation != self.generation:
            self.generation, self._generation_at = generation, self.clock()
            for state in (self.expected, self.last_progress, self.pending, self.done, self.committed, self.behind):
                state.clear()

    async def _learn(self, partitions: Iterable[int]) -> None:
        """Start offsets for the partitions not known yet. The agent and the stall check learn
        concurrently: a partition another caller learned (and maybe routed past) during the
        lookup keeps its offset -- overwriting it with the start made the stall check seek back
        over routed messages (a dead letter sent twice in CI)."""
        unknown = sorted(set(partitions) - self.expected.keys())
        if unknown:
            starts = await self._start_offsets(unknown)
            fresh = {p: starts[p] for p in unknown if p not in self.expected}
            if not fresh:
                return
            self.expected.update(fresh)
            for p, start in fresh.items():
                self.done.setdefault(p, start)
            log.info("routing starts at offsets %s", fresh)

    def _ask_seek(self, partition: int, why: str) -> int:
        target = self.expected[partition]
        self.pending[partition] = (target, self.clock())
        self.last_progress[partition] = self.clock()
        self.gaps += 1
        log.warning("partition %s: %s; seeking back to %s", partition, why, target)
        return target

    async def admit(self, messages: list[InMessage]) -> tuple[list[InMessage], dict[int, int]]:
        """Messages that may be routed now (sorted by partition, offset) and the seeks to make.

        A message below the expected offset is a repeat and is dropped (counted in ``repeats``):
        this generation admitted it already, and finished it -- a failed batch rewinds
        ``expected`` to what was finished -- or it lies below where routing started, which the
        group finished. A seek can deliver a record twice (the copy already on its way, then the
        re-fetched one; even in one batch); routing a malformed one twice dead-lettered it twice.
        A message beyond the expected offset means a gap: it and the rest of its partition are
        dropped (never routed, never committed) and a seek back is asked for, once per gap.
        """
        await self._learn(m.partition for m in messages)
        admitted: list[InMessage] = []
        seeks: dict[int, int] = {}
        for msg in sorted(messages, key=lambda m: (m.partition, m.offset)):
            p, expected = msg.partition, self.expected[msg.partition]
            if msg.offset < expected:
                self.repeats += 1
                continue
            if msg.offset > expected:
                self.dropped += 1
                if p not in self.pending:
                    seeks[p] = self._ask_seek(p, f"got offset {msg.offset} but offset {expected} was never delivered")
                continue
            if msg.offset == expected and p in self.pending:
                log.info("partition %s: offset %s arrived after the seek", p, expected)
                del self.pending[p]
            admitted.append(msg)
            self.expected[p] = max(expected, msg.offset + 1)
            self.last_progress[p] = self.clock()
        return admitted, seeks

    def routed(self, messages: list[InMessage]) -> None:
        """Mark admitted messages finished (outcomes acknowledged, windows written); the frontier
        only moves contiguously, so it can never pass a message that was not finished."""
        for msg in sorted(messages, key=lambda m: (m.partition, m.offset)):
            if msg.partition in self.done and msg.offset == self.done[msg.partition]:
                self.done[msg.partition] = msg.offset + 1

    def rewind(self, partitions: Iterable[int]) -> dict[int, int]:
        """After a failed batch: expect each partition's first unfinished offset again; returns
        the seeks that fetch it (also marked pending)."""
        seeks = {}
        for p in partitions:
            if p in self.done:
                self.expected[p] = self.done[p]
                self.pending.pop(p, None)
                seeks[p] = self._ask_seek(p, "a batch failed after admission")
        return seeks

    def committable(self) -> dict[int, int]:
        """Partition -> next offset to route, where it moved past the last commit."""
        return {p: off for p, off in self.done.items() if off > self.committed.get(p, -1)}

    def mark_committed(self, offsets: dict[int, int]) -> None:
        self.committed.update(offsets)

    async def stalls(self, assigned: list[int]) -> dict[int, int]:
        """Seeks for assigned partitions whose log has held, for ``idle_s`` seconds, a message the
        router has not seen, while nothing arrived for ``idle_s`` -- records dropped by the
        consumer with nothing arriving after them (so :meth:`admit` never sees the gap), or a
        pending seek whose offset never came.

        The age counts from the check that first saw the log end past the expected offset, not
        from the last progress: a quiet partition's new message, still on its way, is not a stall
        (sought anyway, it was delivered twice -- a dead letter sent twice in CI)."""
        if not assigned or self._end_offsets is None:
            return {}
        await self._learn(assigned)
        ends = await self._end_offsets(assigned)
        self.lag = {p: max(0, ends.get(p, 0) - self.expected[p]) for p in assigned}
        now, seeks = self.clock(), {}
        for p in assigned:
            end, expected = ends.get(p, 0), self.expected[p]
            behind_since = self._behind_since(p, end, now)
            idle = now - self.last_progress.get(p, self._generation_at)
            if behind_since is not None and now - behind_since > self.idle_s and idle > self.idle_s:
                seeks[p] = self._ask_seek(p, f"log ends at {end} but nothing past offset {expected} "
                                             f"arrived for {idle:.1f} s")
        return seeks

    def _behind_since(self, partition: int, end: int, now: float) -> float | None:
        """When a check first saw ``partition``'s log end past the expected offset, with the
        messages then in the log still not all seen; None when nothing is missing."""
        expected = self.expected[partition]
        if end <= expected:
            self.behind.pop(partition, None)
            return None
        seen = self.behind.get(partition)
        if seen is None or seen[0] <= expected:  # caught up with what was seen then: a new wait
            seen = self.behind[partition] = (end, now)
        return seen[1]


class KafkaOffsets:
    """Offsets from the cluster: where routing must start (the group's committed offset, else the
    log start) and where each partition's log ends."""

    def __init__(self, bootstrap: KafkaAccess | str, group_id: str, topic: str) -> None:
        self.kafka, self.group_id, self.topic = kafka_access(bootstrap), group_id, topic
        self._clients_made: tuple[AIOKafkaAdminClient, AIOKafkaConsumer] | None = None
        self._making = asyncio.Lock()

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        """The admin client and consumer, both started; made once, by the first caller.

        The agent's admit path and the stall-check timer ask concurrently. Without the lock
        a second caller, arriving while the first awaited ``start()``, made a second pair and
        the first caller got that pair's consumer before it had started (its ``_fetcher`` still
        None: a worker crashed in a chaos ``leave`` run with ``AttributeError: 'NoneType'
        object has no attribute 'beginning_offsets'``, and the first consumer leaked)."""
        async with self._making:
            if self._clients_made is None:
                admin = self.kafka.admin()
                await admin.start()
                consumer = self.kafka.consumer(group_id=None)
                try:
                    await consumer.start()
                except BaseException:
                    await admin.close()
                    raise
                self._clients_made = admin, consumer
            return self._clients_made

    async def start(self, partitions: Iterable[int]) -> dict[int, int]:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        admin, consumer = await self._clients()
        committed = await admin.list_consumer_group_offsets(self.group_id, partitions=tps)
        beginning = await consumer.beginning_offsets(tps)
        result = {}
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else -1
            result[tp.partition] = max(offset, beginning[tp])
        return result

    async def end(self, partitions: Iterable[int]) -> dict[int, int]:
        _, consumer = await self._clients()
        ends = await consumer.end_offsets([TopicPartition(self.topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}

    async def close(self) -> None:
        made, self._clients_made = self._clients_made, None
        if made is not None:
            await made[0].close()
            await made[1].stop()
