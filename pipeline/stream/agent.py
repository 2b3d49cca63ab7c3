"""One micro-batch of the router agent, in order, without Faust: testable with twins.

:meth:`RouterAgent.handle` is the only place that orders the steps whose order makes the
pipeline lossless:

1. drop stale messages (older consumer generation) and repeats;
2. :class:`~pipeline.stream.continuity.OffsetContinuity` admits only contiguous offsets and
   asks for seeks at gaps (done through :class:`~pipeline.stream.consumer_control.ConsumerControl`);
3. route (:class:`~pipeline.stream.processor.RouterProcessor`; a bug dead-letters the batch);
4. publish outcomes and dead letters and wait until the broker acknowledged all of them
   (a failed send is retried until it succeeds: nothing after this step runs before); the
   batch's decision-cache write to the routing store runs meanwhile (nothing waits on it but
   the next batch); then the window certificates the batch completed
   (:mod:`pipeline.stream.certify`) -- a batch whose outcomes were not acknowledged is recorded
   in the certificate as void. They are acknowledged before the windows move, so a worker
   killed at any moment leaves at most its open range unsealed: a batch whose windows were
   written is always certified;
5. write each touched stream's window once, waiting for its changelog record's acknowledgement;
6. only then mark the batch's offsets finished -- the commit timer
   (:meth:`RouterAgent.commit`) commits that frontier after a producer flush.

A message cut off at a gap or dropped as stale is never acknowledged, never committed: it
comes again after the seek (or the next owner reads it from the committed offset).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from pipeline.engine.profile import StageClock, lap

from .certify import Record, WorkerCertifier
from .continuity import OffsetContinuity
from .processor import BatchOutput, DeadLetter, InMessage, RouterProcessor
from .context_windows import ContextWindowTable

log = logging.getLogger(__name__)

Outgoing = tuple[str, "bytes | None", bytes, "dict[str, bytes] | None"]
Send = Callable[[str, "bytes | None", bytes, "dict[str, bytes] | None"], Awaitable["asyncio.Future[object]"]]
TRUNCATED_DEADLETTER_BYTES = 64 * 1024


class Control(Protocol):
    async def seek(self, seeks: dict[int, int]) -> bool: ...
    async def commit(self, offsets: dict[int, int]) -> bool: ...
    def assigned(self) -> list[int]: ...
    def quiet(self) -> bool: ...
    def generation(self) -> int | None: ...


@dataclass
class Topics:
    outcomes: str
    deadletter: str
    source: str
    certificates: str = "var-certificates"


@dataclass
class AgentCounters:
    batches: int = 0
    send_retries: int = 0
    commits: int = 0
    dropped_quiet: int = 0


class RouterAgent:
    """Routes Faust micro-batches losslessly (see module docstring)."""

    def __init__(self, processor: RouterProcessor | None, continuity: OffsetContinuity, control: Control,
                 windows: ContextWindowTable, send: Send, topics: Topics, retry_s: float = 0.5,
                 certifier: WorkerCertifier | None = None) -> None:
        """``processor=None`` is passthrough mode: each message is forwarded unrouted.
        ``certifier``: seals the routed decisions into window certificates (None: none)."""
        self.processor, self.continuity, self.control = processor, continuity, control
        self.certifier = certifier
        self.windows, self.send, self.topics, self.retry_s = windows, send, topics, retry_s
        self.counters = AgentCounters()
        self.last_batch_at = time.monotonic()
        self._unsent: list[Record] = []  # sealed certificates not yet sent
        self.idle = asyncio.Event()  # clear while a batch is being handled (the revoke waits for it)
        self.idle.set()
        self._handled_at: float | None = None  # perf_counter when the last batch was handled

    async def handle(self, messages: list[InMessage]) -> BatchOutput | None:
        """Steps 2-6 for one batch of fresh messages (sorted by partition, offset).

        While Faust rebalances or restores the windows (``control.quiet()``) the batch is
        dropped unrouted: nothing past it is committed, and Faust seeks every partition to its
        committed offset before it resumes the streams, so the messages come again. If a step
        after admission fails, the partitions are rewound to what was finished and re-fetched.
        """
        self.idle.clear()
        profile = self.profile
        if profile is not None and self._handled_at is not None:
            profile.charge("between batches", time.perf_counter() - self._handled_at)
        try:
            if self.control.quiet():
                self.counters.dropped_quiet += len(messages)
                log.info("dropping %d messages that arrived while the windows are being restored", len(messages))
                return None
            self.continuity.observe_generation(self.control.generation())
            try:
                admitted, seeks = await self.continuity.admit(messages)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:  # start offsets unknown: route nothing
                log.warning("cannot look up where routing starts (%r); dropping %d messages", exc, len(messages))
                return None
            await self.control.seek(seeks)
            if not admitted:
                return None
            return await self._finish(admitted)
        finally:
            self._handled_at = time.perf_counter()
            self.idle.set()

    async def _finish(self, admitted: list[InMessage]) -> BatchOutput:
        """Route, publish, write windows, mark finished -- or rewind and re-fetch on failure."""
        try:
            out = BatchOutput(outcomes=[(m.key, m.value) for m in admitted]) if self.processor is None \
                else await self._route(admitted)
            await self._publish_certified(out)
            lap(self.profile, "kafka send")
            await self.windows.write(out.windows)
            lap(self.profile, "window writes")
        except BaseException as exc:
            seeks = self.continuity.rewind({m.partition for m in admitted})
            log.error("a batch of %d messages failed after admission (%r); re-fetching from %s", len(admitted),
                      exc, seeks)
            if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
                raise
            await self.control.seek(seeks)
            return BatchOutput()
        self.continuity.routed(admitted)
        self.counters.batches += 1
        self.last_batch_at = time.monotonic()
        return out

    @property
    def profile(self) -> StageClock | None:
        """The stage clock of the processor's engine, if one is attached (see :mod:`pipeline.engine.profile`)."""
        return self.processor.engine.profile if self.processor is not None else None

    async def _route(self, messages: list[InMessage]) -> BatchOutput:
        assert self.processor is not None
        try:
            return await self.processor.process(messages, self.windows.lookup, defer_write=True)
        except Exception as exc:  # a bug must not kill the agent or lose the batch silently
            log.exception("routing a batch of %d messages failed; dead-lettering it", len(messages))
            return BatchOutput(deadletters=[DeadLetter(m.key, m.value, f"internal error: {exc!r}", m.partition,
                                                       m.offset) for m in messages])

    async def _publish_certified(self, out: BatchOutput) -> None:
        """Publish the batch (and run its cache write meanwhile), then the certificates it
        completed (void ones if it failed)."""
        try:
            await _all(self.publish(out), *([_cache_write(out.cache_write)] if out.cache_write is not None else []))
        except BaseException:
            if self.certifier is not None and out.result is not None:
                self._unsent += self.certifier.void(out.result)
            raise
        if self.certifier is not None and out.result is not None:
            self._unsent += self.certifier.certify(out.result)
        await self.publish_certificates()

    async def publish_certificates(self, flush: bool = False) -> int:
        """Send the certificates sealed so far (``flush``: seal the open ranges first)."""
        if self.certifier is not None and flush:
            self._unsent += self.certifier.flush()
        records, self._unsent = self._unsent, []
        if records:
            await self.publish(BatchOutput(certificates=records))
        return len(records)

    async def publish(self, out: BatchOutput) -> None:
        """Send every outcome and dead letter; return once the broker acknowledged each one.

        A send that fails (broker unreachable, leader moving) is sent again after ``retry_s``
        -- only the failed ones, so acknowledged records are not duplicated.
        """
        pending: list[Outgoing] = [(self.topics.outcomes, k, v, None) for k, v in out.outcomes]
        pending += [(self.topics.deadletter, d.key, d.value, d.headers(self.topics.source)) for d in out.deadletters]
        pending += [(self.topics.certificates, k, v, None) for k, v in out.certificates]
        while pending:
            # Enqueue in order (one stream's outcomes stay in seq order), then wait for all acks.
            futures = [await self._enqueue(msg) for msg in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [(msg, res) for msg, res in zip(pending, results) if isinstance(res, BaseException)]
            for _, res in failed:
                if isinstance(res, asyncio.CancelledError):
                    raise res
            pending = [self._resizable(msg, res) for msg, res in failed]
            if pending:
                self.counters.send_retries += len(pending)
                log.warning("%d sends failed (%r); sending them again", len(pending), failed[0][1])
                await asyncio.sleep(self.retry_s)

    async def _enqueue(self, msg: Outgoing) -> "asyncio.Future[object]":
        try:
            return await self.send(*msg)
        except Exception as exc:  # failed before it was queued: a future that carries the error
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    def _resizable(self, msg: Outgoing, error: BaseException) -> Outgoing:
        """A dead letter too large for the broker is sent again truncated (the reason says so);
        anything else is sent again as it is."""
        topic, key, value, headers = msg
        too_large = _too_large(error)
        if too_large and topic == self.topics.deadletter:
            headers = dict(headers or {})
            headers["var-truncated-from"] = str(len(value)).encode()
            return topic, key, value[:TRUNCATED_DEADLETTER_BYTES], headers
        if too_large:
            raise error  # outcomes are split well below the limit (pipeline.outcomes); a bug
        return msg

    async def commit(self, during_rebalance: bool = False) -> bool:
        """Commit the finished frontier (the producer is flushed first, by the control).

        Skipped mid-rebalance unless ``during_rebalance`` -- the revoke callback, where Faust has
        already waited for the agent and the partitions are still this worker's.
        """
        if self.control.quiet() and not during_rebalance:
            return False
        # After a rebalance the frontier of the old assignment is not this worker's to commit
        # (the partitions may be another's now): forget it before the timer can commit it.
        self.continuity.observe_generation(self.control.generation())
        offsets = self.continuity.committable()
        if not offsets:
            return False
        generation = self.control.generation()
        try:
            done = await self.control.commit(offsets)
        except Exception as exc:  # a failed commit only means more redeliveries later
            log.warning("committing %s failed: %r", offsets, exc)
            return False
        if done and self.control.generation() == generation:
            self.continuity.mark_committed(offsets)
            self.counters.commits += 1
        return done

    async def check_stalls(self) -> None:
        """The periodic stall check: seek partitions whose pending records never arrive."""
        if self.control.quiet():
            return
        self.continuity.observe_generation(self.control.generation())
        try:
            seeks = await self.continuity.stalls(self.control.assigned())
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:  # a broker away: try at the next tick
            log.warning("stall check skipped: %r", exc)
            return
        await self.control.seek(seeks)


async def _cache_write(write: Callable[[], Awaitable[None]]) -> None:
    """A batch's decision-cache write. The store absorbs outages itself (degraded mode); any
    other failure is a bug, logged: the decisions are then not cached, the outcomes stand."""
    try:
        await write()
    except Exception:
        log.exception("the batch's decision-cache write failed; its decisions are not cached")


async def _all(*steps: Awaitable[object]) -> None:
    """Run ``steps`` concurrently and wait for every one of them, whatever the others do; then
    raise the first failure, if any (so that no step is left running when the batch is rewound)."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _too_large(error: BaseException) -> bool:
    """A message over the size limit -- raw, or wrapped by Faust (``ProducerSendError`` from it)."""
    while error is not None:
        if isinstance(error, MessageSizeTooLargeError):
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False
