"""One base error (pipeline/errors.py): ``str()`` is one line, details apart; ``var`` catches it
once and prints exactly one line ``var: error: ...`` with exit status 2."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from pipeline.cli import config_cmd
from pipeline.cli.main import main
from pipeline.errors import VARError
from pipeline.stack.errors import StackError
from pipeline.stack.local_stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every ``class ...Error(...)`` / ``...Failed(...)`` in pipeline/ and workers/."""
    found = []
    for path in sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Failed")) and node.bases:
                found.append((module, node.name))
    return found


ERROR_CLASSES = _error_classes()
LISTED = {"CorpusError", "CheckpointError", "ReplayError", "RecordError", "CertificateError", "SnapshotError",
          "SettingsError", "OutcomeError", "StackError", "UserError", "CaptureError", "VerifyInputError",
          "WorkerFailed", "TopicError", "StatsWorkerError"}


def test_the_scan_finds_every_listed_error_class() -> None:
    assert LISTED <= {name for _, name in ERROR_CLASSES}


@pytest.mark.parametrize("module,name", ERROR_CLASSES)
def test_each_error_class_is_a_var_error_with_a_one_line_str(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, VARError)
    err = cls("the problem\nmore text", details="a log tail")
    assert str(err) == err.message == "the problem"
    assert err.details == "more text\na log tail"
    assert err.__notes__ == ["more text\na log tail"]  # tracebacks and pytest reports show it


def test_errors_keep_their_other_bases() -> None:
    from pipeline.corpus.jsonl import CorpusError
    from pipeline.settings import SettingsError
    from pipeline.stream.topics import TopicError

    assert issubclass(CorpusError, ValueError) and issubclass(SettingsError, ValueError)
    assert issubclass(StackError, RuntimeError) and issubclass(TopicError, RuntimeError)
    assert str(VARError()) == "VARError" and VARError("x").details is None


def _fail_stack_up(*args, **kwargs):
    raise StackError("kafka exited during startup (log: /x/kafka.log)", "--- last lines ---\nERROR boom")


def _fail_config(args):
    raise VARError("a message\nwith a second line")


@pytest.mark.parametrize("argv,patch,needles", [
    (["replay", "missing.jsonl"], None, ["no such corpus file", "missing.jsonl"]),
    (["config", "--budget", "2"], None, ["--budget='2'", "[0, 1]"]),
    (["stats", "show", "--file", "missing.json"], None, ["no such table file"]),
    (["capture", "replay", "missing.npz"], None, ["no such capture file"]),
    (["stack", "up", "--state-dir", "st"], (LocalStack, "up", _fail_stack_up),
     ["kafka exited during startup", "kafka.log", "--verbose"]),
    (["config"], (config_cmd, "run", _fail_config), ["a message"]),
], ids=["missing corpus", "invalid setting", "missing table", "missing capture", "stack details", "multi-line"])
def test_main_prints_exactly_one_line_and_exits_2(argv, patch, needles, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    if patch:
        monkeypatch.setattr(*patch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("var: error: ") and err.endswith("\n"), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "ERROR boom" not in err and "second line" not in err


def test_verbose_prints_the_details_after_the_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(LocalStack, "up", _fail_stack_up)
    for argv in (["--verbose", "stack", "up"], ["stack", "up", "-v"]):
        assert main([*argv, "--state-dir", str(tmp_path)]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines == ["var: error: kafka exited during startup (log: /x/kafka.log)", "--- last lines ---",
                         "ERROR boom"]
