"""A zombie's late window write does not move a stream's window back.

A worker frozen past its session timeout resumes before it learns that the group moved on, and
finishes its batch: it writes windows to the changelog after the new owner's newer ones (Kafka
fences its commits, not its changelog sends). Here the zombie's record is written by hand -- a
window of stream S from half a stream ago, exactly what such a worker would have held -- and a
rebalance (a second worker joins) makes both workers restore their windows from the changelog.
Every outcome after it must still carry the context the corpus gives: with Faust's restore (last
record wins) stream S's next events got the stale window's context."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.engine.events import PAD_TOKEN
from pipeline.stream.collector import Collected
from pipeline.stream.context_windows import key_partition
from pipeline.settings import Settings
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.producer import produce_chunks, rechunk
from pipeline.stream.topics import wait_for_group

from .harness import check_contexts, make_harness

pytestmark = pytest.mark.integration

SPEC = SyntheticSpec(vocab_size=1000, num_streams=6, tokens_per_stream=600, seed=21)


def stale_window(chunks: list, stream: str, seq: int, window: int) -> list[int]:
    """The window record of ``stream`` right after ``seq``: [last_seq, last_offset, *W-1 tokens]."""
    tokens = [t for c in chunks if c.stream == stream for t in c.tokens][:seq + 1]
    tail = ([PAD_TOKEN] * (window - 1) + tokens)[-(window - 1):]
    return [seq, 0, *tail]


async def write_changelog(s: Settings, key: bytes, value: list[int]) -> None:
    """One record on the windows changelog, on the partition of ``key``, as a worker writes it."""
    producer = KafkaAccess.from_settings(s).producer()
    await producer.start()
    try:
        await producer.send_and_wait(f"{s.app_id}-windows-changelog", orjson.dumps(value), key=key,
                                     partition=key_partition(key, s.partitions))
    finally:
        await producer.stop()


def test_a_late_window_write_from_a_zombie_does_not_move_the_window_back(kafka_bootstrap, redis_url, tmp_path):
    h = make_harness(kafka_bootstrap, redis_url, tmp_path, SPEC)
    s = h.settings
    half = len(h.chunks) // 2
    first, second = h.chunks[:half], h.chunks[half:]
    stream = first[-1].stream
    routed_seq = max(c.first_seq + len(c) - 1 for c in first if c.stream == stream)
    assert routed_seq > 100, "the stream must have routed far enough for a window from its past"
    h.start_routers(1)
    try:
        async def run() -> Collected:
            got = Collected()
            await produce(first)
            await h.collect(expected=sum(len(c) for c in first), idle_timeout_s=60, got=got)
            await write_changelog(s, stream.encode(), stale_window(h.chunks, stream, routed_seq // 2, s.context_window))
            h.pool.start("router-late")  # the rebalance: both workers restore their windows
            assert await wait_for_group(s.kafka_bootstrap, s.app_id, 2, 90), h.worker_logs()
            await produce(second)
            await h.collect(idle_timeout_s=60, got=got)
            return got

        async def produce(chunks: list) -> None:
            await produce_chunks(rechunk(chunks, 4), s.kafka_bootstrap, s.topic_tokens)
        got = asyncio.run(run())
    finally:
        h.pool.stop_all()
    assert got.distinct == h.tokens, f"missing {h.missing(got)[:10]}\n{h.worker_logs()}"
    check_contexts(h, got.outcomes())
