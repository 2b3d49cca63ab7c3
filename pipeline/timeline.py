"""Replay timelines: the one place their points are built, by the embedded and the Kafka replays.

:attr:`pipeline.report.ReplayReport.timeline` is a list of points. The embedded replay adds a
point after every batch from its engine's counters (:func:`engine_point`, :func:`layers_point`);
the Kafka replays build the same points from collected outcomes (:func:`outcome_timeline`,
:func:`layers_timeline`).

A synthetic-router point holds the *cumulative*
decisions per tier (``cache``, ``fast``, ``learned``, ``budget_fallback``), ``tokens`` (all
decisions so far) and ``table_version``. Outcomes are taken in arrival order, one point every
``step`` outcomes (and one for the rest). Several router workers may briefly use different table
versions; a point's ``table_version`` is the highest version any outcome up to it was routed
with, so it never goes backwards and a change marks when a new table first went live. With
several MoE layers the timeline is one layer's (``layer``, default 0); all layers share the
table-set version.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from pipeline.engine.engine import VAREngine
from pipeline.engine.events import TIER_LABELS, Tier
from pipeline.engine.layered import LayeredEngine
from pipeline.outcomes import Outcomes


def tier_point(tier_counts: Iterable[int], tokens: int, table_version: int) -> dict[str, int]:
    """A synthetic-router timeline point: decisions per tier so far, all decisions so far, version."""
    return {**{label: int(n) for label, n in zip(TIER_LABELS, tier_counts)}, "tokens": int(tokens),
            "table_version": int(table_version)}


def layers_point(learned: Iterable[int], tokens: int, table_version: int | None = None) -> dict[str, int]:
    """A model timeline point: decisions so far, each layer's learned calls so far
    (``learned_l<layer>``) and, from outcomes, the highest table-set version so far."""
    return {"tokens": int(tokens), **({} if table_version is None else {"table_version": int(table_version)}),
            **{f"learned_l{layer}": int(n) for layer, n in enumerate(learned)}}


def engine_point(engine: VAREngine, table_version: int) -> dict[str, int]:
    """:func:`tier_point` from an engine's counters (after a batch routed with ``table_version``)."""
    return tier_point(engine.counters.tiers, engine.counters.decisions, table_version)


def engine_layers_point(engine: LayeredEngine) -> dict[str, int]:
    """:func:`layers_point` from a multi-layer engine's counters."""
    return layers_point((e.counters.tiers[Tier.LEARNED] for e in engine.layers), engine.layers[0].counters.decisions)


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
    return [tier_point(row, end + 1, version) for row, end, version in zip(counts, ends, versions)]


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
    return [layers_point((column[i] for column in learned), end + 1, versions[i]) for i, end in enumerate(ends)]
