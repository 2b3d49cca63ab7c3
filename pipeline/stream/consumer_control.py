"""What the router agent asks of Faust's consumer -- seeks and offset commits -- done safely.

Faust runs aiokafka in a separate *consumer thread* with its own event loop
(``faust.transport.drivers.aiokafka.AIOKafkaConsumerThread``); the agent runs on the main loop.
aiokafka is not thread-safe. ``app.consumer.seek()`` calls ``AIOKafkaConsumer.seek`` directly
from the caller's thread, and ``Fetcher.seek_to`` then deletes ``Fetcher._records[tp]`` while the
consumer thread may be iterating those records in ``fetched_records`` -- the ``KeyError:
TopicPartition(...)`` / "Fetcher crashed" of robinhood/aiokafka#19 (the clearing of ``_records``
during that loop is the mechanism named in robinhood/aiokafka#20). It also resolves futures
of the other loop from the wrong thread.

So every seek goes through :meth:`ConsumerControl.seek`: pause the partition in Faust's
active set (no further record of it is handed to streams), run the seek *on the consumer
thread* (``Consumer.seek_wait`` -> ``call_thread``), let the records fetched before the seek
drain (Faust's read-offset filter would otherwise drop the re-fetched ones), then resume --
unless a rebalance started meanwhile, in which case Faust itself seeks to the committed offsets
and resumes.

Commits: the token topic is declared with ``acks=False``, so Faust neither records acks for it
nor "fills gaps" between delivered offsets (it takes any offset jump for log compaction and
commits over it, faust-streaming/faust#606, #312, #378) -- the token topic is not compacted
and every offset is an event. The agent commits the contiguous frontier of what it routed
itself, through Faust's own commit path (``Consumer._commit_offsets``: producer flush -- so
outcomes and window changelog records are durable first --, only assigned partitions, then
the commit on the consumer thread).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.types import TP

log = logging.getLogger(__name__)


class ConsumerControl:
    """Seeks and commits on one topic of a Faust app's consumer (see module docstring)."""

    def __init__(self, app: Any, topic: str, settle_s: float = 0.3) -> None:
        self.app, self.topic, self.settle_s = app, topic, settle_s
        self.seeks = 0
        self.commits = 0
        self._seeking: set[int] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    def generation(self) -> int | None:
        return self.app.consumer_generation_id

    def quiet(self) -> bool:
        """True from the start of a rebalance until Faust's table recovery has finished and the
        streams are resumed, and while flow is stopped: no routing, seeks or commits then.

        Faust resumes *flow* early in recovery (to read the changelogs) and a source partition's
        records can reach the agent before its windows are restored; routing them would use
        half-restored windows. ``tables.actives_ready`` turns true only once recovery is done.
        """
        app = self.app
        return bool(app.rebalancing) or not app.tables.actives_ready or not app.flow_control.is_active()

    def assigned(self) -> list[int]:
        """Partitions of the topic this worker owns now."""
        return sorted(tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.topic)

    async def seek(self, seeks: dict[int, int]) -> bool:
        """Start one background seek per partition (see :meth:`_seek_one`); returns at once, so
        the agent keeps draining -- and dropping -- the records fetched before the seek."""
        if not seeks or self.quiet():
            return False
        for partition, offset in seeks.items():
            if partition not in self._seeking:
                self._seeking.add(partition)
                task = asyncio.ensure_future(self._seek_one(partition, offset, self.generation()))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return True

    async def _seek_one(self, partition: int, offset: int, generation: int | None) -> None:
        """Pause; seek on the consumer thread; let the records already fetched drain; resume.

        While the partition is paused, Faust hands none of its records to the streams -- except
        one that may already be on its way into a stream queue. Faust's drain loop then sets its
        read offset to that record's offset, and its filter (``offset >= read offset``) would
        drop every re-fetched record below it. So the read offset is checked after a settling
        pause and the seek repeated if it was overwritten; only then is the partition resumed.
        """
        tp = TP(self.topic, partition)
        consumer = self.app.consumer
        resumed = False
        try:
            consumer.pause_partitions({tp})
            # A partition under stream back-pressure is still handed to streams (and re-activated
            # when the pressure drops) while in this set: take it out, it is paused on purpose.
            consumer._buffered_partitions.discard(tp)
            for _ in range(5):
                await consumer.seek_wait({tp: offset})
                await asyncio.sleep(self.settle_s)
                if self.quiet() or self.generation() != generation:
                    return  # a rebalance: Faust seeks to committed offsets and resumes by itself
                if consumer._read_offset.get(tp) in (offset, None):
                    break
                log.info("partition %s: a record fetched before the seek moved the read offset; seeking again",
                         partition)
            consumer.resume_partitions({tp})
            resumed = True
            self.seeks += 1
        except Exception as exc:  # revoked meanwhile, consumer stopping
            log.warning("seek of partition %s to %s failed (%r); the stall check retries", partition, offset, exc)
        finally:
            self._seeking.discard(partition)
            if not resumed and not self.quiet() and self.generation() == generation \
                    and partition in self.assigned():
                consumer.resume_partitions({tp})  # never leave a partition paused by a failed seek

    async def commit(self, offsets: dict[int, int]) -> bool:
        """Commit ``partition -> next offset to route`` after flushing the producer."""
        if not offsets:
            return False
        tps = {TP(self.topic, p): offset for p, offset in offsets.items()}
        done = bool(await self.app.consumer._commit_offsets(tps))
        self.commits += done
        return done
