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
from aiokafka.errors import KafkaConnectionError
from tqdm import tqdm

from pipeline.engine.events import EventChunk
from pipeline.engine.records import encode_chunk

from .topics import TopicError


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


async def produce_chunks(chunks: Iterable[EventChunk], bootstrap: str, topic: str, rate: float | None = None,
                         progress: bool = False, total: int | None = None) -> ProduceStats:
    """Send every chunk as one message; ``rate`` caps tokens per second."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024,
                                acks=1, enable_idempotence=False)
    try:
        await producer.start()
    except KafkaConnectionError:
        raise TopicError(f"cannot reach Kafka at {bootstrap}") from None
    stats, start = ProduceStats(), time.perf_counter()
    pending: list[asyncio.Future] = []
    with tqdm(total=total, unit="tok", unit_scale=True, file=sys.stderr, disable=not progress, desc="produce") as bar:
        try:
            for chunk in chunks:
                pending.append(await producer.send(topic, encode_chunk(chunk), key=chunk.stream.encode()))
                stats.messages += 1
                stats.tokens += len(chunk.tokens)
                bar.update(len(chunk.tokens))
                if len(pending) >= 10_000:
                    await asyncio.gather(*pending)
                    pending.clear()
                if rate:
                    ahead = stats.tokens / rate - (time.perf_counter() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
    stats.seconds = time.perf_counter() - start
    return stats


async def produce_raw(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Send raw (key, value) messages -- e.g. malformed ones, to exercise the dead-letter path."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)
