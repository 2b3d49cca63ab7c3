"""``var replay``: route a corpus and report tiers, budget, agreement, quality and PASS/FAIL.

Embedded (default): in-process with in-memory stores. ``--via kafka``: through the streaming
system -- Kafka topics, N Faust router workers (separate processes) and Redis.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.assembly import is_model
from pipeline.settings import Settings
from pipeline.sources import CorpusSource, TextSource

from pipeline.replay import run_replay
from pipeline.report import render_text

from .common import (ROUTER_WORKER, STATS_WORKER, UserError, add_progress_flag, add_settings,
                     add_synthetic_arguments, corpus_source, print_json, settings_from, show_progress)

if TYPE_CHECKING:
    from pipeline.report import ReplayReport
    from pipeline.stream.kafka_replay import KafkaReplayOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a recorded or synthetic corpus (embedded, or --via kafka)",
                       description="Offline phase on a training split (or --table-file), then route the rest "
                                   "through cache -> fast path -> learned router and report. Exit status 1 "
                                   "when a constraint fails.")
    p.add_argument("path", nargs="?", help="recorded corpus (JSON Lines, optionally .gz); without it and "
                   "--synthetic: the held-out Shakespeare works through the bundled MoE LM")
    p.add_argument("--synthetic", action="store_true", help="replay the seeded synthetic corpus instead")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--timeline", action="store_true", help="include the per-batch timeline in --json output")
    p.add_argument("--plot", metavar="PNG", help="draw learned share and tier mix over time to this PNG")
    add_progress_flag(p)
    kafka = p.add_argument_group("streaming replay (--via kafka)")
    kafka.add_argument("--via", choices=("embedded", "kafka"), default="embedded")
    kafka.add_argument("--workers", type=int, default=1, help="router worker processes to start (default 1)")
    kafka.add_argument("--message-size", type=int, default=1, help="tokens per message (1 = per-token)")
    kafka.add_argument("--attach", action="store_true",
                       help="use the configured topics/namespace and already running workers (start none)")
    kafka.add_argument("--cold", action="store_true", help="start the routers with an empty fast-path table (the training split is still "
                            "held back, so the online events are the same as in a normal replay)")
    kafka.add_argument("--stats-worker", action="store_true", help="also run the stats refresher worker")
    kafka.add_argument("--idle-timeout", type=float, default=None,
                       help="give up after this long without outcomes (default 150 s: longer than a worker's "
                            "own Kafka request timeout)")
    kafka.add_argument("--rate", type=float, default=None, help="produce at most this many tokens per second")
    kafka.add_argument("--log-dir", default=".var/logs", help="worker logs (default .var/logs/RUN)")
    # the replay itself, and (--via kafka) the router and stats workers it starts
    add_settings(p, groups=("replay", *ROUTER_WORKER, *STATS_WORKER))
    add_synthetic_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if not args.path and not args.synthetic:
        return _run_model(args, _held_out_settings(args, settings), TextSource())
    source = corpus_source(args, settings)
    if is_model(settings):
        return _run_model(args, settings, source)
    if args.plot:
        from pipeline.plot import require_matplotlib

        require_matplotlib()  # before the replay, not after it
    if args.via == "kafka":
        report = _run_kafka(args, settings, source)
    else:
        report = run_replay(source, settings, progress=show_progress(args))
    if args.plot:
        from pipeline.plot import plot_timeline

        plot_timeline(report, args.plot)
    if args.json:
        print_json(report.to_dict(with_timeline=args.timeline))
    else:
        print(render_text(report))
    return 0 if report.to_dict()["constraints_ok"] else 1


def _held_out_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """Without a corpus: the held-out works through the bundled model (unless a router was chosen)."""
    if args.router is None and "VAR_ROUTER" not in os.environ:
        return dataclasses.replace(settings, router="model")
    if not is_model(settings):
        raise UserError("give a corpus PATH or --synthetic for a synthetic router (the held-out works need --router model)")
    return settings


def _run_model(args: argparse.Namespace, settings: Settings, source: CorpusSource) -> int:
    from pipeline.model_replay import run_model_replay
    from pipeline.model_report import render_text as render_model

    if args.plot:
        raise UserError("--plot draws synthetic replays; for the model see `var frontier --plot`")
    if args.via == "kafka":
        from pipeline.stream.kafka_model_replay import run_kafka_model_replay

        if args.attach:
            raise UserError("--attach replays synthetic routers only; a model replay via kafka starts its own workers")
        report, _ = run_kafka_model_replay(source, settings, _kafka_options(args), progress=show_progress(args))
    else:
        report = run_model_replay(source, settings, progress=show_progress(args))
    if args.json:
        print_json(report.to_dict(with_timeline=args.timeline))
    else:
        print(render_model(report))
    return 0 if report.to_dict()["constraints_ok"] else 1


def _kafka_options(args: argparse.Namespace) -> KafkaReplayOptions:
    """The --via kafka flags, checked (UserError on a bad value)."""
    from pipeline.stream.kafka_replay import IDLE_TIMEOUT_S, KafkaReplayOptions

    if args.idle_timeout is not None and args.idle_timeout <= 0:
        raise UserError("--idle-timeout must be > 0 seconds")
    if args.workers < 0 or (args.workers == 0 and not args.attach) or args.message_size < 1:
        raise UserError("--workers must be >= 1 (or 0 with --attach) and --message-size >= 1")
    if args.rate is not None and args.rate <= 0:
        raise UserError("--rate must be > 0")
    return KafkaReplayOptions(workers=0 if args.attach else args.workers, message_size=args.message_size,
                              attach=args.attach, cold=args.cold, stats_worker=args.stats_worker,
                              idle_timeout_s=args.idle_timeout or IDLE_TIMEOUT_S, log_dir=Path(args.log_dir), rate=args.rate)


def _run_kafka(args: argparse.Namespace, settings: Settings, source: CorpusSource) -> ReplayReport:
    from pipeline.stream.kafka_replay import run_kafka_replay

    report, _ = run_kafka_replay(source, settings, _kafka_options(args), progress=show_progress(args))
    return report
