"""``var replay``: route a corpus and report tiers, budget, agreement, quality and PASS/FAIL."""
from __future__ import annotations

import argparse

from pipeline.replay import run_replay
from pipeline.report import render_text

from .common import (ENGINE_SETTINGS, ROUTING_SETTINGS, add_progress_flag, add_settings, add_synthetic_arguments,
                     corpus_source, print_json, settings_from, show_progress)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a recorded or synthetic corpus (embedded, in-process)",
                       description="Offline phase on a training split (or --table), then route the rest "
                                   "through cache -> fast path -> learned router and report.")
    p.add_argument("path", nargs="?", help="recorded corpus (JSON Lines, optionally .gz)")
    p.add_argument("--synthetic", action="store_true", help="replay the seeded synthetic corpus instead")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--timeline", action="store_true", help="include the per-batch timeline in --json output")
    add_progress_flag(p)
    add_settings(p, ROUTING_SETTINGS + ENGINE_SETTINGS + ("train_fraction", "quality_sample"))
    add_synthetic_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    source = corpus_source(args, settings)
    report = run_replay(source, settings, progress=show_progress(args))
    if args.json:
        print_json(report.to_dict(with_timeline=args.timeline))
    else:
        print(render_text(report))
    return 0 if report.to_dict()["constraints_ok"] else 1
