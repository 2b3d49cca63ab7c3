"""SIGTERM ends a command the way Ctrl-C does: it unwinds (so a chaos run or a bench stops the
broker, Redis and workers it started) and exits 130 with one line, instead of dying at once."""
from __future__ import annotations

import argparse
import os
import signal

import pytest

from pipeline.cli import main as cli


def test_sigterm_unwinds_the_command_and_exits_130(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cleaned: list[bool] = []

    def handler(args: argparse.Namespace) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # not reached if the handler raised at once; bounded by pytest otherwise
            return 0
        finally:
            cleaned.append(True)

    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog="var")
        p.set_defaults(handler=handler, verbose=False)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main([]) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert cleaned == [True]
    assert capsys.readouterr().err.strip() == "var: interrupted"
