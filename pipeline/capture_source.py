"""Where a capture's outcomes come from: an outcome export file or the outcomes topic.

:func:`load_outcomes` is the ONE entry point (meant to be unified with the verifier's reader):

* ``PATH``: JSON Lines, one outcome record per line -- exactly the value bytes of the outcomes
  topic (:func:`pipeline.outcomes.decode_outcome`); blank lines are skipped. A line that is not a
  valid outcome is an error naming the line number.
* ``kafka:TOPIC``: every partition of ``TOPIC`` from its beginning up to the end offsets read
  when the command starts (messages produced later are left out), via aiokafka; an invalid
  message is an error naming partition and offset. If nothing arrives for ``idle_s`` seconds
  before the end offsets are reached, that is an error too (a partial read would look like a
  capture with gaps).

Rows come back in arrival order, duplicates included: sorting and de-duplication belong to
:func:`pipeline.capture.build_capture`, which counts what it drops.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from pipeline.capture import CaptureError
from pipeline.outcomes import OutcomeError, Outcomes, decode_outcome
from pipeline.settings import Settings

KAFKA_PREFIX = "kafka:"


def _decode(raw: bytes, where: str) -> Outcomes:
    try:
        return decode_outcome(raw)
    except OutcomeError as exc:
        raise CaptureError(f"{where}: {exc}") from None


def _concat(parts: list[Outcomes], source: str) -> Outcomes:
    try:
        return Outcomes.concat(parts)
    except ValueError as exc:
        raise CaptureError(f"{source}: {exc}") from None


def read_outcome_file(path: str | Path, progress: bool = False) -> Outcomes:
    """Every outcome of a JSON Lines export, in file order (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise CaptureError(f"no such outcome file: {p}")
    parts = []
    try:
        with open(p, "rb") as handle, tqdm(unit="rec", unit_scale=True, file=sys.stderr, disable=not progress,
                                           desc="outcomes") as bar:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    parts.append(_decode(line, f"{p} line {number}"))
                    bar.update(1)
    except OSError as exc:
        raise CaptureError(f"cannot read {p}: {exc.strerror or exc}") from None
    return _concat(parts, str(p))


async def read_outcome_topic(topic: str, make_consumer: Callable[[], Any], idle_s: float = 10.0,
                             progress: bool = False) -> Outcomes:
    """Every outcome of ``topic`` up to its end offsets at the start; ``make_consumer()`` builds an
    unstarted aiokafka consumer without a group (inside the running loop; started and stopped here)."""
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaConnectionError

    consumer = make_consumer()
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        raise CaptureError(f"cannot reach Kafka ({str(exc).splitlines()[0]})") from None
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise CaptureError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp for tp in tps if end[tp] > begin[tp]}
        parts: list[Outcomes] = []
        last = time.monotonic()
        with tqdm(total=sum(end[tp] - begin[tp] for tp in tps), unit="msg", unit_scale=True, file=sys.stderr,
                  disable=not progress, desc=f"{KAFKA_PREFIX}{topic}") as bar:
            while left:
                batches = await consumer.getmany(*left, timeout_ms=500, max_records=10_000)
                for tp, records in batches.items():
                    fresh = [r for r in records if r.offset < end[tp]]
                    parts.extend(_decode(r.value, f"{KAFKA_PREFIX}{topic} partition {tp.partition} offset {r.offset}")
                                 for r in fresh)
                    bar.update(len(fresh))
                if any(batches.values()):
                    last = time.monotonic()
                left = {tp for tp in left if await consumer.position(tp) < end[tp]}
                if left and time.monotonic() - last > idle_s:
                    short = sum(end[tp] - await consumer.position(tp) for tp in left)
                    raise CaptureError(f"{KAFKA_PREFIX}{topic}: nothing arrived for {idle_s:g} s with {short} "
                                       "message(s) left before the end offsets")
    finally:
        await consumer.stop()
    return _concat(parts, f"{KAFKA_PREFIX}{topic}")


def load_outcomes(source: str, settings: Settings, idle_s: float = 10.0, progress: bool = False) -> Outcomes:
    """The outcomes of ``source`` (a file path or ``kafka:TOPIC``) in arrival order, duplicates
    included; :class:`~pipeline.capture.CaptureError` (one line) for anything unreadable."""
    if not source.startswith(KAFKA_PREFIX):
        return read_outcome_file(source, progress)
    topic = source[len(KAFKA_PREFIX):]
    if not topic:
        raise CaptureError("kafka:TOPIC needs a topic name")
    from aiokafka import AIOKafkaConsumer

    def make_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_bytes=16 * 1024 * 1024)

    return asyncio.run(read_outcome_topic(topic, make_consumer, idle_s, progress))
