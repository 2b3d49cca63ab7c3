"""matplotlib is optional (the ``plot`` extra): without it every ``--plot`` is ONE user error, found
before the run, and nothing else needs it. PyYAML is only the tests'."""
from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.errors import VARError
from pipeline.plot import PLOT_EXTRA, require_matplotlib

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = "--plot needs matplotlib: pip install 'var-routing[plot]'"


@pytest.fixture
def no_matplotlib(monkeypatch):
    """``import matplotlib`` (and so every ``matplotlib.*``) raises ImportError, as when it is not installed."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for name in list(os.environ):
        if name.startswith("VAR_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("argv", [
    ["replay", "--synthetic", "--streams", "2", "--tokens-per-stream", "100"],
    ["frontier"],
    ["bench", "scaling"],
], ids=lambda argv: " ".join(argv[:2]))
def test_plot_without_matplotlib_is_one_line_error(no_matplotlib, tmp_path, capsys, argv):
    png = tmp_path / "out.png"
    assert main([*argv, "--plot", str(png)]) == 2
    err = capsys.readouterr().err
    assert err == f"var: error: {MESSAGE}\n"
    assert not png.exists()


def test_require_matplotlib(no_matplotlib):
    with pytest.raises(VARError) as info:
        require_matplotlib()
    assert str(info.value) == MESSAGE


def test_replay_without_plot_needs_no_matplotlib(no_matplotlib, capsys):
    assert main(["replay", "--synthetic", "--streams", "2", "--tokens-per-stream", "100", "--json"]) in (0, 1)
    assert '"tokens"' in capsys.readouterr().out


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_matplotlib_and_yaml_are_not_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not _names(project["dependencies"]) & {"matplotlib", "pyyaml"}
    assert "matplotlib" in _names(extras["plot"]) and "[plot]" in PLOT_EXTRA
    assert {"pyyaml", "matplotlib", "mypy", "pytest"} <= _names(extras["dev"])  # the tests need them
