"""Stress checks with real Kafka processes: a 3-node KRaft cluster losing a node to SIGKILL while
an idempotent acks=all producer writes, and one broker restarted on its data directory.

Marked ``stress`` (long, CPU-heavy: several JVMs); they start their own brokers on free ports.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from pipeline.stack.kafka_broker import KafkaBroker
from pipeline.stack.kafka_cluster import KafkaCluster, restartable_ports

pytestmark = pytest.mark.stress

MESSAGES = 200_000
PARTITIONS = 6


async def _create_topic(
    bootstrap: str, topic: str, partitions: int, rf: int, configs: dict[str, str]
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, rf, topic_configs=configs)])
    finally:
        await admin.close()


async def _produce(
    producer: AIOKafkaProducer, topic: str, ids: Iterable[int], before: Callable[[int], None]
) -> list[int]:
    """Send every id (value = decimal id), calling ``before(i)`` first; return the ids not delivered."""
    futures = []
    for i in ids:
        before(i)
        while True:
            try:
                futures.append((i, await producer.send(topic, str(i).encode())))
                break
            except KafkaError:  # e.g. a full batch for a dead leader outlived request_timeout_ms
                await asyncio.sleep(0.5)
    results = await asyncio.gather(*(future for _, future in futures), return_exceptions=True)
    return [i for (i, _), result in zip(futures, results) if isinstance(result, BaseException)]


async def _read_all(bootstrap: str, topic: str, want: int, group: str | None = None,
                    quiet_s: float = 30.0) -> list[int]:
    """Ids read from ``topic``: from the group's committed offsets (else from the start) until
    ``want`` records or ``quiet_s`` without a record, then 1 s more to catch extras; commits."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    try:
        if group is None:
            consumer.assign([TopicPartition(topic, p) for p in await _partitions(bootstrap, topic)])
        else:
            consumer.subscribe([topic])
        ids: list[int] = []
        last = time.monotonic()
        while time.monotonic() - last < (quiet_s if len(ids) < want else 1.0):
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                ids.extend(int(record.value) for record in records)
                last = time.monotonic()
        if group is not None:
            await consumer.commit()
        return ids
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, topic: str, timeout: float = 30.0) -> list[int]:
    """The topic's partition numbers, once the metadata lists them all with a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            (description,) = await admin.describe_topics([topic])
            partitions = description["partitions"]
            if partitions and all(p["leader"] >= 0 for p in partitions):
                return sorted(p["partition"] for p in partitions)
            assert time.monotonic() < deadline, f"{topic} has no leader for every partition: {description}"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


@pytest.mark.timeout(900)
def test_cluster_loses_no_acked_message_when_a_node_is_killed(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path / "cluster", size=3)
    began = time.monotonic()
    cluster.start()
    started = time.monotonic()
    try:
        report = asyncio.run(_kill_while_producing(cluster, f"chaos-{uuid.uuid4().hex[:8]}"))
    finally:
        cluster.stop()
    report.update(start_s=round(started - began, 1), total_s=round(time.monotonic() - began, 1))
    print(f"\ncluster chaos: {report}")
    assert report["distinct"] == MESSAGES, report
    assert report["missing"] == [], report


async def _kill_while_producing(cluster: KafkaCluster, topic: str) -> dict:
    await _create_topic(cluster.bootstrap, topic, PARTITIONS, 3, {"min.insync.replicas": "2"})
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
    )
    await producer.start()
    try:
        await producer.partitions_for(topic)
        victim = producer.client.cluster.leader_for_partition(TopicPartition(topic, 0)) - 1
        killed_at: list[float] = []

        def chaos(i: int) -> None:
            if i == MESSAGES // 2:
                assert cluster.kill_node(victim)
                killed_at.append(time.monotonic())

        began = time.monotonic()
        failed = await _produce(producer, topic, range(MESSAGES), chaos)
        resent, rounds = len(failed), 0
        while failed and rounds < 5:  # at least once: resend what was not acknowledged
            failed, rounds = await _produce(producer, topic, failed, lambda i: None), rounds + 1
        produced = time.monotonic()
        assert not failed
    finally:
        await producer.stop()
    await asyncio.to_thread(cluster.start_node, victim)  # restart on its crashed data dir
    restarted = time.monotonic()
    ids = await _read_all(cluster.bootstrap, topic, MESSAGES)
    distinct = set(ids)
    return {
        "victim_node_id": victim + 1, "produce_s": round(produced - began, 1),
        "after_kill_s": round(produced - killed_at[0], 1), "resent": resent,
        "restart_s": round(restarted - produced, 1), "consume_s": round(time.monotonic() - restarted, 1),
        "read": len(ids), "distinct": len(distinct), "duplicates": len(ids) - len(distinct),
        "missing": sorted(set(range(MESSAGES)) - distinct)[:20],
    }


@pytest.mark.timeout(300)
def test_broker_restart_on_its_data_dir_keeps_topics_messages_and_offsets(tmp_path: Path) -> None:
    port, controller_port = restartable_ports(2)  # free_ports() ones may be taken while it is down
    broker = KafkaBroker(tmp_path / "kafka", port, controller_port, heap="384m")
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    broker.start()
    try:
        cluster_id = broker.formatted_cluster_id()
        asyncio.run(_create_topic(broker.bootstrap, topic, 3, 1, {}))
        asyncio.run(_send(broker.bootstrap, topic, range(0, 600)))
        assert sorted(asyncio.run(_read_all(broker.bootstrap, topic, 600, "g"))) == list(range(600))
        asyncio.run(_send(broker.bootstrap, topic, range(600, 1000)))

        broker.stop()
        began = time.monotonic()
        broker.start(fresh=False)
        print(f"\nrestart after stop: {time.monotonic() - began:.1f} s")
        assert broker.formatted_cluster_id() == cluster_id and broker.bootstrap == f"127.0.0.1:{port}"
        assert asyncio.run(_partitions(broker.bootstrap, topic)) == [0, 1, 2]
        # the group resumes at its committed offsets: exactly the 400 messages it had not read
        assert sorted(asyncio.run(_read_all(broker.bootstrap, topic, 400, "g"))) == list(range(600, 1000))

        assert broker.kill()
        began = time.monotonic()
        broker.start(fresh=False)
        print(f"restart after kill -9: {time.monotonic() - began:.1f} s")
        assert broker.formatted_cluster_id() == cluster_id
        assert asyncio.run(_read_all(broker.bootstrap, topic, 1, "g", quiet_s=3.0)) == []
        assert sorted(asyncio.run(_read_all(broker.bootstrap, topic, 1000))) == list(range(1000))
    finally:
        broker.stop()


async def _send(bootstrap: str, topic: str, ids: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        assert await _produce(producer, topic, ids, lambda i: None) == []
    finally:
        await producer.stop()

