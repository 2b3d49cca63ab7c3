"""``var worker``: run one router worker (a Faust worker); start several for more throughput."""
from __future__ import annotations

import argparse
import asyncio
from pipeline.stream.kafka_access import KafkaAccess

from .common import ROUTER_WORKER, add_settings, settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a router worker: tokens topic -> VAR -> outcomes topic")
    add_settings(p, groups=ROUTER_WORKER)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.stream.app import run_worker
    from pipeline.table_sets import require_vocab
    from pipeline.stream.topics import ensure_topics, pipeline_topics

    settings = settings_from(args)
    require_vocab(settings)
    asyncio.run(ensure_topics(KafkaAccess.from_settings(settings), pipeline_topics(settings), settings.replication_factor))
    run_worker(settings)
    return 0
