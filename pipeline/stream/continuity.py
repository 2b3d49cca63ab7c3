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
back to the missing offset; the cut-off messages come again after the seek.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from .processor import InMessage

log = logging.getLogger(__name__)

StartOffsets = Callable[[Iterable[int]], Awaitable[dict[int, int]]]


class OffsetContinuity:
    """Per-partition "next offset to route" bookkeeping (see module docstring)."""

    def __init__(self, start_offsets: StartOffsets) -> None:
        self._start_offsets = start_offsets
        self.expected: dict[int, int] = {}
        self.gaps = 0

    def reset(self) -> None:
        """Forget everything (call when the assignment changes)."""
        self.expected.clear()

    async def admit(self, messages: list[InMessage]) -> tuple[list[InMessage], dict[int, int]]:
        """Messages that may be routed now (sorted by partition, offset) and the seeks to make.

        Messages below the expected offset pass (they are redeliveries; the window decides);
        a message beyond it means a gap: it and the rest of its partition wait for a re-fetch.
        """
        unknown = {m.partition for m in messages} - self.expected.keys()
        if unknown:
            self.expected.update(await self._start_offsets(sorted(unknown)))
        admitted: list[InMessage] = []
        seeks: dict[int, int] = {}
        for msg in sorted(messages, key=lambda m: (m.partition, m.offset)):
            if msg.partition in seeks:
                continue
            expected = self.expected[msg.partition]
            if msg.offset > expected:
                seeks[msg.partition] = expected
                self.gaps += 1
                log.warning("partition %s: got offset %s but offset %s was never delivered; seeking back",
                            msg.partition, msg.offset, expected)
                continue
            admitted.append(msg)
            self.expected[msg.partition] = max(expected, msg.offset + 1)
        return admitted, seeks


class KafkaStartOffsets:
    """Where routing of a partition must start: the group's committed offset, else the log start."""

    def __init__(self, bootstrap: str, group_id: str, topic: str) -> None:
        self.bootstrap, self.group_id, self.topic = bootstrap, group_id, topic
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __call__(self, partitions: Iterable[int]) -> dict[int, int]:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await self._admin.start()
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
            await self._consumer.start()
        committed = await self._admin.list_consumer_group_offsets(self.group_id, partitions=tps)
        assert self._consumer is not None
        beginning = await self._consumer.beginning_offsets(tps)
        result = {}
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else -1
            result[tp.partition] = max(offset, beginning[tp])
        return result

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._consumer is not None:
            await self._consumer.stop()
