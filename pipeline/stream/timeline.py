"""The replay timeline from collected outcomes (the Kafka replay's twin of the embedded one).

:attr:`pipeline.report.ReplayReport.timeline` is a list of points, each with the *cumulative*
decisions per tier (``cache``, ``fast``, ``learned``, ``budget_fallback``), ``tokens`` (all
decisions so far) and ``table_version``. Outcomes are taken in arrival order, one point every
``step`` outcomes (and one for the rest). Several router workers may briefly use different table
versions; a point's ``table_version`` is the highest version any outcome up to it was routed
with, so it never goes backwards and a change marks when a new table first went live. With
several MoE layers the timeline is one layer's (``layer``, default 0); all layers share the
table-set version.
"""
from __future__ import annotations

import numpy as np

from pipeline.engine.events import TIER_LABELS
from pipeline.outcomes import Outcomes


def outcome_timeline(outcomes: Outcomes, step: int = 1024, layer: int = 0) -> list[dict[str, int]]:
    """Cumulative tier counts every ``step`` outcomes (arrival order); see the module docstring."""
    if step < 1:
        raise ValueError("timeline step must be >= 1")
    n = len(outcomes)
    if n == 0:
        return []
    ends = np.unique(np.append(np.arange(step, n, step), n)) - 1  # last row of each point
    columns = outcomes.layers[layer]
    onehot = columns.tiers.astype(np.int64)[:, None] == np.arange(len(TIER_LABELS))[None, :]
    counts = np.cumsum(onehot, axis=0)[ends]
    versions = np.maximum.accumulate(columns.table_versions)[ends]
    return [{**{label: int(row[i]) for i, label in enumerate(TIER_LABELS)}, "tokens": int(end) + 1,
             "table_version": int(version)} for row, end, version in zip(counts, ends, versions)]


def layers_timeline(outcomes: Outcomes, step: int = 1024) -> list[dict[str, int]]:
    """The model replay's timeline: every ``step`` outcomes (arrival order) the decisions so far
    (``tokens``), each layer's learned calls so far (``learned_l<layer>``) and the highest
    table-set version used so far -- the embedded model replay's format plus ``table_version``."""
    n = len(outcomes)
    if n == 0:
        return []
    ends = np.unique(np.append(np.arange(step, n, step), n)) - 1
    learned = [np.cumsum(layer.learned())[ends] for layer in outcomes.layers]
    versions = np.maximum.accumulate(outcomes.layers[0].table_versions)[ends]
    return [{"tokens": int(end) + 1, "table_version": int(versions[i]),
             **{f"learned_l{l}": int(column[i]) for l, column in enumerate(learned)}} for i, end in enumerate(ends)]
