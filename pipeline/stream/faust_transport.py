"""Faust's Kafka consumer, delivering each fetched batch under one flow-suspension wait.

faust-streaming's ``Consumer._drain_messages`` hands every fetched message to the conductor as
``await self.wait_first(callback(message), self.suspend_flow.wait())``: per message it wraps the
callback in a task, starts three more waiters (suspension, stopped, crashed), runs an
``asyncio.wait`` and cancels the losers -- so that a rebalance (``stop_flow`` sets
``suspend_flow``) can interrupt a callback blocked on a full stream buffer. Those four tasks are
most of Faust's per-message cost: a bare agent with ``take(1000)`` reads ~15k per-token messages/s
on the 2-vCPU machine, and ~25k with the waits taken per batch (upstream: faust-streaming/faust#229,
the same ``wait_first`` per message; robinhood/faust#563, "Message consumption is slow").

:class:`BatchDrainConsumer` keeps the loop's contract and takes the wait once per fetched batch:
the whole batch is delivered, in the fetched order, by one coroutine raced against the
suspension, and the tests Faust's lazy ``getmany`` makes per record (flow still active, same
consumer generation, partition not paused for a seek) are made as each record is handed over
(:func:`deliver_batch`). What a suspension does is unchanged: the callback in progress is
cancelled and the batch's remaining messages are not delivered -- Faust's own loop drops them
too (their waits are won by the already-set event). Faust seeks to the committed offsets when the flow resumes after a
rebalance, and the router agent admits only contiguous offsets and seeks at gaps
(:mod:`pipeline.stream.continuity`), so an undelivered message comes again. The one difference:
the read offsets of undelivered messages are not advanced (Faust advances them), so a message
fetched again is never taken for a repeat.

A fetch that returns after the flow stopped gives its records back
(:class:`GiveBackConsumerThread`). A fetch is issued while the flow runs and waits up to a second
for records, so it can span a whole rebalance: it then returns records of the *new* assignment --
the table's changelog partitions read from the log start -- while the flow is still stopped, and
Faust's ``getmany`` drops them. When that happens just after the table recovery has sought
its changelog partitions, their position is already past every record the recovery waits for, and
the worker never becomes ready: ``No event received for active tp ... since recovery start`` (two
sightings in the chaos suite; faust-streaming/faust#74 describes the same hang). Logged in 11
``join``/``leave`` runs: 2 had such a fetch, returning 3--4 ms *before* the recovery's seek,
which rescued it. Here the thread seeks each partition of such a fetch back to its first returned
offset, in the same step as the fetch (no other seek can come between), and the round ends
without Faust's seek to the committed offsets (a 1.5--2.5 s stall of the recovery, measured).

Two waits of Faust's fetch loop are shortened as well. When stream buffers are full, Faust
leaves their partitions out of the fetch (back-pressure, faust-streaming/faust#53) and the
fetch of the remaining ones waits its whole second for records -- so a buffer that drains in
0.1 s stays unfed for the rest of it; with every partition out, Faust sleeps that second.
Measured in a per-token router worker: a second-long fetch after every ~8,000 messages, the
agent idle ~0.9 s of it. Here a fetch waits at most :data:`BUFFERED_FETCH_TIMEOUT_S` while
some partition is out, and with every partition out the next fetch starts when a buffer drains.

:class:`VarFaustApp` is a ``faust.App`` whose consumer transport uses it; :class:`FaustIntakeApp`
keeps Faust's own intake with the give-back alone (``VAR_INTAKE=faust``). The producer transport
is Faust's own.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Awaitable, Callable, Mapping, MutableMapping, Sequence, cast

import faust
from aiokafka import TopicPartition
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.transports import TransportT
from mode import Service

YIELD_EVERY = 100  # messages delivered between two yields to the event loop (Faust's own figure)
FETCH_TIMEOUT_S = 1.0  # a fetch waits this long for records (Faust's own figure)
BUFFERED_FETCH_TIMEOUT_S = 0.02  # ... while some partitions are paused for a full stream buffer


class GiveBackConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose thread gives back a fetch that returned into a stopped flow
    (:class:`GiveBackConsumerThread`); the router worker's consumer under either intake."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return GiveBackConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        records, active = await super()._wait_next_records(timeout)
        if not records and not self.flow_active:
            # Nothing fetched, or given back: no position moved, so Faust's seek of every
            # partition to its committed offset ("getmany called while flow not active") has
            # nothing to undo; it costs one request per partition, in sequence.
            return None, active
        return records, active


class BatchDrainConsumer(GiveBackConsumer):
    """Faust's aiokafka consumer with one ``wait_first`` per fetched batch (see module docstring)."""

    async def _drain_messages(self, fetcher: Any) -> None:  # the Fetcher service that runs it
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                # While a stream buffer is full its partitions are left out of the fetch, and
                # a fetch of the others waits up to its timeout for records: keep it short then,
                # so a partition whose buffer drained is fetched again soon (Faust waits 1 s).
                timeout = BUFFERED_FETCH_TIMEOUT_S if self._buffered_partitions else FETCH_TIMEOUT_S
                fetched = self.getmany(timeout=timeout)
                await self.sleep(0)  # as Faust: getmany can return at once, round after round
                if not self.should_stop:
                    batch = [item async for item in fetched]
                    if batch:
                        await self.wait_first(self._deliver(batch), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek to the committed offsets, which it makes before every resume of the
        streams (``perform_seek``), and for which it drops what a fetch returned while the flow was
        stopped or the generation moved (``Consumer.getmany``). aiokafka's seek skips a partition
        whose committed offset is 0 or missing (``if offset and offset > 0``,
        aio-libs/aiokafka#1003): the partitions of a group that has committed nothing yet. Their
        position stays past the dropped records, which then come only once the router's stall
        check seeks, 3 s later (measured: 5 runs of 18 of a new four-worker group on a
        finished backlog, 58k tokens/s against 196k--252k). Here those partitions are sought to
        the log start, where a new group starts (``auto_offset_reset=earliest``); changelog
        partitions are left to the table recovery, which seeks them itself."""
        committed = await super().seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if not offset and not self._is_changelog_tp(tp)]
        if fresh:
            await self._thread.seek_to_beginning(*fresh)
        return committed

    def on_buffer_drop(self, tp: TP) -> None:
        """A stream buffer drained below its low mark: fetch for ``tp`` again, at once."""
        super().on_buffer_drop(tp)
        self._buffer_drained.set()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        """Faust's, except when every partition is paused for full stream buffers: Faust then
        sleeps a whole second (an agent that drains its buffer in 0.1 s idles for 0.9). Here the
        wait ends when a buffer drains (``on_buffer_drop``) and that partition is fetched at
        once; if none drained within ``timeout``, nothing is fetched this round."""
        if self._all_buffered():
            drained = self._buffer_drained
            drained.clear()
            await self.wait_first(drained.wait(), timeout=timeout)
            if self._all_buffered():
                return {}, self._get_active_partitions()
        return await super()._wait_next_records(timeout)

    def _all_buffered(self) -> bool:
        """Flow is on and every assigned partition is out of the fetch for a full buffer."""
        return (self.flow_active and not self.app.client_only and bool(self._buffered_partitions)
                and not self._get_active_partitions())

    @cached_property
    def _buffer_drained(self) -> asyncio.Event:
        """Set whenever a stream buffer drains below its low mark (made on first use, in the loop)."""
        return asyncio.Event()

    async def _deliver(self, batch: Sequence[tuple[TP, Message]]) -> None:
        """Faust's per-message steps for a batch (see :func:`deliver_batch`)."""
        acks_enabled_for = self.app.topics.acks_enabled_for
        generation = self.app.consumer_generation_id

        async def on_gap(tp: TP, start: int, end: int, topic: str) -> None:
            if acks_enabled_for(topic):
                await self._add_gap(tp, start, end)

        def fetching(tp: TP) -> bool:  # getmany's own test, made when a record is handed over
            return tp in self._get_active_partitions() or tp in self._buffered_partitions

        def current() -> bool:
            return self.flow_active and self.app.consumer_generation_id == generation

        await deliver_batch(batch, Delivery(self.callback, self._read_offset, on_gap, self._maybe_commit,
                                            fetching, current))

    async def _maybe_commit(self) -> None:
        """Faust's ``broker_commit_every``: commit after that many acknowledged messages."""
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()


@dataclass(frozen=True)
class Delivery:
    """Where :func:`deliver_batch` hands messages and what it asks before each one."""

    callback: Callable[[Message], Awaitable[Any]]  # the conductor's on_message
    read_offsets: MutableMapping[TP, int | None]
    on_gap: Callable[[TP, int, int, str], Awaitable[None]]  # (tp, first missing, offset, topic)
    before_each: Callable[[], Awaitable[None]]
    fetching: Callable[[TP], bool]  # False: the partition was paused (a seek); skip its records
    current: Callable[[], bool]  # False: the flow stopped or the generation moved; stop


async def deliver_batch(batch: Sequence[tuple[TP, Message]], to: Delivery) -> None:
    """Deliver ``batch`` in order, as Faust's ``getmany`` and drain loop do record by record:
    stop once the flow stops or the consumer generation moves; skip the records of a partition
    paused meanwhile, and those below their partition's read offset (repeats); report a jump
    past ``read offset + 1`` to ``on_gap``; run ``before_each``, the callback, then move the read
    offset. Yields to the loop every :data:`YIELD_EVERY` messages."""
    for i, (tp, message) in enumerate(batch):
        if i and i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if not to.current():
            return
        offset = message.offset
        read = to.read_offsets.get(tp)
        if not to.fetching(tp) or (read is not None and offset < read):
            continue
        if read and offset - read > 1:
            await to.on_gap(tp, read + 1, offset, message.topic)
        await to.before_each()
        await to.callback(message)
        to.read_offsets[tp] = offset


class GiveBackConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread; a fetch that returns once the flow has stopped gives its
    records back (see the module docstring)."""

    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                               max_records=max_records)
        if records and not self.consumer.flow_active:
            give_back(consumer, records)
            self.log.info("A fetch returned after the flow stopped: %d records of %d partitions given back",
                          sum(len(batch) for batch in records.values()), len(records))
            return {}
        return records


    def verify_event_path(self, now: float, tp: TP) -> None:
        """Faust's livelock check of one partition, except while the partition has no position.

        Faust reads ``tp_state.position`` and expects None when there is none, but aiokafka
        asserts there while a partition awaits an offset reset (a new assignment, a seek to the
        log start): a router worker crashed in CI with that ``AssertionError`` from
        ``_commit_livelock_detector`` (the detector crashing the app on a state it did not
        expect, as in faust-streaming/faust#446). Such a partition has nothing to verify yet; an
        ``AssertionError`` is swallowed only when the partition has (by then) lost its position."""
        state = self._partition_state(tp)
        if state is not None and not state.has_valid_position:
            return None
        try:
            super().verify_event_path(now, tp)
        except AssertionError:
            state = self._partition_state(tp)
            if state is None or state.has_valid_position:
                raise
        return None

    def _partition_state(self, tp: TP) -> Any:
        """aiokafka's state of ``tp`` in the current assignment (None when not assigned)."""
        subscription = self._ensure_consumer()._fetcher._subscriptions.subscription
        if subscription is None or subscription.assignment is None:
            return None
        return subscription.assignment.state_value(TopicPartition(tp.topic, tp.partition))


def give_back(consumer: Any, records: Mapping[Any, Sequence[Any]]) -> None:
    """Seek every partition of ``records`` (a fetch's result, just returned by ``consumer``) back
    to its first record's offset, as if the fetch had not happened. Runs on the consumer thread
    with no await between the fetch and the seeks."""
    for tp, batch in records.items():
        if batch:
            consumer.seek(tp, batch[0].offset)


class GiveBackTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`GiveBackConsumer` (Faust's own intake)."""

    Consumer = GiveBackConsumer


class BatchDrainTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`BatchDrainConsumer`."""

    Consumer = BatchDrainConsumer


class VarFaustApp(faust.App):
    """A ``faust.App`` that consumes through :class:`BatchDrainTransport`."""

    def _new_transport(self) -> TransportT:
        return BatchDrainTransport(self.conf.broker_consumer, self)


class FaustIntakeApp(faust.App):
    """A ``faust.App`` with Faust's own intake (``VAR_INTAKE=faust``), consuming through
    :class:`GiveBackTransport`."""

    def _new_transport(self) -> TransportT:
        return GiveBackTransport(self.conf.broker_consumer, self)
