"""The ``var`` command line: one entry point, one subcommand per capability.

Every user-facing failure -- a missing file, a malformed corpus line, an invalid setting, a
service that will not start -- is a :class:`pipeline.errors.VARError`, printed as ONE line
``var: error: ...`` on stderr with exit status 2, never a traceback. Its details (a broker's log
tail, a tool's output), if any, are logged and printed only with ``--verbose``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Callable, Sequence

from pipeline.errors import VARError

from . import (bench_cmd, capture_cmd, chaos_cmd, config_cmd, corpus_cmd, frontier_cmd, model_cmd, outcomes_cmd, produce_cmd, replay_cmd, stack_cmd,
               stats_cmd, verify_cmd, worker_cmd)

EXIT_USER_ERROR = 2
_MODULES = (replay_cmd, frontier_cmd, corpus_cmd, model_cmd, produce_cmd, worker_cmd, outcomes_cmd, stats_cmd, bench_cmd, chaos_cmd, stack_cmd,
            verify_cmd, capture_cmd, config_cmd)
_VERBOSE_HELP = "on an error, also print its details (e.g. the log tail of a service that did not start)"
log = logging.getLogger("pipeline.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="var", description="VAR: Verifiable Adaptive Routing for Mixture-of-Experts models.")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _MODULES:
        module.register(sub)
    _add_verbose(sub)
    return parser


def _add_verbose(sub: argparse._SubParsersAction) -> None:
    """``--verbose`` after any subcommand too (``var stack up --verbose``); unset it keeps the
    value given before the subcommand."""
    for parser in {id(p): p for p in sub.choices.values()}.values():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _add_verbose(nested[0])
        else:
            parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)


def report_error(exc: VARError, verbose: bool) -> None:
    """``var: error: <one line>`` on stderr; the details are logged, and printed with ``verbose``."""
    line = str(exc)
    if exc.details:
        log.debug("%s: %s\n%s", type(exc).__name__, line, exc.details)
        if not verbose:
            line += " (--verbose: details)"
    print(f"var: error: {line}", file=sys.stderr)
    if exc.details and verbose:
        print(exc.details, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    if threading.current_thread() is threading.main_thread():  # a worker's Faust installs its own over it
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return handler(args) or 0
    except VARError as exc:
        report_error(exc, args.verbose)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("var: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the command unwinds and stops what it started (a chaos run's or a
    bench's broker, Redis and workers), where Python's default would end it at once and leave
    them running."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
