"""``var stack up|down|status``: local Kafka + Redis (and workers) without Docker."""
from __future__ import annotations

import argparse

from pipeline.stack import cli as stack_cli


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="start/stop/inspect the local stack (real Kafka from Maven jars, Redis)")
    stack_cli.add_arguments(p)
    p.set_defaults(handler=stack_cli.run)
