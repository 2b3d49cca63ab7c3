"""The router agent's micro-batches from its channel queue (pipeline/stream/channel_batches.py)."""
from __future__ import annotations

import asyncio
from typing import Any

import faust
from mode.utils.queues import FlowControlEvent, FlowControlQueue, ThrowableQueue

from pipeline.stream.channel_batches import channel_batches


class _Channel:
    """The part of a Faust channel that channel_batches uses: iterating it gives the channel
    whose queue the conductor fills."""

    def __init__(self, queue: asyncio.Queue) -> None:
        self.queue = queue
        self.iterated = self.stopped = 0

    def __aiter__(self) -> "_Channel":
        self.iterated += 1
        return self

    def on_stop_iteration(self) -> None:
        self.stopped += 1


def _queue(maxsize: int = 0) -> FlowControlQueue:
    return FlowControlQueue(maxsize=maxsize, flow_control=FlowControlEvent())


def test_batches_take_what_is_queued_up_to_the_maximum() -> None:
    async def main() -> list[list[int]]:
        queue = _queue()
        for i in range(10):
            queue.put_nowait(i)
        batches = channel_batches(_Channel(queue), 4, 0.05)
        return [await batches.__anext__() for _ in range(3)]

    assert asyncio.run(main()) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_batch_waits_within_for_more_and_loses_nothing_at_its_end() -> None:
    """Events arriving within the window join the batch; one arriving after it starts the next,
    also when it arrives just as a get times out."""
    async def main() -> list[list[int]]:
        queue = _queue()
        loop = asyncio.get_running_loop()
        for i, delay in enumerate((0.0, 0.02, 0.04, 0.25, 0.30)):
            loop.call_later(delay, queue.put_nowait, i)
        batches = channel_batches(_Channel(queue), 100, 0.15)
        return [await batches.__anext__() for _ in range(2)]

    assert asyncio.run(main()) == [[0, 1, 2], [3, 4]]


def test_an_agent_that_is_behind_takes_what_is_queued_without_waiting() -> None:
    """Events already queued when the agent asks are its batch; one arriving soon after (well
    within the window) starts the next instead of joining it."""
    async def main() -> list[list[int]]:
        queue = _queue()
        for i in range(3):
            queue.put_nowait(i)
        asyncio.get_running_loop().call_later(0.05, queue.put_nowait, 3)
        batches = channel_batches(_Channel(queue), 100, 0.5)
        return [await asyncio.wait_for(batches.__anext__(), 2) for _ in range(2)]

    assert asyncio.run(main()) == [[0, 1, 2], [3]]


def test_taking_events_endorses_pressure_drops() -> None:
    """A partition paused for a full buffer is fetched again once the agent drained the queue:
    the drop callback the conductor registered runs."""
    async def main() -> list[str]:
        queue = _queue(maxsize=10)
        drops: list[str] = []

        def drop() -> None:  # the conductor's one callback for the partition
            drops.append("tp0")

        for i in range(10):
            queue.put_nowait_enhanced(i, on_pressure_high=lambda: None, on_pressure_drop=drop)
        batches = channel_batches(_Channel(queue), 10, 0.01)
        assert await batches.__anext__() == list(range(10))
        return drops

    assert asyncio.run(main()) == ["tp0"]


def test_it_reads_the_queue_of_the_one_channel_it_registers_with_the_conductor() -> None:
    async def main() -> tuple[int, bool, Any]:
        app = faust.App("test-channel-batches", broker="kafka://127.0.0.1:1", web_enabled=False)
        topic = app.topic("tokens", key_type=bytes, value_type=bytes)
        batches = channel_batches(topic, 10, 0.01)
        first = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0.01)  # the generator has registered its channel and waits
        registered = [t for t in app.topics if "tokens" in t.topics]
        registered[0].queue.put_nowait("event")  # as the conductor's on_message does
        return len(registered), registered[0].is_iterator, await asyncio.wait_for(first, 1)

    assert asyncio.run(main()) == (1, True, ["event"])


def test_closing_the_batches_ends_the_channel_s_iteration() -> None:
    async def main() -> tuple[int, int]:
        queue = _queue()
        queue.put_nowait(1)
        channel = _Channel(queue)
        batches = channel_batches(channel, 10, 0.01)
        assert await batches.__anext__() == [1]
        await batches.aclose()
        return channel.iterated, channel.stopped

    assert asyncio.run(main()) == (1, 1)


def test_a_stopping_agent_s_stop_iteration_ends_the_batches_without_an_error() -> None:
    """Faust stops an agent by throwing StopAsyncIteration into its channel (agents/actor.py):
    the iteration ends, as a Stream's does -- raised out of the async generator it would be a
    RuntimeError, logged as an agent crash at every shutdown."""
    async def main() -> tuple[list[list[int]], int]:
        queue = ThrowableQueue(maxsize=0, flow_control=FlowControlEvent())  # a channel's queue
        queue.put_nowait(1)
        channel = _Channel(queue)
        got = []
        consumer = asyncio.ensure_future(_collect(channel_batches(channel, 10, 0.01), got))
        await asyncio.sleep(0.05)  # the first batch is out; the generator waits for the next event
        queue._throw(StopAsyncIteration())
        await asyncio.wait_for(consumer, 1)
        return got, channel.stopped

    assert asyncio.run(main()) == ([[1]], 1)


async def _collect(batches: Any, into: list) -> None:
    async for batch in batches:
        into.append(batch)
