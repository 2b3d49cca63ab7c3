"""The ``var`` command line: one entry point, one subcommand per capability.

Every user-facing failure -- a missing file, a malformed corpus line, an invalid setting, a
service that will not start -- is printed as ONE line ``var: error: ...`` on stderr with exit
status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from pipeline.corpus.jsonl import CorpusError
from pipeline.engine.records import RecordError
from pipeline.replay import ReplayError
from pipeline.settings import SettingsError

from . import (bench_cmd, capture_cmd, chaos_cmd, config_cmd, corpus_cmd, frontier_cmd, model_cmd, outcomes_cmd, produce_cmd, replay_cmd, stack_cmd,
               stats_cmd, verify_cmd, worker_cmd)
from .common import UserError

EXIT_USER_ERROR = 2
_USER_ERRORS: tuple[type[BaseException], ...] = (UserError, CorpusError, RecordError, ReplayError, SettingsError)
_MODULES = (replay_cmd, frontier_cmd, corpus_cmd, model_cmd, produce_cmd, worker_cmd, outcomes_cmd, stats_cmd, bench_cmd, chaos_cmd, stack_cmd,
            verify_cmd, capture_cmd, config_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="var", description="VAR: Verifiable Adaptive Routing for Mixture-of-Experts models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _MODULES:
        module.register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.stack.errors import StackError
    from pipeline.stream.topics import TopicError
    from pipeline.stream.worker_pool import WorkerFailed

    return _USER_ERRORS + (StackError, TopicError, WorkerFailed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args) or 0
    except _user_errors() as exc:
        print(f"var: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("var: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
