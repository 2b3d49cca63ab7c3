"""``var verify``: check every claim of a run from its outcomes alone (see :mod:`pipeline.verify`).

Exit status 0 when everything holds, 1 on a violation (the report says which and where), 2 on a
usage or input error (one line).
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from .common import UserError, add_progress_flag, add_settings, print_json, \
    settings_from, show_progress

EXIT_VIOLATION = 1


def add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start-time", help="only records from this time on (epoch ms or ISO 8601)")
    parser.add_argument("--end-time", help="only records before this time (epoch ms or ISO 8601)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check completeness, budget, exactness, tables and certificates of a run")
    p.add_argument("source", nargs="?", default=None,
                   help="an export (DIR/outcomes.jsonl, see `var outcomes export`) or kafka:TOPIC "
                        "(default: the outcomes topic)")
    p.add_argument("--corpus", help="the corpus the run routed: every (stream, seq) must have an outcome")
    p.add_argument("--certificates", help="certificates file or kafka:TOPIC (default: beside the export, or "
                                          "the certificates topic)")
    p.add_argument("--tables", help="directory of exported table sets (default: beside the export, else the "
                                    "Redis archive)")
    p.add_argument("--tie-tolerance", type=float, default=1e-4,
                   help="a differing top-k set whose k-th and (k+1)-th gate probabilities are closer than this "
                        "is a near tie, not a violation (default 1e-4)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_range(p)
    add_progress_flag(p)
    # rebuilds the routers, the budget caps and the audit verdicts from its own settings
    add_settings(p, ("topic_outcomes", "topic_certificates", "audit_min_agreement"),
                 groups=("routing", "budgeting", "kafka", "redis"))
    p.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from pipeline.corpus.jsonl import read_corpus
    from pipeline.verify.gather import gather, parse_time
    from pipeline.verify.run import verify
    from pipeline.verify.sources import KAFKA_PREFIX, VerifyInputError

    started = time.perf_counter()
    settings = settings_from(args)
    source = args.source or KAFKA_PREFIX + settings.topic_outcomes
    bar = _bar(show_progress(args))
    try:
        inputs = gather(settings, source, args.certificates, args.tables, parse_time(args.start_time),
                        parse_time(args.end_time), bar.update if bar else None)
        if args.corpus:
            inputs.corpus = list(read_corpus(args.corpus))
        inputs.tie_tolerance = args.tie_tolerance
        report = verify(inputs, bar.update if bar else None)
        report.seconds = time.perf_counter() - started  # reading included: the figure a user sees
    except VerifyInputError as exc:
        raise UserError(str(exc)) from None
    finally:
        if bar:
            bar.close()
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.render())
    return 0 if report.ok else EXIT_VIOLATION


def _bar(enabled: bool) -> Any:  # a tqdm bar, or None
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(unit=" records", desc="verify", leave=False)
