"""OffsetContinuity's stall check and repeats: a quiet partition's new message is not a stall, and
a message delivered twice within a generation is routed (or dead-lettered) once."""
from __future__ import annotations

import asyncio

from pipeline.stream.continuity import OffsetContinuity
from pipeline.stream.processor import InMessage


class _Log:
    """Start and end offsets of a topic whose partitions all start at 0; ``end`` is set by the test."""

    def __init__(self) -> None:
        self.end: dict[int, int] = {}

    async def starts(self, partitions: list[int]) -> dict[int, int]:
        return {p: 0 for p in partitions}

    async def ends(self, partitions: list[int]) -> dict[int, int]:
        return {p: self.end.get(p, 0) for p in partitions}


def _guard(log: _Log, now: list[float]) -> OffsetContinuity:
    return OffsetContinuity(log.starts, log.ends, idle_s=3.0, clock=lambda: now[0])


def test_a_quiet_partitions_new_message_on_its_way_is_not_sought() -> None:
    """The CI sighting: partition 3 quiet for 9 s, its first message appended just before a check;
    the check sought back, the copy on its way arrived, then the re-fetched one (two dead letters)."""
    log, now = _Log(), [0.0]
    guard = _guard(log, now)
    assert asyncio.run(guard.stalls([3])) == {}
    now[0] = 9.4
    log.end[3] = 1  # appended a moment ago, being fetched
    assert asyncio.run(guard.stalls([3])) == {}
    now[0] = 9.5
    admitted, seeks = asyncio.run(guard.admit([InMessage(b"bad", b"{", 3, 0)]))
    assert [m.offset for m in admitted] == [0] and not seeks
    now[0] = 20.0
    assert asyncio.run(guard.stalls([3])) == {}  # nothing missing


def test_a_message_in_the_log_for_longer_than_idle_s_and_never_delivered_is_sought() -> None:
    log, now = _Log(), [0.0]
    guard = _guard(log, now)
    now[0] = 9.4
    log.end[3] = 1
    assert asyncio.run(guard.stalls([3])) == {}
    now[0] = 12.0
    assert asyncio.run(guard.stalls([3])) == {}  # in the log for 2.6 s: may still be on its way
    now[0] = 12.5
    assert asyncio.run(guard.stalls([3])) == {3: 0}  # 3.1 s: dropped, fetch it again
    now[0] = 13.0
    assert asyncio.run(guard.stalls([3])) == {}  # the seek is pending
    now[0] = 15.6
    assert asyncio.run(guard.stalls([3])) == {3: 0}  # it did not come either: once more


def test_a_backlog_being_worked_off_is_not_a_stall() -> None:
    log, now = _Log(), [0.0]
    guard = _guard(log, now)
    log.end[0] = 1000
    for step in range(1, 20):
        now[0] = float(step)
        asyncio.run(guard.admit([InMessage(b"k", b"v", 0, o) for o in range((step - 1) * 50, step * 50)]))
        assert asyncio.run(guard.stalls([0])) == {}
    assert guard.lag == {0: 50}


def test_a_new_generation_forgets_what_it_saw_behind() -> None:
    log, now = _Log(), [0.0]
    guard = _guard(log, now)
    log.end[0] = 5
    asyncio.run(guard.stalls([0]))
    guard.observe_generation(2)
    now[0] = 4.0
    assert asyncio.run(guard.stalls([0])) == {}  # seen behind only now, in this generation
    now[0] = 7.5
    assert asyncio.run(guard.stalls([0])) == {0: 0}


def test_a_message_delivered_again_in_the_same_generation_is_dropped_as_a_repeat() -> None:
    """The copy on its way and the re-fetched copy of a seek: the second is not routed again."""
    log, now = _Log(), [0.0]
    guard = _guard(log, now)
    first, _ = asyncio.run(guard.admit([InMessage(b"bad", b"{", 3, 0), InMessage(b"k", b"v", 3, 1)]))
    again, seeks = asyncio.run(guard.admit([InMessage(b"bad", b"{", 3, 0), InMessage(b"k", b"v", 3, 1),
                                            InMessage(b"k", b"v", 3, 2)]))
    assert [m.offset for m in first] == [0, 1] and [m.offset for m in again] == [2] and not seeks
    assert guard.repeats == 2


def test_after_a_failed_batch_the_rewound_messages_are_admitted_again() -> None:
    log, now = _Log(), [0.0]
    guard = _guard(log, now)
    batch = [InMessage(b"k", b"v", 0, o) for o in range(4)]
    admitted, _ = asyncio.run(guard.admit(batch[:2]))
    guard.routed(admitted)
    asyncio.run(guard.admit(batch[2:]))  # admitted, then the batch failed
    assert guard.rewind([0]) == {0: 2}
    again, seeks = asyncio.run(guard.admit(batch))
    assert [m.offset for m in again] == [2, 3] and not seeks and guard.repeats == 2
