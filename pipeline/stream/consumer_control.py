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
thread* (``Consumer.seek_wait`` -> ``call_thread``), then resume -- unless a rebalance started
meanwhile, in which case Faust itself seeks to the committed offsets and resumes.

Commits: the token topic is declared with ``acks=False``, so Faust neither records acks for it
nor "fills gaps" between delivered offsets (it takes any offset jump for log compaction and
commits over it, faust-streaming/faust#606, #312, #378) -- the token topic is not compacted
and every offset is an event. The agent commits the contiguous frontier of what it routed
itself, through Faust's own commit path (``Consumer._commit_offsets``: producer flush -- so
outcomes and window changelog records are durable first --, only assigned partitions, then
the commit on the consumer thread).
"""
from __future__ import annotations

import logging
from typing import Any

from faust.types import TP

log = logging.getLogger(__name__)


class ConsumerControl:
    """Seeks and commits on one topic of a Faust app's consumer (see module docstring)."""

    def __init__(self, app: Any, topic: str) -> None:
        self.app, self.topic = app, topic
        self.seeks = 0
        self.commits = 0

    def generation(self) -> int | None:
        return self.app.consumer_generation_id

    def quiet(self) -> bool:
        """True while the consumer is mid-rebalance or flow is stopped (no seeks then)."""
        return bool(self.app.rebalancing) or not self.app.flow_control.is_active()

    def assigned(self) -> list[int]:
        """Partitions of the topic this worker owns now."""
        return sorted(tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.topic)

    async def seek(self, seeks: dict[int, int]) -> bool:
        """Pause, seek on the consumer thread, resume; False (nothing resumed) if a rebalance
        began meanwhile -- the new generation starts from committed offsets anyway."""
        if not seeks or self.quiet():
            return False
        generation = self.generation()
        tps = {TP(self.topic, p): offset for p, offset in seeks.items()}
        consumer = self.app.consumer
        consumer.pause_partitions(tps)
        try:
            await consumer.seek_wait(tps)
        except Exception as exc:  # the partition may have been revoked in between
            log.warning("seek %s failed (%r); the next generation starts from committed offsets", seeks, exc)
            return False
        if self.quiet() or self.generation() != generation:
            return False
        consumer.resume_partitions(tps)
        self.seeks += len(tps)
        return True

    async def commit(self, offsets: dict[int, int]) -> bool:
        """Commit ``partition -> next offset to route`` after flushing the producer."""
        if not offsets:
            return False
        tps = {TP(self.topic, p): offset for p, offset in offsets.items()}
        done = bool(await self.app.consumer._commit_offsets(tps))
        self.commits += done
        return done
