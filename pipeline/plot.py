"""Draw a replay's timeline: learned share and tier mix over time, table versions marked.

Input is :attr:`pipeline.report.ReplayReport.timeline` (cumulative tier counts per point, see
:mod:`pipeline.timeline`). Both panels show *per-interval* shares (the change between
consecutive points), so a falling learned share is visible instead of averaged away; the x axis
counts decisions. Dotted vertical lines mark the points where a new table version went live.
Rendering uses matplotlib's Agg canvas directly (no pyplot, no display, no global state).
matplotlib is optional (the ``plot`` extra): every plot calls :func:`require_matplotlib` first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.engine.events import TIER_LABELS
from pipeline.errors import VARError
from pipeline.report import ReplayReport

TIER_COLORS = {"cache": "#4c72b0", "fast": "#55a868", "learned": "#c44e52", "budget_fallback": "#8172b2",
               "prior": "#937860"}
MAX_VERSION_LABELS = 12
PLOT_EXTRA = "pip install 'var-routing[plot]'"


def require_matplotlib(flag: str = "--plot") -> None:
    """Raise a (one-line) :class:`~pipeline.errors.VARError` if matplotlib is missing: it is not
    a runtime dependency, the ``plot`` extra installs it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise VARError(f"{flag} needs matplotlib: {PLOT_EXTRA}") from None


def interval_shares(timeline: Sequence[dict[str, int]]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(x: decisions at the end of each interval, table version per interval, tier -> share per interval)."""
    if not timeline:
        return np.zeros(0), np.zeros(0, np.int64), {label: np.zeros(0) for label in TIER_LABELS}
    tokens = np.asarray([p["tokens"] for p in timeline], np.float64)
    sizes = np.diff(tokens, prepend=0.0)
    keep = sizes > 0
    shares = {}
    for label in TIER_LABELS:
        counts = np.diff(np.asarray([p.get(label, 0) for p in timeline], np.float64), prepend=0.0)
        shares[label] = counts[keep] / sizes[keep]
    versions = np.asarray([p.get("table_version", 0) for p in timeline], np.int64)[keep]
    return tokens[keep], versions, shares


def version_changes(x: np.ndarray, versions: np.ndarray) -> list[tuple[float, int]]:
    """(decisions when the version changed, new version): at the start of the first interval using it."""
    starts = np.concatenate(([0.0], x[:-1]))
    idx = np.flatnonzero(np.diff(versions) != 0) + 1
    return [(float(starts[i]), int(versions[i])) for i in idx]


def timeline_summary(timeline: Sequence[dict[str, int]], parts: int = 5) -> dict[str, Any]:
    """Learned share in each of ``parts`` consecutive slices of the decisions, and the versions."""
    if not timeline:
        return {"learned_share_by_part": [], "versions": [], "tokens": 0}
    tokens = np.asarray([0] + [p["tokens"] for p in timeline], np.float64)
    learned = np.asarray([0] + [p.get("learned", 0) for p in timeline], np.float64)
    bounds = np.linspace(0, tokens[-1], parts + 1)
    at = np.interp(bounds, tokens, learned)
    by_part = [float((at[i + 1] - at[i]) / (bounds[i + 1] - bounds[i])) if bounds[i + 1] > bounds[i] else 0.0
               for i in range(parts)]
    versions = sorted({int(p.get("table_version", 0)) for p in timeline})
    return {"learned_share_by_part": by_part, "versions": versions, "tokens": int(tokens[-1])}


def _mark_versions(axes: Sequence[Any], changes: list[tuple[float, int]]) -> None:
    every = max(1, -(-len(changes) // MAX_VERSION_LABELS))
    for n, (x, version) in enumerate(changes):
        for ax in axes:
            ax.axvline(x, color="0.35", linestyle=":", linewidth=0.8)
        if n % every == 0:
            axes[0].annotate(f"v{version}", (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                             textcoords="offset points", fontsize=7, color="0.3")


def plot_timeline(report: ReplayReport, path: str | Path) -> dict[str, Any]:
    """Write the two-panel PNG to ``path``; returns :func:`timeline_summary` of the report."""
    require_matplotlib()
    from matplotlib.figure import Figure

    x, versions, shares = interval_shares(report.timeline)
    changes = version_changes(x, versions)
    if len(x):  # steps-pre: the value at x[i] covers (x[i-1], x[i]]; start the first step at 0
        x = np.concatenate(([0.0], x))
        shares = {label: np.concatenate((s[:1], s)) for label, s in shares.items()}
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.3))
    top.plot(x, shares["learned"], color=TIER_COLORS["learned"], linewidth=1.2, drawstyle="steps-pre",
             label="learned share (per interval)")
    top.axhline(report.budget, color="black", linestyle="--", linewidth=1,
                label=f"budget {100 * report.budget:.0f}% (governor {'on' if report.governor else 'off'})")
    top.set_ylabel("learned share")
    top.set_ylim(0, 1.02)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    top.set_title(f"VAR {report.mode} replay: {report.source}", fontsize=9)
    if len(x):
        bottom.stackplot(x, *(shares[label] for label in TIER_LABELS), labels=TIER_LABELS,
                         colors=[TIER_COLORS[label] for label in TIER_LABELS], alpha=0.85, step="pre")
        bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no decisions", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("tier mix")
    bottom.set_xlabel("decisions (tokens routed)")
    bottom.set_xlim(left=0)
    _mark_versions((top, bottom), changes)
    fig.savefig(path, dpi=110)
    return timeline_summary(report.timeline)
