"""``var stack up|down|status``: the compose topology as local processes, without Docker.

``var stack up`` starts a real Kafka broker (jars from Maven Central) and Redis; with
``--workers N`` it also starts N router workers and, with ``--stats-worker``, the stats
refresher -- each a separate process recorded in the stack state, so ``var stack status``
lists them and ``var stack down`` stops them (workers first).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pipeline.settings import Settings
from pipeline.stack import cli as stack_cli
from pipeline.stack.local_stack import LocalStack
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.worker_pool import worker_env

from .common import ENGINE_SETTINGS, ROUTING_SETTINGS, UserError, add_settings, settings_from

_WORKER_SETTINGS = ("namespace", "topic_tokens", "topic_outcomes", "topic_deadletter", "app_id", "take_max",
                    "take_within_s", "session_timeout_s", "log_level", "log_format", "refresh_every",
                    "refresh_interval_s", "stats_decay", "adaptive", "adaptive_target")
DEFAULT_VOCAB = 1000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="local stack: real Kafka (Maven jars) + Redis, and worker processes",
                       description=__doc__)
    stack_cli.add_arguments(p, namespace_flag=False)
    group = p.add_argument_group("workers (up)")
    group.add_argument("--workers", type=int, default=0, help="router worker processes to start (default 0)")
    group.add_argument("--stats-worker", action="store_true", help="also start the stats refresher worker")
    group.add_argument("--metrics-port-base", type=int, default=0,
                       help="serve worker metrics on BASE, BASE+1, ... (stats worker: BASE+N); 0 = off")
    add_settings(group, ROUTING_SETTINGS + ENGINE_SETTINGS + _WORKER_SETTINGS)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.workers < 0 or args.metrics_port_base < 0:
        raise UserError("--workers and --metrics-port-base must be >= 0")
    # the Redis namespace of a secured stack's ACL users (a running one's, unless given)
    args.namespace = settings_from(args, _stack_env(LocalStack(args.state_dir))).namespace
    code = stack_cli.run(args)
    if args.action == "up" and (args.workers or args.stats_worker):
        stack = LocalStack(args.state_dir)
        started = _start_workers(stack, _worker_settings(args, stack), args)
        status = {name: s for name, s in stack.status().items() if name in started}
        print(stack_cli.format_status(status, "no new workers (already running)"))
    return code


def _stack_env(stack: LocalStack) -> dict[str, str]:
    """Our environment, with a secured stack's operator settings (admin.env) laid over it."""
    return {**os.environ, **(stack.operator_env() or {})}


def _worker_settings(args: argparse.Namespace, stack: LocalStack) -> Settings:
    kafka, redis = stack.address("kafka"), stack.address("redis")
    if not kafka or not redis:
        raise UserError("workers need both kafka and redis running in this stack")
    # The stack's own --partitions is the broker's num.partitions, not the workers' VAR_PARTITIONS.
    own = {k: v for k, v in vars(args).items() if k != "partitions"}
    # A secured stack: the workers start from the operator's settings (admin.env), then log in as
    # their own roles (router.env, stats.env).
    settings = settings_from(argparse.Namespace(**own), _stack_env(stack)).with_(kafka_bootstrap=kafka, redis_url=redis)
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
