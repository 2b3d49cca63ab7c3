"""The router worker's Faust consumer: one flow-suspension wait per fetched batch, and no
one-second sleeps while stream buffers are full (pipeline/stream/faust_transport.py)."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP

from pipeline.settings import Settings
from pipeline.stream import faust_transport
from pipeline.stream.faust_transport import BatchDrainConsumer, Delivery, VarFaustApp, deliver_batch

TOKENS = "tokens"


def _message(partition: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic=TOKENS, partition=partition, offset=offset)


def _batch(*spec: tuple[int, int]) -> list[tuple[TP, Any]]:
    return [(TP(TOKENS, p), _message(p, o)) for p, o in spec]


def test_deliver_batch_keeps_faust_s_per_message_steps() -> None:
    delivered, gaps, before = [], [], []
    read: dict[TP, int | None] = {TP(TOKENS, 0): 5}

    async def callback(message: Any) -> None:
        delivered.append((message.partition, message.offset))

    async def on_gap(tp: TP, start: int, end: int, topic: str) -> None:
        gaps.append((tp.partition, start, end, topic))

    async def before_each() -> None:
        before.append(len(delivered))

    batch = _batch((0, 4), (0, 5), (0, 6), (1, 0), (0, 9), (1, 1))
    asyncio.run(deliver_batch(batch, Delivery(callback, read, on_gap, before_each, lambda tp: True, lambda: True)))
    # offset 4 is below the read offset: a repeat, skipped; 5 is the read offset itself: delivered
    assert delivered == [(0, 5), (0, 6), (1, 0), (0, 9), (1, 1)]
    assert gaps == [(0, 7, 9, TOKENS)]  # 6 -> 9 skips 7 and 8; partition 1 starts at 0 (no gap)
    assert before == [0, 1, 2, 3, 4]
    assert read == {TP(TOKENS, 0): 9, TP(TOKENS, 1): 1}


def test_deliver_batch_yields_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust_transport, "YIELD_EVERY", 3)
    ticks: list[int] = []
    delivered: list[int] = []

    async def callback(message: Any) -> None:
        delivered.append(message.offset)

    async def nothing(*_: Any) -> None:
        return None

    async def main() -> None:
        async def ticker() -> None:
            while True:
                ticks.append(len(delivered))
                await asyncio.sleep(0)
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        await deliver_batch(_batch(*[(0, o) for o in range(9)]),
                            Delivery(callback, {}, nothing, nothing, lambda tp: True, lambda: True))
        task.cancel()

    asyncio.run(main())
    assert delivered == list(range(9))
    assert 3 in ticks and 6 in ticks  # the loop ran after the 3rd and the 6th message


def test_deliver_batch_skips_paused_partitions_and_stops_when_no_longer_current() -> None:
    """Faust's getmany tests each record as it hands it over: a partition paused meanwhile (a
    seek) is skipped, a stopped flow or a new generation ends the batch."""
    delivered: list[tuple[int, int]] = []
    paused: set[int] = set()
    stopped = False

    async def callback(message: Any) -> None:
        delivered.append((message.partition, message.offset))
        if message.offset == 1 and message.partition == 0:
            paused.add(1)  # a seek of partition 1 starts while partition 0's record is handled
        if message.offset == 3:
            nonlocal stopped
            stopped = True

    async def nothing(*_: Any) -> None:
        return None

    read: dict[TP, int | None] = {}
    batch = _batch((0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (0, 3), (0, 4))
    asyncio.run(deliver_batch(batch, Delivery(callback, read, nothing, nothing,
                                              lambda tp: tp.partition not in paused, lambda: not stopped)))
    assert delivered == [(0, 0), (1, 0), (0, 1), (0, 2), (0, 3)]
    assert read == {TP(TOKENS, 0): 3, TP(TOKENS, 1): 0}


def _app() -> faust.App:
    from pipeline.stream.faust_config import faust_settings
    return VarFaustApp("test-drain", **faust_settings(Settings.load(env={}).with_(kafka_bootstrap="127.0.0.1:1")))


def test_the_router_worker_consumes_through_the_batch_drain_consumer() -> None:
    from pipeline.stream.app import create_app

    async def main() -> list[tuple[bool, bool]]:
        base = Settings.load(env={}).with_(vocab_size=100, kafka_bootstrap="127.0.0.1:1")
        consumers = [create_app(base.with_(intake=intake)).app.consumer for intake in ("batched", "faust")]
        return [(isinstance(c, BatchDrainConsumer), isinstance(c._thread, faust_transport.GiveBackConsumerThread))
                for c in consumers]

    # Faust's own intake keeps Faust's drain loop, but gives back a fetch returned into a stopped flow too
    assert asyncio.run(main()) == [(True, True), (False, True)]


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


def test_a_suspension_cancels_the_rest_of_the_batch() -> None:
    """The flow stops (a rebalance) while a callback waits: that callback is cancelled and the
    batch's later messages are not delivered, nor their read offsets moved -- as in Faust's loop."""
    async def main() -> tuple[list[int], dict[TP, int | None]]:
        consumer = _app().consumer
        delivered: list[int] = []
        blocked = asyncio.Event()
        fetcher = _Fetcher()
        rounds = 0

        async def getmany(timeout: float) -> Any:
            nonlocal rounds
            rounds += 1
            if rounds == 1:
                for item in _batch(*[(0, o) for o in range(5)]):
                    yield item
            else:
                fetcher._stopped.set()

        async def callback(message: Any) -> None:
            if message.offset == 2:
                blocked.set()
                await asyncio.Event().wait()  # a full stream buffer that never drains
            delivered.append(message.offset)

        consumer.getmany = getmany  # type: ignore[method-assign]
        consumer.callback = callback
        consumer._active_partitions = {TP(TOKENS, 0)}
        drain = asyncio.create_task(consumer._drain_messages(fetcher))
        await blocked.wait()
        consumer.stop_flow()
        await asyncio.wait_for(drain, 5)
        return delivered, dict(consumer._read_offset)

    delivered, read = asyncio.run(main())
    assert delivered == [0, 1]
    assert read == {TP(TOKENS, 0): 1}


def test_no_second_long_sleep_while_every_partition_is_buffered() -> None:
    """With every partition paused for a full buffer, the next fetch starts as soon as a buffer
    drains -- Faust's own wait sleeps one whole second."""
    async def main() -> float:
        consumer = _app().consumer
        tp = TP(TOKENS, 0)
        consumer._active_partitions = set()
        consumer._buffered_partitions = {tp}
        fetched: list[set[TP]] = []

        async def _getmany(active_partitions: set[TP], timeout: float) -> dict:
            fetched.append(set(active_partitions))
            return {}

        consumer._getmany = _getmany  # type: ignore[method-assign]
        consumer.flow_active = True
        asyncio.get_running_loop().call_later(0.05, consumer.on_buffer_drop, tp)
        started = time.monotonic()
        await consumer._wait_next_records(5.0)
        assert fetched == [{tp}]
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.9


def test_fetches_are_short_while_some_partition_is_buffered() -> None:
    """A partition left out of the fetch for a full buffer must not wait out a one-second fetch
    of the others once its buffer drained."""
    async def main() -> list[float]:
        consumer = _app().consumer
        fetcher = _Fetcher()
        timeouts: list[float] = []

        async def getmany(timeout: float) -> Any:
            timeouts.append(timeout)
            if len(timeouts) == 1:
                consumer._buffered_partitions = {TP(TOKENS, 0)}
            else:
                fetcher._stopped.set()
            return
            yield  # an async generator, as Faust's getmany

        consumer.getmany = getmany  # type: ignore[method-assign]
        await asyncio.wait_for(consumer._drain_messages(fetcher), 5)
        return timeouts

    assert asyncio.run(main()) == [faust_transport.FETCH_TIMEOUT_S, faust_transport.BUFFERED_FETCH_TIMEOUT_S]


def test_with_every_partition_buffered_and_none_drained_nothing_is_fetched_and_nothing_sleeps() -> None:
    async def main() -> tuple[Any, list, float]:
        consumer = _app().consumer
        consumer._active_partitions = set()
        consumer._buffered_partitions = {TP(TOKENS, 0)}
        fetched: list = []

        async def _getmany(active_partitions: set[TP], timeout: float) -> dict:
            fetched.append(active_partitions)
            return {}

        consumer._getmany = _getmany  # type: ignore[method-assign]
        consumer.flow_active = True
        started = time.monotonic()
        result = await consumer._wait_next_records(0.05)
        return result, fetched, time.monotonic() - started

    result, fetched, elapsed = asyncio.run(main())
    assert result == ({}, set()) and fetched == [] and elapsed < 0.5


class _Thread:
    """The consumer thread's two seeks: committed offsets as given, and what went to the log start."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed, self.to_beginning = committed, []

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return dict(self.committed)

    async def seek_to_beginning(self, *partitions: TP) -> None:
        self.to_beginning.extend(partitions)


def test_faust_s_seek_to_committed_also_seeks_partitions_with_nothing_committed() -> None:
    """aiokafka leaves a partition whose committed offset is 0 or missing where it is
    (aio-libs/aiokafka#1003); Faust's perform_seek now sends those to the log start, leaves the
    committed ones and the changelog partitions alone, and resets their read offsets as before."""
    async def main() -> tuple[list[TP], dict[TP, int | None]]:
        consumer = _app().consumer
        changelog = TP("test-drain-windows-changelog", 0)
        committed = {TP(TOKENS, 0): 120, TP(TOKENS, 1): None, TP(TOKENS, 2): 0, changelog: None}
        thread = _Thread(committed)
        consumer._thread = thread  # type: ignore[assignment]
        consumer._is_changelog_tp = lambda tp: tp.topic.endswith("-changelog")  # type: ignore[method-assign]
        consumer._read_offset.update({TP(TOKENS, 1): 500, TP(TOKENS, 2): 40})  # stale, from before
        await consumer.perform_seek()
        return thread.to_beginning, dict(consumer._read_offset)

    to_beginning, read = asyncio.run(main())
    assert sorted(to_beginning) == [TP(TOKENS, 1), TP(TOKENS, 2)]
    assert read[TP(TOKENS, 0)] == 120 and read[TP(TOKENS, 1)] is None and read[TP(TOKENS, 2)] == 0


class _SeekRecorder:
    """The aiokafka consumer as give_back uses it: seeks, recorded."""

    def __init__(self) -> None:
        self.seeks: list[tuple[TP, int]] = []

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def _fetch_returning(records: dict[TP, list[Any]], stop_flow_of: Any = None) -> Any:
    async def _fetch_records(self: Any, consumer: Any, active: Any, timeout: Any = None, max_records: Any = None) -> Any:
        if stop_flow_of is not None:
            stop_flow_of.flow_active = False  # a rebalance started while the fetch waited
        return records
    return _fetch_records


def test_a_fetch_returning_after_the_flow_stopped_gives_its_records_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recovery's changelog records fetched into a stopped flow would be dropped by Faust
    with the position past them (the stuck recovery): the thread seeks each partition back to
    its first returned offset and returns nothing; with the flow running nothing is sought."""
    changelog = TP("test-drain-windows-changelog", 3)
    records = {changelog: [_message(3, o) for o in range(0, 30)], TP(TOKENS, 1): [_message(1, o) for o in (7, 8)],
               TP(TOKENS, 2): []}

    async def main(flow: bool) -> tuple[Any, list[tuple[TP, int]]]:
        consumer = _app().consumer
        thread = consumer._thread
        assert isinstance(thread, faust_transport.GiveBackConsumerThread)
        aiokafka_consumer = _SeekRecorder()
        consumer.flow_active = flow
        return await thread._fetch_records(aiokafka_consumer, set(records), timeout=1.0), aiokafka_consumer.seeks

    monkeypatch.setattr(faust_transport.faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", _fetch_returning(records))
    returned, seeks = asyncio.run(main(flow=False))
    assert returned == {} and sorted(seeks) == sorted([(TP(TOKENS, 1), 7), (changelog, 0)])
    returned, seeks = asyncio.run(main(flow=True))
    assert returned is records and seeks == []


def test_a_round_that_fetched_nothing_into_a_stopped_flow_skips_faust_s_seek_to_committed() -> None:
    """Faust seeks every partition to its committed offset (one request each: 1.5-2.5 s measured,
    with the recovery waiting) when a fetch returns into a stopped flow; when nothing was fetched
    -- or it was given back -- no position moved and the round just ends."""
    async def main() -> tuple[list[Any], int]:
        consumer = _app().consumer
        consumer._active_partitions = {TP(TOKENS, 0)}
        consumer.flow_active = True
        seeks = 0

        async def _getmany(active_partitions: set[TP], timeout: float) -> dict:
            consumer.flow_active = False
            return {}

        async def perform_seek() -> None:
            nonlocal seeks
            seeks += 1

        consumer._getmany = _getmany  # type: ignore[method-assign]
        consumer.perform_seek = perform_seek  # type: ignore[method-assign]
        got = [item async for item in consumer.getmany(timeout=0.01)]
        return got, seeks

    assert asyncio.run(main()) == ([], 0)


def test_the_livelock_check_skips_a_partition_that_awaits_its_offset_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka asserts on ``position`` while a partition awaits a reset; Faust's livelock check
    read it and crashed the worker. Such a partition is skipped; one with a position is checked
    by Faust as before, and an AssertionError of any other cause still propagates."""
    from aiokafka.consumer.subscription_state import TopicPartitionState

    verified: list[TP] = []
    failure: list[BaseException] = []

    async def main() -> None:
        state = TopicPartitionState(assignment=None)  # a new assignment's state: no position yet
        subscription = SimpleNamespace(assignment=SimpleNamespace(state_value=lambda tp: state))
        fake = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=SimpleNamespace(subscription=subscription)))

        def faust_verify(self: Any, now: float, tp: TP) -> None:
            verified.append(tp)
            if failure:
                raise failure[0]
            state.position  # Faust reads it; aiokafka asserts when there is none

        monkeypatch.setattr(faust_transport.faust_aiokafka.AIOKafkaConsumerThread, "verify_event_path", faust_verify)
        thread = _app().consumer._thread
        thread._ensure_consumer = lambda: fake  # type: ignore[method-assign]
        tp = TP(TOKENS, 0)
        thread.verify_event_path(1.0, tp)
        assert verified == []  # awaiting reset: skipped
        state.seek(40)
        thread.verify_event_path(1.0, tp)
        assert verified == [tp]  # with a position: Faust's check
        failure.append(AssertionError("another cause"))
        with pytest.raises(AssertionError, match="another cause"):
            thread.verify_event_path(1.0, tp)

    asyncio.run(main())
