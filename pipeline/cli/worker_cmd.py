"""``var worker``: run one router worker (a Faust worker); start several for more throughput."""
from __future__ import annotations

import argparse
import asyncio
from pipeline.stream.kafka_access import KafkaAccess

from .common import ENGINE_SETTINGS, ROUTING_SETTINGS, add_settings, settings_from

SERVICE_SETTINGS = ("kafka_bootstrap", "redis_url", "namespace", "redis_timeout_s", "topic_tokens", "topic_outcomes",
                    "topic_deadletter", "partitions", "app_id", "take_max", "take_within_s", "worker_name",
                    "session_timeout_s", "log_level", "log_format", "metrics_port",
                    "router_mode")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a router worker: tokens topic -> VAR -> outcomes topic")
    add_settings(p, ROUTING_SETTINGS + ENGINE_SETTINGS + SERVICE_SETTINGS)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.stream.app import require_vocab, run_worker
    from pipeline.stream.topics import ensure_topics, pipeline_topics

    settings = settings_from(args)
    require_vocab(settings)
    asyncio.run(ensure_topics(KafkaAccess.from_settings(settings), pipeline_topics(settings), settings.replication_factor))
    run_worker(settings)
    return 0
