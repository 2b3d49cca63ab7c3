"""A bench case removes what it made: its topics (Faust's changelog included) and its Redis
namespace -- and nothing of a neighbouring namespace whose name starts the same."""
from __future__ import annotations

import asyncio
import time

import pytest
import redis

from pipeline.bench.pipeline_bench import discard_run
from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.stream.topics import started_admin

from .harness import make_harness

pytestmark = pytest.mark.integration


async def _topics(bootstrap: str) -> set[str]:
    admin = await started_admin(bootstrap)
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def _run_topics(topics: set[str], settings) -> set[str]:
    """The run's topics: named ``<topic>-<run id>`` (scoped_settings) or ``<app id>-...`` (Faust's)."""
    run_id = settings.app_id.rsplit("-", 1)[-1]
    return {t for t in topics if t.endswith(f"-{run_id}") or t.startswith(f"{settings.app_id}-")}


def test_a_finished_case_leaves_no_topic_and_no_key(kafka_bootstrap, redis_url, tmp_path):
    h = make_harness(kafka_bootstrap, redis_url, tmp_path, SyntheticSpec(vocab_size=200, num_streams=4,
                                                                         tokens_per_stream=300, seed=3))
    s = h.settings
    client = redis.Redis.from_url(redis_url)
    neighbour = f"var:{s.namespace}x:kept"  # namespace "<ns>x": must survive the drop of "<ns>"
    client.set(neighbour, b"1")
    h.start_routers(1)
    try:
        asyncio.run(h.produce(message_size=8))
        got = asyncio.run(h.collect())
        assert not h.missing(got), h.worker_logs()
    finally:
        h.pool.stop_all()
    made = _run_topics(asyncio.run(_topics(kafka_bootstrap)), s)
    assert {s.topic_tokens, s.topic_outcomes, s.topic_deadletter, s.topic_certificates} <= made
    assert any("changelog" in t for t in made), made
    assert list(client.scan_iter(match=f"var:{s.namespace}:*"))

    asyncio.run(discard_run(s))

    deadline = time.monotonic() + 20  # the broker drops deleted topics from its metadata shortly after
    while (left := _run_topics(asyncio.run(_topics(kafka_bootstrap)), s)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left
    assert not list(client.scan_iter(match=f"var:{s.namespace}:*"))
    assert client.get(neighbour) == b"1"
    client.delete(neighbour)
