"""When a replay's collector gives up, it says where each side stopped (real Kafka): every outcome
partition read to its end means the workers never produced the rest; the router group's
committed offsets against the token log's end say how far routing got."""
from __future__ import annotations

import asyncio
import uuid

from aiokafka import TopicPartition

from pipeline.settings import Settings
from pipeline.stream.collector import collect
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.kafka_replay import _router_frontier
from pipeline.stream.producer import produce_raw
from pipeline.stream.topics import ensure_topics


def test_a_stalled_collection_reports_partition_positions_and_the_router_frontier(kafka_bootstrap):
    run = Settings.load(env={}).with_(kafka_bootstrap=kafka_bootstrap, partitions=2)
    suffix = uuid.uuid4().hex[:8]
    outcomes, tokens = f"var-outcomes-{suffix}", f"var-tokens-{suffix}"
    run = run.with_(topic_outcomes=outcomes, topic_tokens=tokens, app_id=f"var-router-{suffix}")
    asyncio.run(ensure_topics(kafka_bootstrap, {outcomes: 2, tokens: 2}))
    asyncio.run(produce_raw(kafka_bootstrap, outcomes, [(b"s", b"not an outcome")] * 3))
    asyncio.run(produce_raw(kafka_bootstrap, tokens, [(f"s{i}".encode(), b"{}") for i in range(5)]))
    got = asyncio.run(collect(kafka_bootstrap, outcomes, expected=10, idle_timeout_s=2.0))
    assert got.invalid == 3 and got.distinct == 0
    assert got.unread is not None and sum(end for _, end in got.unread.values()) == 3
    assert all(read == end for read, end in got.unread.values())  # the collector read everything there was
    asyncio.run(_commit(kafka_bootstrap, run.app_id, tokens, {0: 1}))  # the routers got 1 message into p0
    frontier = asyncio.run(_router_frontier(run))
    assert set(frontier) == {0, 1}
    assert frontier[0][0] == 1 and frontier[1][0] == 0  # p1: nothing committed -> the log start
    assert sum(end for _, end in frontier.values()) == 5


async def _commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for ``group`` the way a router worker's consumer does."""
    consumer = KafkaAccess(bootstrap).consumer(group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in offsets]
        consumer.assign(tps)
        await consumer.commit({tp: offsets[tp.partition] for tp in tps})
    finally:
        await consumer.stop()
