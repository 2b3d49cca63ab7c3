"""Produce token streams to Kafka: per-token or chunked messages, optional rate limit.

Keys are stream ids (UTF-8), so the default partitioner keeps a stream on one partition --
the same partition its window lives on in the router's table.
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from tqdm import tqdm

from pipeline.engine.events import EventChunk
from pipeline.engine.records import encode_chunk

from .kafka_access import KafkaAccess, kafka_access
from .topics import TopicError, refusal

MAX_REQUEST_BYTES = 1024 * 1024  # aiokafka's and the broker's default maximum message size
PRODUCER_BATCH_BYTES = 512 * 1024  # one partition's batch in a produce request (below the broker's 1 MiB)


@dataclass
class ProduceStats:
    messages: int = 0
    tokens: int = 0
    seconds: float = 0.0


def rechunk(chunks: Iterable[EventChunk], size: int) -> Iterator[EventChunk]:
    """Regroup each stream's consecutive tokens into chunks of ``size`` (the last may be shorter).

    Order within a stream is kept; a gap in seq closes the current chunk.
    """
    pending: dict[str, list] = {}
    for chunk in chunks:
        for i, token in enumerate(chunk.tokens):
            seq = chunk.first_seq + i
            buf = pending.get(chunk.stream)
            if buf is not None and buf[0] + len(buf[1]) != seq:
                yield EventChunk(chunk.stream, buf[0], tuple(buf[1]), buf[2])
                buf = None
            if buf is None:
                buf = pending[chunk.stream] = [seq, [], chunk.offset]
            buf[1].append(token)
            if len(buf[1]) == size:
                yield EventChunk(chunk.stream, buf[0], tuple(buf[1]), buf[2])
                del pending[chunk.stream]
    for stream, (seq, tokens, offset) in pending.items():
        yield EventChunk(stream, seq, tuple(tokens), offset)


Message = tuple["bytes | None", bytes]


def oversized_deadletter(key: bytes | None, value: bytes, limit: int) -> tuple[bytes, dict[str, bytes]]:
    """The dead letter for a message the broker cannot take: its first bytes and the reason."""
    reason = f"message of {len(value)} bytes is larger than the maximum message size ({limit} bytes)"
    return value[:64 * 1024], {"var-reason": reason.encode(), "var-truncated-from": str(len(value)).encode()}


async def start_producer(kafka: KafkaAccess | str) -> AIOKafkaProducer:
    """An idempotent ``acks=all`` producer (no loss or duplicates across broker failover)."""
    access = kafka_access(kafka)
    producer = access.producer(linger_ms=5, max_batch_size=PRODUCER_BATCH_BYTES, acks="all", enable_idempotence=True,
                               max_request_size=MAX_REQUEST_BYTES, request_timeout_ms=120_000)
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise TopicError(refusal(access, exc)) from None
    return producer


async def send_message(producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes,
                       deadletter_topic: str | None) -> "asyncio.Future[object]":
    """Queue one message; a message over the size limit (the producer is started with
    ``MAX_REQUEST_BYTES``) goes to ``deadletter_topic`` (with the reason) instead -- or raises
    ``TopicError`` when there is none."""
    try:
        return await producer.send(topic, value, key=key)
    except MessageSizeTooLargeError:
        if deadletter_topic is None:
            raise TopicError(f"a message of {len(value)} bytes is larger than the maximum message size") from None
        body, headers = oversized_deadletter(key, value, MAX_REQUEST_BYTES)
        headers["var-source-topic"] = topic.encode()
        return await producer.send(deadletter_topic, body, key=key, headers=list(headers.items()))


async def produce_messages(messages: Iterable[tuple[Message, int]], bootstrap: KafkaAccess | str, topic: str,
                           deadletter_topic: str | None = None, rate: float | None = None,
                           progress: bool = False, total: int | None = None) -> ProduceStats:
    """Send ``((key, value), tokens)`` items in order; ``rate`` caps tokens per second."""
    producer = await start_producer(bootstrap)
    stats, start = ProduceStats(), time.perf_counter()
    pending: list[asyncio.Future] = []
    with tqdm(total=total, unit="tok", unit_scale=True, file=sys.stderr, disable=not progress, desc="produce") as bar:
        try:
            for (key, value), tokens in messages:
                pending.append(await send_message(producer, topic, key, value, deadletter_topic))
                stats.messages += 1
                stats.tokens += tokens
                bar.update(tokens)
                if len(pending) >= 10_000:
                    await asyncio.gather(*pending)
                    pending.clear()
                if rate:
                    ahead = stats.tokens / rate - (time.perf_counter() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await asyncio.gather(*pending)
        except KafkaError as exc:  # the broker went away for longer than the producer's timeout
            raise TopicError(f"producing to {topic} failed after {stats.messages:,} messages: {exc}") from None
        finally:
            await producer.stop()
    stats.seconds = time.perf_counter() - start
    return stats


async def produce_chunks(chunks: Iterable[EventChunk], bootstrap: KafkaAccess | str, topic: str, rate: float | None = None,
                         progress: bool = False, total: int | None = None,
                         deadletter_topic: str | None = None) -> ProduceStats:
    """Send every chunk as one message (key = stream id); ``rate`` caps tokens per second."""
    items = (((c.stream.encode(), encode_chunk(c)), len(c.tokens)) for c in chunks)
    return await produce_messages(items, bootstrap, topic, deadletter_topic, rate, progress, total)


async def produce_raw(bootstrap: KafkaAccess | str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Send raw (key, value) messages -- e.g. malformed ones, to exercise the dead-letter path."""
    producer = kafka_access(bootstrap).producer()
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)
