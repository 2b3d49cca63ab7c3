"""Kafka and Redis owned by a chaos run, so that scenarios can stop and start them."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from types import TracebackType

from pipeline.stack.kafka_broker import KafkaBroker
from pipeline.stack.kafka_cluster import KafkaCluster, restartable_ports
from pipeline.stack.redis_server import RedisServer

log = logging.getLogger(__name__)


class ChaosServices:
    """A private Kafka (KRaft: one node, or a ``brokers``-node cluster with replication factor 3
    and ``min.insync.replicas`` 2) and redis-server on free ports under ``root``."""

    def __init__(self, root: Path, brokers: int = 1) -> None:
        # Below the ephemeral range: while a service is down, no outgoing connection can take its port.
        kafka_port, controller_port, redis_port = restartable_ports(3)
        self.brokers = brokers
        self.kafka = KafkaBroker(root / "kafka", kafka_port, controller_port, 1)
        self.cluster = KafkaCluster(root / "cluster", size=brokers) if brokers > 1 else None
        self.redis = RedisServer(root / "redis", redis_port)

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap if self.cluster is not None else self.kafka.bootstrap

    @property
    def replication_factor(self) -> int:
        return min(3, self.brokers)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def __enter__(self) -> "ChaosServices":
        if self.cluster is not None:
            self.cluster.start()
        else:
            self.kafka.start()
        try:
            self.redis.start()
        except BaseException:
            self._stop_kafka()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.redis.stop()
        self._stop_kafka()

    def _stop_kafka(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        else:
            self.kafka.stop()

    def kill_broker(self, node: int) -> None:
        """kill -9 one node of the cluster (it stays down)."""
        if self.cluster is None:
            raise RuntimeError("kill_broker needs a multi-broker cluster (Scenario.brokers > 1)")
        log.warning("chaos: killing Kafka node %d", node)
        self.cluster.kill_node(node)

    def restart_kafka(self, down_s: float) -> None:
        """Stop the broker (SIGTERM, clean shutdown), wait, start it on the same data directory."""
        log.warning("chaos: stopping Kafka for %.0f s", down_s)
        self.kafka.stop()
        time.sleep(down_s)
        self.kafka.start(fresh=False)
        log.warning("chaos: Kafka is back")

    def restart_redis(self, down_s: float) -> None:
        log.warning("chaos: stopping Redis for %.0f s", down_s)
        self.redis.stop()
        time.sleep(down_s)
        self.redis.start()
        log.warning("chaos: Redis is back")
