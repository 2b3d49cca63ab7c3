"""Helpers for pytest session fixtures: a real broker / Redis, or the ones named by the environment.

``KAFKA_BOOTSTRAP`` / ``REDIS_URL``, when set, are used as they are (nothing is started);
otherwise a private instance is started on free ports under ``tmp_root`` and stopped on exit.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .kafka_broker import KafkaBroker
from .ports import free_ports
from .redis_server import RedisServer


@contextmanager
def kafka_for_tests(tmp_root: Path | str, num_partitions: int = 1) -> Iterator[str]:
    """Yield a bootstrap address: ``$KAFKA_BOOTSTRAP``, or a fresh broker on free ports."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    port, controller_port = free_ports(2)
    broker = KafkaBroker(Path(tmp_root) / "kafka", port, controller_port, num_partitions)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@contextmanager
def redis_for_tests(tmp_root: Path | str) -> Iterator[str]:
    """Yield a Redis URL: ``$REDIS_URL``, or a fresh redis-server on a free port."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(Path(tmp_root) / "redis", free_ports(1)[0])
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
