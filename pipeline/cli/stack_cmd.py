"""``var stack up|down|status|secrets``: the compose topology as local processes, without Docker.

``var stack up`` starts a real Kafka broker (jars from Maven Central) and Redis; with
``--workers N`` it also starts N router workers and, with ``--stats-worker``, the stats
refresher -- each a separate process recorded in the stack state, so ``var stack status``
lists them and ``var stack down`` stops them (workers first). The workers take every setting
``var worker`` and ``var stats worker`` take (``--partitions``, ``--router-mode``, ...), except
the addresses, names and metrics ports the stack gives them.

Exit status: 0 ok; 2 user error (one line ``var: error: ...``); ``status`` exits 3 when nothing
is recorded or a recorded service is not alive.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from pipeline.settings import Settings
from pipeline.stack.local_stack import SERVICES, LocalStack
from pipeline.stack.secure import generate
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.worker_pool import worker_env

from .common import LAUNCHER_OWN, ROUTER_WORKER, STATS_WORKER, UserError, add_settings, settings_from

EXIT_NOT_RUNNING = 3
DEFAULT_VOCAB = 1000
WORKER_GROUPS = tuple(dict.fromkeys(ROUTER_WORKER + STATS_WORKER))  # the setting groups of the workers it starts


def _port(text: str) -> int:
    """argparse type: a port number 0-65535 (0 = pick a free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="local stack: real Kafka (Maven jars) + Redis, and worker processes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("up", "down", "status", "secrets"))
    p.add_argument("--secure", action="store_true",
                   help="up: Kafka SASL_SSL (SCRAM-SHA-512) and Redis TLS + ACL users (admin, router, stats); "
                        "credentials and <role>.env files in <state dir>/secrets (--namespace: the Redis "
                        "namespace the ACL users may use, and its run-scoped NAMESPACE-<run> sub-namespaces)")
    p.add_argument("--out", help="secrets: the directory to write (e.g. deploy/secrets for docker compose)")
    p.add_argument("--kafka-port", type=_port, help="broker port (default 9092; 0 = free port)")
    p.add_argument("--controller-port", type=_port, help="KRaft controller port (default kafka port + 1)")
    p.add_argument("--redis-port", type=_port, help="redis port (default 6379; 0 = free port)")
    p.add_argument("--free-ports", action="store_true", help="use free ports for all unset ports")
    p.add_argument("--only", action="append", choices=SERVICES, help="act on this service only (repeatable)")
    p.add_argument("--state-dir", help="state directory (default $VAR_STACK_DIR or ./.var/stack)")
    p.add_argument("--json", action="store_true", help="print status as JSON")
    group = p.add_argument_group("workers (up)")
    group.add_argument("--workers", type=int, default=0, help="router worker processes to start (default 0)")
    group.add_argument("--stats-worker", action="store_true", help="also start the stats refresher worker")
    group.add_argument("--metrics-port-base", type=int, default=0,
                       help="serve worker metrics on BASE, BASE+1, ... (stats worker: BASE+N); 0 = off")
    add_settings(group, groups=WORKER_GROUPS, without=LAUNCHER_OWN)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.workers < 0 or args.metrics_port_base < 0:
        raise UserError("--workers and --metrics-port-base must be >= 0")
    stack = LocalStack(args.state_dir)
    # the Redis namespace of a secured stack's ACL users (a running one's, unless given)
    args.namespace = settings_from(args, _stack_env(stack)).namespace
    if args.action == "secrets":
        out = generate(args.out or stack.secrets_dir, args.namespace, 0o644 if args.out else 0o600)
        print(f"secrets in {out.root} (CA, server certificate, Kafka SCRAM and Redis ACL users admin, router, "
              f"stats for namespace {args.namespace}); directory 0700: never commit them")
        return 0
    if args.action == "down":
        stopped = stack.down(args.only)
        if not args.json:
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return 0
    if args.action == "up":
        _up(stack, args)
    code = _print_status(stack, args)
    if args.action == "up" and (args.workers or args.stats_worker):
        started = _start_workers(stack, _worker_settings(args, stack), args)
        status = {name: s for name, s in stack.status().items() if name in started}
        print(format_status(status, "no new workers (already running)"))
    return code


def _up(stack: LocalStack, args: argparse.Namespace) -> None:
    free = 0 if args.free_ports else None
    stack.up(_given_or(args.kafka_port, free), args.controller_port, _given_or(args.redis_port, free),
             services=args.only or SERVICES, secure=args.secure, namespace=args.namespace)
    if args.secure and not args.json:
        print(f"secured stack: load the operator's settings with `set -a; . {stack.secrets_dir}/admin.env; "
              "set +a` (workers started by var get router.env / stats.env)")


def _print_status(stack: LocalStack, args: argparse.Namespace) -> int:
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
    return "\n".join(
        f"{name:<12} {'up' if s['alive'] else 'DOWN':<5} pid {s['pid']:<8} {s['address'] or '-':<28} log: {s['log']}"
        for name, s in status.items())


def _stack_env(stack: LocalStack) -> dict[str, str]:
    """Our environment, with a secured stack's operator settings (admin.env) laid over it."""
    return {**os.environ, **(stack.operator_env() or {})}


def _worker_settings(args: argparse.Namespace, stack: LocalStack) -> Settings:
    kafka, redis = stack.address("kafka"), stack.address("redis")
    if not kafka or not redis:
        raise UserError("workers need both kafka and redis running in this stack")
    # A secured stack: the workers start from the operator's settings (admin.env), then log in as
    # their own roles (router.env, stats.env).
    settings = settings_from(args, _stack_env(stack)).with_(kafka_bootstrap=kafka, redis_url=redis)
    from pipeline.assembly import is_model

    if settings.vocab_size is None and not is_model(settings):  # a model router brings its own vocabulary
        print(f"stack: workers use --vocab-size {DEFAULT_VOCAB} (the synthetic corpus); set VAR_VOCAB_SIZE "
              "for other corpora", file=sys.stderr)
        settings = settings.with_(vocab_size=DEFAULT_VOCAB)
    from pipeline.stream.topics import ensure_topics, pipeline_topics

    asyncio.run(ensure_topics(KafkaAccess.from_settings(settings), pipeline_topics(settings),
                              settings.replication_factor))
    return settings


def _start_workers(stack: LocalStack, settings: Settings, args: argparse.Namespace) -> list[str]:
    """Start the requested workers that are not running yet; returns their names."""
    running = {name for name, s in stack.status().items() if s["alive"]}
    started = []
    names = [f"router-{i}" for i in range(args.workers)] + (["stats"] if args.stats_worker else [])
    for index, name in enumerate(names):
        if name in running:
            continue
        env = worker_env(settings, name, "router" if name.startswith("router") else "stats")
        if args.metrics_port_base:
            env["VAR_METRICS_PORT"] = str(args.metrics_port_base + index)
        command = ["worker"] if name.startswith("router") else ["stats", "worker"]
        stack.add_process(name, [sys.executable, "-m", "pipeline", *command], env=env)
        started.append(name)
    return started
