"""The import layering of README "Architecture": a lower layer never imports a higher one.

engine <- stores/model <- stream/workers <- tools (bench, chaos) <- cli

Every module of ``pipeline`` and ``workers`` belongs to one layer (``LAYERS``; a new top-level
module or package must be placed there, or this test fails). An import -- at module level or
inside a function, ``TYPE_CHECKING`` included -- may name its own layer or a lower one. And the
units (packages and top-level modules) import each other without cycles, so "lower" is real.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# layer -> the units (first two dotted parts: a package or a top-level module) in it
LAYERS: dict[str, tuple[str, ...]] = {
    "engine": ("pipeline.errors", "pipeline.settings", "pipeline.settings_checks", "pipeline.engine", "pipeline.outcomes"),
    "stores/model": ("pipeline.stores", "pipeline.model", "pipeline.corpus", "pipeline.sources", "pipeline.assembly",
                     "pipeline.table_sets", "pipeline.stack", "pipeline.quality", "pipeline.report",
                     "pipeline.model_report", "pipeline.timeline", "pipeline.observability", "pipeline.stats_metrics",
                     "pipeline.capture", "pipeline.plot"),
    "stream/workers": ("pipeline.stream", "workers", "pipeline.replay", "pipeline.model_replay",
                       "pipeline.capture_replay", "pipeline.capture_source", "pipeline.verify", "pipeline.frontier"),
    "tools": ("pipeline.bench", "pipeline.chaos"),
    "cli": ("pipeline.cli", "pipeline.__main__", "pipeline"),
}
RANK = {unit: rank for rank, units in enumerate(LAYERS.values()) for unit in units}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return "workers" if parts[0] == "workers" else ".".join(parts[:2])


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) of every project import in ``path``."""
    module, is_package = module_name(path, root), path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in ("pipeline", "workers")]


def sources(root: Path = ROOT) -> list[Path]:
    return sorted([*root.joinpath("pipeline").rglob("*.py"), *root.joinpath("workers").rglob("*.py")])


def upward_imports(root: Path = ROOT) -> list[str]:
    """``file:line (layer) imports module (layer)`` for every import of a higher layer."""
    names = list(LAYERS)
    wrong = []
    for path in sources(root):
        here = unit_of(module_name(path, root))
        for line, name in imported(path, root):
            there = unit_of(name)
            if RANK.get(there, -1) > RANK.get(here, len(LAYERS)):
                wrong.append(f"{path.relative_to(root)}:{line} ({names[RANK[here]]}) imports {name} "
                             f"({names[RANK[there]]})")
    return wrong


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in sources()}
    assert units - RANK.keys() == set(), "place these in LAYERS (tests/unit/test_layering.py) and the README"


def test_no_module_imports_a_higher_layer() -> None:
    wrong = upward_imports()
    assert wrong == [], "\n".join(wrong)


def test_units_import_each_other_without_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for path in sources():
        here = unit_of(module_name(path))
        edges.setdefault(here, set()).update(u for _, n in imported(path) if (u := unit_of(n)) != here)
    edges.pop("pipeline", None)  # the package's own __init__ (re-exports nothing below cli)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    for unit in sorted(edges):
        if state.get(unit) is None and visit(unit, []):
            break
    assert cycle == [], " -> ".join(cycle)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The scanner is not blind (the test can fail): an engine module importing the CLI inside a
    function and a stream module importing a tool through a relative import are both found."""
    (tmp_path / "pipeline" / "engine").mkdir(parents=True)
    (tmp_path / "pipeline" / "stream").mkdir()
    (tmp_path / "pipeline" / "engine" / "probe.py").write_text("def f():\n    from pipeline.cli.common import x\n")
    (tmp_path / "pipeline" / "stream" / "probe.py").write_text("from ..bench import engine_bench\n")
    (tmp_path / "pipeline" / "stream" / "fine.py").write_text("from ..engine import probe\nfrom . import probe\n")
    assert upward_imports(tmp_path) == [
        "pipeline/engine/probe.py:2 (engine) imports pipeline.cli.common (cli)",
        "pipeline/stream/probe.py:1 (stream/workers) imports pipeline.bench (tools)"]
