"""``var outcomes tail``: follow the outcomes (or dead-letter) topic in a readable form."""
from __future__ import annotations

import argparse
import asyncio

from .common import add_settings, settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("outcomes", help="inspect routing outcomes")
    osub = p.add_subparsers(dest="outcomes_command", metavar="ACTION", required=True)
    tail = osub.add_parser("tail", help="follow the outcomes topic (Ctrl-C to stop)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest message")
    tail.add_argument("--deadletter", action="store_true", help="follow the dead-letter topic instead")
    tail.add_argument("--max", type=int, default=None, help="stop after this many messages")
    tail.add_argument("--idle-exit", type=float, default=None, help="stop after this many seconds without messages")
    tail.add_argument("--json", action="store_true", help="print raw JSON values")
    add_settings(tail, ("kafka_bootstrap", "topic_outcomes", "topic_deadletter"))
    tail.set_defaults(handler=run_tail)


def run_tail(args: argparse.Namespace) -> int:
    from pipeline.stream.tail import tail

    settings = settings_from(args)
    topic = settings.topic_deadletter if args.deadletter else settings.topic_outcomes
    asyncio.run(tail(settings.kafka_bootstrap, topic, args.from_beginning, args.max, args.idle_exit,
                     args.json, args.deadletter))
    return 0
