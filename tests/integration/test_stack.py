"""Real-service checks of the local stack launcher (pipeline/stack)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.stack import KafkaBroker, LocalStack, RedisServer, StackError
from pipeline.stack.ports import free_ports, is_port_open
from pipeline.stack.process import ProcessInfo, is_alive
from pipeline.stack.redis_server import ping

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


async def _roundtrip(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> list:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    received = []
    try:
        while len(received) < len(messages):
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=500), timeout=30)
            for records in batches.values():
                received.extend(records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return received


def test_kafka_keyed_roundtrip_over_four_partitions(kafka_bootstrap: str) -> None:
    topic = f"stack-it-{uuid.uuid4().hex[:8]}"
    messages = [(f"stream-{i % 8}".encode(), f"{i}".encode()) for i in range(40)]
    received = asyncio.run(_roundtrip(kafka_bootstrap, topic, messages))
    assert sorted(r.value for r in received) == sorted(v for _, v in messages)
    partitions_of_key: dict[bytes, set[int]] = {}
    for record in received:
        partitions_of_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(parts) == 1 for parts in partitions_of_key.values())  # a key sticks to a partition
    assert len({r.partition for r in received}) > 1  # 8 keys spread over the 4 partitions
    for key in partitions_of_key:  # per-key order is production order
        values = [int(r.value) for r in received if r.key == key]
        assert values == sorted(values)


def test_redis_ping_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    client.set("stack:test", "v1")
    assert client.get("stack:test") == b"v1"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"


def test_redis_stop_then_start_on_same_port(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    server = RedisServer(tmp_path / "redis", port)
    server.start()
    try:
        redis.Redis(port=port).set("k", "v")
        assert server.stop()
        assert not server.is_running() and not ping(port)
        server.start()
        assert ping(port)
        assert redis.Redis(port=port).get("k") is None  # nothing is persisted
    finally:
        server.stop()


def test_local_stack_up_status_down_from_another_process(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state")
    stack.up(kafka_port=0, redis_port=0)
    sleeper = stack.add_process("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
    status = stack.status()
    assert set(status) == {"kafka", "redis", "sleeper"}
    assert all(s["alive"] for s in status.values())
    assert sleeper.pid == status["sleeper"]["pid"]
    host, _, port = status["kafka"]["address"].rpartition(":")
    assert is_port_open(host, int(port))
    assert redis.Redis.from_url(status["redis"]["address"]).ping()
    assert stack.up(kafka_port=0, redis_port=0) == status  # idempotent: running services are kept

    down = subprocess.run(
        [sys.executable, "-m", "pipeline", "stack", "down", "--state-dir", str(stack.state_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert down.returncode == 0, down.stderr
    assert "sleeper, kafka, redis" in down.stdout
    assert stack.status() == {}
    for name, record in status.items():
        assert not is_alive(ProcessInfo(record["pid"])), name


def test_kafka_start_without_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java, no mvn
    port, controller_port = free_ports(2)
    with pytest.raises(StackError) as caught:
        KafkaBroker(tmp_path / "kafka", port, controller_port).start()
    assert str(caught.value) == "java not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"
