"""What ``var verify`` reads: outcome and certificate records from a topic or an export file.

* ``kafka:TOPIC`` (or just the outcomes topic's name) -- every record from the beginning, or
  those whose timestamps fall in ``[start_ms, end_ms)``, up to the end offsets at the start of
  the read (records produced meanwhile are not waited for).
* a path -- an export: JSON Lines, one record per line, the topic's value bytes verbatim
  (``var outcomes export`` writes them, with the certificates and the table sets beside).

A bad record is an input error naming its line (file) or partition and offset (topic): a
verifier must not skip what it cannot read.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.engine.certificates import Certificate, CertificateError, decode_certificate
from pipeline.errors import VARError
from pipeline.outcomes import OutcomeError, Outcomes, decode_outcome
from pipeline.stream.kafka_access import KafkaAccess, kafka_access
from pipeline.stream.topics import TopicError, partition_ids, refusal

T = TypeVar("T")
KAFKA_PREFIX = "kafka:"


class VerifyInputError(VARError, ValueError):
    """An input ``var verify`` cannot read; one line."""


def is_topic(source: str) -> bool:
    return source.startswith(KAFKA_PREFIX)


def topic_name(source: str) -> str:
    return source[len(KAFKA_PREFIX):]


def file_lines(path: Path) -> Iterator[tuple[str, bytes]]:
    """(where, line) for every non-empty line of a JSON Lines file."""
    if not path.exists():
        raise VerifyInputError(f"{path}: no such file")
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield f"{path} line {number}", line


async def topic_records(bootstrap: KafkaAccess | str, topic: str, start_ms: int | None = None, end_ms: int | None = None,
                        progress: Callable[[int], None] | None = None) -> list[tuple[str, bytes]]:
    """(where, value) of the topic's records in the time range (all partitions, offset order)."""
    try:
        partitions = await partition_ids(bootstrap, topic)
    except TopicError as exc:
        raise VerifyInputError(str(exc)) from None
    access = kafka_access(bootstrap)
    consumer = access.consumer(group_id=None, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20,
                               fetch_max_bytes=32 << 20)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise VerifyInputError(refusal(access, exc)) from None
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        first, last = await _range(consumer, tps, start_ms, end_ms)
        for tp in tps:
            consumer.seek(tp, first[tp])
        return await _drain(consumer, first, last, progress)
    except KafkaError as exc:
        raise VerifyInputError(f"reading topic {topic} failed: {exc}") from None
    finally:
        await consumer.stop()


async def _range(consumer: AIOKafkaConsumer, tps: list[TopicPartition], start_ms: int | None, end_ms: int | None
                 ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)

    async def at(ms: int | None, default: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        if ms is None:
            return dict(default)
        found = await consumer.offsets_for_times({tp: ms for tp in tps})
        return {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}

    return await at(start_ms, begin), await at(end_ms, end)


async def _drain(consumer: AIOKafkaConsumer, first: dict[TopicPartition, int], last: dict[TopicPartition, int],
                 progress: Callable[[int], None] | None) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    todo = {tp for tp in first if first[tp] < last[tp]}
    while todo:
        batches = await asyncio.wait_for(consumer.getmany(*todo, timeout_ms=1000), timeout=60)
        for tp, records in batches.items():
            for rec in records:
                if rec.offset < last[tp] and rec.value is not None:
                    out.append((f"{tp.topic}[{tp.partition}]@{rec.offset}", rec.value))
            if records and records[-1].offset + 1 >= last[tp]:
                todo.discard(tp)
            if progress is not None:
                progress(len(records))
    return out


def decode_all(records: list[tuple[str, bytes]], decode: Callable[[bytes], T]) -> list[T]:
    """Decode every record; the first bad one is a :class:`VerifyInputError` naming where it is."""
    out = []
    for where, raw in records:
        try:
            out.append(decode(raw))
        except (OutcomeError, CertificateError) as exc:
            raise VerifyInputError(f"{where}: {exc}") from None
    return out


def outcomes_of(records: list[tuple[str, bytes]]) -> Outcomes:
    return Outcomes.concat(decode_all(records, decode_outcome))


def certificates_of(records: list[tuple[str, bytes]]) -> list[Certificate]:
    return decode_all(records, decode_certificate)


def read_records(source: str, bootstrap: KafkaAccess | str, start_ms: int | None = None, end_ms: int | None = None,
                 progress: Callable[[int], None] | None = None) -> list[tuple[str, bytes]]:
    """The raw records of a file or ``kafka:TOPIC`` source."""
    if is_topic(source):
        return asyncio.run(topic_records(bootstrap, topic_name(source), start_ms, end_ms, progress))
    return list(file_lines(Path(source)))
