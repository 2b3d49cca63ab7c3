"""Project-owned launcher for a real local stack: Apache Kafka 3.9.2 (KRaft, from Maven Central
jars) and Redis (Debian's redis-server), both on 127.0.0.1.

Entry points: ``LocalStack`` (CLI ``var stack``: ``pipeline/cli/stack_cmd.py``), the single
services ``KafkaBroker`` and ``RedisServer``, and pytest helpers in ``pipeline.stack.testing``.
"""
from __future__ import annotations

from .errors import StackError
from .kafka_broker import KafkaBroker
from .local_stack import LocalStack
from .redis_server import RedisServer

__all__ = ["KafkaBroker", "LocalStack", "RedisServer", "StackError"]
