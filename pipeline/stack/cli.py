"""``var stack up|down|status``: argument parsing and output, reusable by the main ``var`` CLI.

Exit codes: 0 ok; 2 user error (one line ``var stack: error: ...`` on stderr, no traceback);
``status`` exits 3 when nothing is recorded or a recorded service is not alive.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from .errors import StackError
from .local_stack import SERVICES, LocalStack
from .secure import generate

PROG = "var stack"
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


def _port(text: str) -> int:
    """argparse type: a port number 0-65535 (0 = pick a free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def add_arguments(parser: argparse.ArgumentParser, namespace_flag: bool = True) -> None:
    """Add the ``up|down|status|secrets`` action and its options to ``parser`` (``namespace_flag``:
    also ``--namespace``; ``var stack`` has the setting's flag instead)."""
    parser.add_argument("action", choices=("up", "down", "status", "secrets"))
    parser.add_argument("--secure", action="store_true",
                        help="up: Kafka SASL_SSL (SCRAM-SHA-512) and Redis TLS + ACL users (admin, router, stats); "
                             "credentials and <role>.env files in <state dir>/secrets")
    if namespace_flag:
        parser.add_argument("--namespace", default="default", help="up --secure / secrets: the Redis namespace "
                            "the ACL users may use (and its run-scoped NAMESPACE-<run> sub-namespaces)")
    parser.add_argument("--out", help="secrets: the directory to write (e.g. deploy/secrets for docker compose)")
    parser.add_argument("--kafka-port", type=_port, help="broker port (default 9092; 0 = free port)")
    parser.add_argument("--controller-port", type=_port, help="KRaft controller port (default kafka port + 1)")
    parser.add_argument("--redis-port", type=_port, help="redis port (default 6379; 0 = free port)")
    parser.add_argument("--free-ports", action="store_true", help="use free ports for all unset ports")
    parser.add_argument("--partitions", type=int, default=1, help="num.partitions for auto-created topics")
    parser.add_argument("--only", action="append", choices=SERVICES, help="act on this service only (repeatable)")
    parser.add_argument("--state-dir", help="state directory (default $VAR_STACK_DIR or ./.var/stack)")
    parser.add_argument("--json", action="store_true", help="print status as JSON")


def run(args: argparse.Namespace) -> int:
    """Execute parsed arguments; returns the exit code.  Raises StackError on failure."""
    stack = LocalStack(args.state_dir)
    if args.action == "secrets":
        out = generate(args.out or stack.secrets_dir, args.namespace, 0o644 if args.out else 0o600)
        print(f"secrets in {out.root} (CA, server certificate, Kafka SCRAM and Redis ACL users admin, router, "
              f"stats for namespace {args.namespace}); directory 0700: never commit them")
        return 0
    if args.action == "up":
        free = 0 if args.free_ports else None
        stack.up(
            _given_or(args.kafka_port, free), args.controller_port, _given_or(args.redis_port, free),
            num_partitions=args.partitions, services=args.only or SERVICES, secure=args.secure,
            namespace=args.namespace,
        )
        if args.secure and not args.json:
            print(f"secured stack: load the operator's settings with `set -a; . {stack.secrets_dir}/admin.env; "
                  "set +a` (workers started by var get router.env / stats.env)")
    elif args.action == "down":
        stopped = stack.down(args.only)
        if not args.json:
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return 0
    status = {name: s for name, s in stack.status().items() if not args.only or name in args.only}
    empty = f"not recorded: {', '.join(args.only)}" if args.only else "no services recorded"
    print(json.dumps(status, indent=2) if args.json else format_status(status, empty))
    if args.action == "status" and not (status and all(s["alive"] for s in status.values())):
        return EXIT_NOT_RUNNING
    return 0


def _given_or(value: int | None, fallback: int | None) -> int | None:
    return fallback if value is None else value


def format_status(status: dict[str, dict[str, Any]], empty: str = "no services recorded") -> str:
    """Human-readable status table, one service per line (``empty`` when there is none)."""
    if not status:
        return empty
    rows = [
        f"{name:<12} {'up' if s['alive'] else 'DOWN':<5} pid {s['pid']:<8} {s['address'] or '-':<28} log: {s['log']}"
        for name, s in status.items()
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m pipeline.stack``."""
    parser = argparse.ArgumentParser(prog=PROG, description="Local Kafka + Redis stack for VAR.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except StackError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
