"""KafkaOffsets' clients: made once and started before anyone uses them, however many callers ask
at once (the router agent's admit path and the stall-check timer do)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from pipeline.stream.continuity import KafkaOffsets
from pipeline.stream.kafka_access import KafkaAccess


class _Client:
    """A client whose start() takes a few loop turns, like a real connection."""

    def __init__(self) -> None:
        self.started = self.closed = False

    async def start(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.started = True

    def _check(self) -> None:
        assert self.started, "used before start() finished"


class _Admin(_Client):
    async def list_consumer_group_offsets(self, group: str, partitions: list[TopicPartition]) -> dict[Any, Any]:
        self._check()
        return {}

    async def close(self) -> None:
        self.closed = True


class _Consumer(_Client):
    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self._check()
        return {tp: 5 for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self._check()
        return {tp: 9 for tp in tps}

    async def stop(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class _Access(KafkaAccess):
    made: list[_Client] = field(default_factory=list, compare=False)

    def admin(self, **extra: Any) -> Any:
        self.made.append(_Admin())
        return self.made[-1]

    def consumer(self, *topics: str, **extra: Any) -> Any:
        self.made.append(_Consumer())
        return self.made[-1]


def test_concurrent_first_calls_share_one_started_pair() -> None:
    access = _Access("broker:9092")
    offsets = KafkaOffsets(access, "group", "tokens")

    async def run() -> tuple[Any, ...]:
        results = await asyncio.gather(offsets.start([0, 1]), offsets.end([0, 1]), offsets.start([2]))
        await offsets.close()
        return results

    starts, ends, more = asyncio.run(run())
    assert starts == {0: 5, 1: 5} and ends == {0: 9, 1: 9} and more == {2: 5}
    assert [type(c) for c in access.made] == [_Admin, _Consumer]  # one pair, nothing leaked
    assert all(c.closed for c in access.made)


def test_a_partition_learned_and_routed_during_another_lookup_keeps_its_offset() -> None:
    """The stall check and the agent learn start offsets concurrently; the slower lookup must not
    put a partition the agent has meanwhile routed past back to its start."""
    from pipeline.stream.continuity import OffsetContinuity

    gate = asyncio.Event()
    calls = 0

    async def starts(partitions: list[int]) -> dict[int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()  # the stall check's lookup, slow
        return {p: 0 for p in partitions}

    continuity = OffsetContinuity(starts)

    async def run() -> dict[int, int]:
        slow = asyncio.create_task(continuity._learn([0, 1, 2, 3]))
        await asyncio.sleep(0)
        await continuity._learn([3])  # the agent's, first to return
        continuity.expected[3] = 1  # ... and it routed offset 0
        gate.set()
        await slow
        return dict(continuity.expected)

    assert asyncio.run(run()) == {0: 0, 1: 0, 2: 0, 3: 1}
