"""The router agent's batch ordering, driven without a broker (twins for Faust and the store).

What must hold: a message is committed only after its outcome was acknowledged and its window
written; messages cut off at a gap are neither routed nor committed; a failed send is retried
without duplicating the acknowledged ones; a gap asks for one seek, not one per batch.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from pipeline.outcomes import MAX_OUTCOME_TOKENS, Outcomes, decode_outcome
from pipeline.stream.agent import RouterAgent, Topics
from pipeline.stream.continuity import OffsetContinuity
from pipeline.stream.processor import BatchOutput, DeadLetter, InMessage
from pipeline.stream.context_windows import ContextWindowTable

from .test_processor import corpus, make, messages_for


class FakeControl:
    """ConsumerControl's twin: records seeks and commits; ``log`` orders them with the sends."""

    def __init__(self, log: list[str]) -> None:
        self.log, self.seeks, self.commits = log, [], []
        self.gen: int | None = 1
        self.rebalancing = False

    async def seek(self, seeks: dict[int, int]) -> bool:
        if seeks:
            self.seeks.append(dict(seeks))
        return bool(seeks)

    async def commit(self, offsets: dict[int, int]) -> bool:
        self.log.append(f"commit {sorted(offsets.items())}")
        self.commits.append(dict(offsets))
        return True

    def assigned(self) -> list[int]:
        return [0, 1]

    def quiet(self) -> bool:
        return self.rebalancing

    def generation(self) -> int | None:
        return self.gen


class FakeProducer:
    """Acks every send, except the first ``fail`` sends (which fail with ``error``)."""

    def __init__(self, log: list[str], fail: int = 0, error: Exception | None = None) -> None:
        self.log, self.fail, self.error = log, fail, error or KafkaTimeoutError()
        self.sent: list[tuple[str, bytes | None, bytes, Any]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Any) -> asyncio.Future:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if self.fail > 0:
            self.fail -= 1
            future.set_exception(self.error)
        else:
            self.sent.append((topic, key, value, headers))
            self.log.append(f"ack {topic}")
            future.set_result(None)
        return future


class LoggingTable(dict):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: bytes, value: Any) -> None:
        self.log.append("window")
        super().__setitem__(key, value)


def agent_for(start: int = 0, fail: int = 0, error: Exception | None = None, passthrough: bool = False):
    log: list[str] = []
    processor, _, _ = make(records="message")  # one outcome per message: each send is countable

    async def starts(partitions):
        return {p: start for p in partitions}

    producer, control = FakeProducer(log, fail, error), FakeControl(log)
    windows = ContextWindowTable(LoggingTable(log), 4, 600.0)
    agent = RouterAgent(None if passthrough else processor, OffsetContinuity(starts), control, windows,
                        producer.send, Topics("out", "dlq", "tokens"), retry_s=0.0)
    return agent, producer, control, log


def test_outcomes_are_acknowledged_before_windows_and_windows_before_the_commit():
    agent, producer, control, log = agent_for()
    msgs = messages_for(corpus(20))
    asyncio.run(agent.handle(msgs))
    assert agent.continuity.committable() == {0: len(msgs)}
    asyncio.run(agent.commit())
    first_window, last_ack = log.index("window"), max(i for i, e in enumerate(log) if e.startswith("ack"))
    assert last_ack < first_window < log.index(f"commit {[(0, len(msgs))]}")
    assert control.commits == [{0: len(msgs)}]
    assert not asyncio.run(agent.commit())  # nothing new: no second commit


def test_messages_past_a_gap_are_not_routed_or_committed_and_one_seek_is_asked_for():
    agent, producer, control, _ = agent_for()
    msgs = messages_for(corpus(30))
    asyncio.run(agent.handle(msgs[:10] + msgs[15:20]))  # offsets 10..14 never delivered
    routed = Outcomes.concat([decode_outcome(v) for t, _, v, _ in producer.sent if t == "out"])
    assert len(routed) == 10 and control.seeks == [{0: 10}]
    asyncio.run(agent.handle(msgs[20:25]))  # stale records fetched before the seek: no new seek
    assert control.seeks == [{0: 10}] and agent.continuity.committable() == {0: 10}
    asyncio.run(agent.handle(msgs[10:30]))  # the re-fetch after the seek
    assert agent.continuity.committable() == {0: 30} and not agent.continuity.pending
    decoded = Outcomes.concat([decode_outcome(v) for t, _, v, _ in producer.sent if t == "out"])
    assert len(decoded) == 30 and len(set(zip(decoded.streams, decoded.seqs.tolist()))) == 30


def test_a_failed_send_is_sent_again_alone_and_the_batch_completes():
    agent, producer, _, _ = agent_for(fail=2)
    msgs = messages_for(corpus(10))
    asyncio.run(agent.handle(msgs))
    outcomes = [v for t, _, v, _ in producer.sent if t == "out"]
    assert len(outcomes) == len(msgs) == len(set(outcomes))  # every outcome once, none lost
    assert agent.counters.send_retries == 2 and agent.continuity.committable() == {0: len(msgs)}


def test_a_dead_letter_too_large_for_the_broker_is_sent_truncated():
    agent, producer, _, _ = agent_for(fail=1, error=MessageSizeTooLargeError())
    big = DeadLetter(b"k", b"x" * 200_000, "not valid JSON", 0, 3)
    asyncio.run(agent.publish(BatchOutput(deadletters=[big])))
    [(topic, key, value, headers)] = producer.sent
    assert topic == "dlq" and len(value) < 200_000 and headers["var-truncated-from"] == b"200000"
    assert headers["var-reason"] == b"not valid JSON"


def test_an_outcome_too_large_is_a_bug_not_a_silent_loss():
    agent, _, _, _ = agent_for(fail=1, error=MessageSizeTooLargeError())
    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(agent.publish(BatchOutput(outcomes=[(b"k", b"v")])))


def test_nothing_is_committed_mid_rebalance_or_across_generations():
    agent, _, control, _ = agent_for()
    asyncio.run(agent.handle(messages_for(corpus(10))))
    control.rebalancing = True
    assert not asyncio.run(agent.commit())
    control.rebalancing, control.gen = False, 2
    assert not asyncio.run(agent.commit())  # the old assignment's frontier is not committed
    assert control.commits == [] and agent.continuity.committable() == {}  # the new one re-learns its start


def test_passthrough_forwards_each_admitted_message():
    agent, producer, _, _ = agent_for(passthrough=True)
    msgs = [InMessage(b"k", b"v%d" % i, 1, i) for i in range(5)]
    asyncio.run(agent.handle(msgs))
    assert [v for _, _, v, _ in producer.sent] == [m.value for m in msgs]


def test_a_long_chunk_gets_several_outcome_records_below_the_limit():
    agent, producer, _, _ = agent_for()
    chunk = corpus(3 * MAX_OUTCOME_TOKENS, chunk=3 * MAX_OUTCOME_TOKENS)[:1]
    asyncio.run(agent.handle(messages_for(chunk)))
    records = [orjson.loads(v) for t, _, v, _ in producer.sent if t == "out"]
    assert len(records) == 3 and all(len(r["tokens"]) == MAX_OUTCOME_TOKENS for r in records)
    assert [r["seq"] for r in records] == [0, MAX_OUTCOME_TOKENS, 2 * MAX_OUTCOME_TOKENS]
    assert [r["layers"][0]["pos"] for r in records] == [0, MAX_OUTCOME_TOKENS, 2 * MAX_OUTCOME_TOKENS]


def test_a_batch_arriving_while_faust_rebalances_or_restores_windows_is_not_routed():
    agent, producer, control, _ = agent_for()
    msgs = messages_for(corpus(10))
    control.rebalancing = True  # quiet(): rebalance in progress or recovery not done
    assert asyncio.run(agent.handle(msgs)) is None
    assert producer.sent == [] and agent.continuity.committable() == {} and agent.counters.dropped_quiet == len(msgs)
    control.rebalancing = False
    asyncio.run(agent.handle(msgs))  # Faust delivers them again from the committed offset
    assert agent.continuity.committable() == {0: len(msgs)}


class FailingWindows(ContextWindowTable):
    def __init__(self, fail: int) -> None:
        super().__init__({}, 4, 600.0)
        self.fail = fail

    async def write(self, windows):  # type: ignore[override]
        if self.fail:
            self.fail -= 1
            raise KafkaTimeoutError()
        await super().write(windows)


def test_a_batch_failing_after_admission_is_rewound_and_routed_again():
    agent, producer, control, _ = agent_for()
    agent.windows = FailingWindows(fail=1)
    msgs = messages_for(corpus(10))
    asyncio.run(agent.handle(msgs))
    assert agent.continuity.committable() == {0: 0} and control.seeks == [{0: 0}]  # nothing finished
    asyncio.run(agent.handle(msgs))  # the re-fetch after the seek
    assert agent.continuity.committable() == {0: len(msgs)}


def test_a_dead_letter_too_large_is_recognised_when_faust_wraps_the_error():
    from faust.exceptions import ProducerSendError

    try:
        try:
            raise MessageSizeTooLargeError()
        except MessageSizeTooLargeError as inner:
            raise ProducerSendError("Error while sending") from inner
    except ProducerSendError as wrapped:
        error = wrapped
    agent, producer, _, _ = agent_for(fail=1, error=error)
    asyncio.run(agent.publish(BatchOutput(deadletters=[DeadLetter(b"k", b"x" * 100, "r", 0, 1)])))
    assert producer.sent[0][3]["var-truncated-from"] == b"100"


class SlowStoreWrite:
    """Wraps the processor's store: its write logs when it starts and ends, and yields to the
    event loop in between (as a Redis round trip does), or fails with ``error``."""

    def __init__(self, store: Any, log: list[str], error: Exception | None = None) -> None:
        self.store, self.log, self.error = store, log, error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def write(self, *args: Any) -> None:
        self.log.append("cache write starts")
        await asyncio.sleep(0.01)
        if self.error is not None:
            raise self.error
        await self.store.write(*args)
        self.log.append("cache write ends")


def test_the_cache_write_runs_while_outcomes_are_published_and_ends_before_the_windows():
    agent, producer, control, log = agent_for()

    async def acked_later(topic: str, key: bytes | None, value: bytes, headers: Any) -> asyncio.Future:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.005, lambda: (log.append(f"ack {topic}"), future.set_result(None)))
        return future

    agent.send = acked_later
    inner = agent.processor.store
    agent.processor.store = SlowStoreWrite(inner, log)
    msgs = messages_for(corpus(20))
    asyncio.run(agent.handle(msgs))
    start, end, first_ack = log.index("cache write starts"), log.index("cache write ends"), log.index("ack out")
    assert start < first_ack < end < log.index("window")  # concurrent with the publish, done before step 5
    assert len(inner.cache) > 0 and agent.continuity.committable() == {0: len(msgs)}


def test_a_failing_cache_write_loses_no_outcome_and_finishes_the_batch():
    agent, producer, control, log = agent_for()
    agent.processor.store = SlowStoreWrite(agent.processor.store, log, RuntimeError("a bug in the store"))
    msgs = messages_for(corpus(20))
    asyncio.run(agent.handle(msgs))
    assert sum(1 for t, *_ in producer.sent if t == "out") == len(msgs)
    assert agent.continuity.committable() == {0: len(msgs)} and "window" in log


def test_a_graceful_stop_waits_for_the_batch_in_progress_then_commits_it_even_though_quiet():
    """wrap_up (at a revoke and before a graceful stop): the batch being routed finishes first,
    then the frontier is committed although the flow is stopped -- so the next owner does not
    route again what this worker finished since its last timer commit."""
    from pipeline.stream.app import wrap_up

    agent, producer, control, log = agent_for()
    msgs = messages_for(corpus(20))
    release = asyncio.Event()

    async def slow_send(*msg: Any) -> asyncio.Future:
        await release.wait()  # the broker has not acknowledged yet
        return await producer.send(*msg)

    agent.send = slow_send

    async def main() -> None:
        batch = asyncio.create_task(agent.handle(msgs))
        await asyncio.sleep(0.01)
        stopping = asyncio.create_task(wrap_up(agent))
        await asyncio.sleep(0.01)
        assert not stopping.done() and control.commits == []
        control.rebalancing = True  # Faust stopped the flow: quiet from now on
        release.set()
        await batch
        await asyncio.wait_for(stopping, 5)

    asyncio.run(main())
    assert control.commits == [{0: len(msgs)}]
    assert log[-1] == f"commit {[(0, len(msgs))]}"
