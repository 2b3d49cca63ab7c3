"""The type check, as part of the test suite (CI runs only the tests): mypy with pyproject.toml's
``[tool.mypy]`` -- a baseline for ``pipeline/`` and ``workers/``, strict on ``pipeline/engine/``.

The same as ``python -m mypy`` from the repository root. Incremental: its cache is
``.mypy_cache/`` (git-ignored), so a run after the first takes a few seconds.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_passes(monkeypatch):
    monkeypatch.chdir(ROOT)  # the configured files and cache_dir are relative to the repository root
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary",
                                      "--no-pretty", "--show-error-codes"])
    assert status == 0, f"mypy found type errors (run `python -m mypy` from the repository root):\n{stdout}{stderr}"


def test_engine_is_checked_strictly_and_the_package_is_typed():
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert {"pipeline", "workers"} <= set(mypy["files"])
    engine = [o for o in mypy["overrides"] if "pipeline.engine.*" in o["module"]]
    assert engine and all(engine[0].get(flag) for flag in
                          ("disallow_untyped_defs", "disallow_any_generics", "warn_return_any", "check_untyped_defs"))
    assert (ROOT / "pipeline" / "py.typed").is_file()
