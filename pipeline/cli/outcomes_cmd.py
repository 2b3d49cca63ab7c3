"""``var outcomes tail``: follow the outcomes (or dead-letter) topic in a readable form."""
from __future__ import annotations

import argparse
import asyncio

from pathlib import Path
from pipeline.stream.kafka_access import KafkaAccess

from .common import UserError, add_settings, settings_from
from .verify_cmd import add_range


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("outcomes", help="inspect routing outcomes")
    osub = p.add_subparsers(dest="outcomes_command", metavar="ACTION", required=True)
    tail = osub.add_parser("tail", help="follow the outcomes topic (Ctrl-C to stop)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest message")
    tail.add_argument("--deadletter", action="store_true", help="follow the dead-letter topic instead")
    tail.add_argument("--max", type=int, default=None, help="stop after this many messages")
    tail.add_argument("--idle-exit", type=float, default=None, help="stop after this many seconds without messages")
    tail.add_argument("--json", action="store_true", help="print raw JSON values")
    add_settings(tail, ("topic_outcomes", "topic_deadletter"), groups=("kafka",))
    tail.set_defaults(handler=run_tail)
    export = osub.add_parser("export", help="write the outcomes, certificates and table sets of a run to a "
                                            "directory (for `var verify DIR/outcomes.jsonl`)")
    export.add_argument("--out", required=True, help="directory to write")
    add_range(export)
    add_settings(export, ("topic_outcomes", "topic_certificates"), groups=("kafka", "redis"))
    export.set_defaults(handler=run_export)


def run_tail(args: argparse.Namespace) -> int:
    from pipeline.stream.tail import tail

    settings = settings_from(args)
    topic = settings.topic_deadletter if args.deadletter else settings.topic_outcomes
    asyncio.run(tail(KafkaAccess.from_settings(settings), topic, args.from_beginning, args.max, args.idle_exit,
                     args.json, args.deadletter))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from pipeline.verify.gather import export, parse_time
    from pipeline.verify.sources import VerifyInputError

    settings = settings_from(args)
    try:
        counts = export(settings, Path(args.out), parse_time(args.start_time), parse_time(args.end_time))
    except VerifyInputError as exc:
        raise UserError(str(exc)) from None
    print(f"exported {counts['outcomes']:,} outcome records, {counts['certificates']:,} certificates and "
        f"{counts['table_sets']} table set(s) to {args.out}")
    return 0
