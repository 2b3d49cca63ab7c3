"""Routing every MoE layer of a model: one :class:`~.engine.VAREngine` per layer, one batch.

Each layer has its own learned router (the gate of that layer), receptive field (context
window), decision cache keys (the layer is part of the key), fast-path table, budget governor
and counters -- the budget bounds learned calls *per layer* and per budget window; each layer
audits its own fast path (``EngineConfig.audit_rate``, :mod:`.audit`) under its own governor,
inside its one router call per batch. The layers
share the stream windows: contexts are built once, for the widest layer, and each layer reads
the last ``window`` columns of them.

The two-step protocol of :mod:`.engine` carries over: :meth:`LayeredEngine.prepare` returns
the cache keys of ALL layers as one list (one store round trip per batch), and
:meth:`LayeredEngine.complete` takes the lookups in that order. A synthetic router is simply a
one-layer engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, MutableMapping, Sequence

import numpy as np

from .context import Rejection, ContextWindow, build_contexts
from .engine import VAREngine
from .events import EventBatch
from .profile import StageClock, lap
from .route_types import RoutePlan, RouteResult
from .table import RoutingTable


@dataclass(slots=True)
class LayeredPlan:
    events: EventBatch  # accepted events
    accepted: np.ndarray  # bool over the input batch
    windows: dict[str, ContextWindow]
    rejections: list[Rejection]
    layers: list[RoutePlan]

    @property
    def unique_keys(self) -> list[int]:
        """Every layer's cache keys, layer after layer (keys of different layers never collide)."""
        return [key for plan in self.layers for key in plan.unique_keys]


@dataclass(slots=True)
class LayeredResult:
    events: EventBatch
    accepted: np.ndarray
    windows: dict[str, ContextWindow]
    rejections: list[Rejection]
    layers: list[RouteResult]  # one per MoE layer, rows aligned with ``events``

    @property
    def cache_keys(self) -> list[int]:
        return [key for r in self.layers for key in r.cache_keys]

    @property
    def cache_values(self) -> list[bytes]:
        return [value for r in self.layers for value in r.cache_values]


class LayeredEngine:
    """The engines of a model's MoE layers, routed together batch by batch."""

    def __init__(self, layers: Sequence[VAREngine]) -> None:
        if not layers:
            raise ValueError("a layered engine needs at least one layer")
        if [e.config.layer for e in layers] != list(range(len(layers))):
            raise ValueError("layer engines must be given in layer order 0, 1, ...")
        self.layers = list(layers)
        self.context_window = max(e.context_window for e in self.layers)
        self.profile: StageClock | None = None

    def attach_profile(self, clock: StageClock | None) -> None:
        """Time every layer's stages on ``clock`` (None: stop timing)."""
        self.profile = clock
        for engine in self.layers:
            engine.profile = clock

    def __len__(self) -> int:
        return len(self.layers)

    def set_tables(self, tables: Sequence[RoutingTable]) -> None:
        """One table per layer (e.g. a newly published version)."""
        if len(tables) != len(self.layers):
            raise ValueError(f"got {len(tables)} fast-path tables for {len(self.layers)} layers")
        for engine, table in zip(self.layers, tables):
            engine.set_table(table)

    def prepare(self, batch: EventBatch, windows: Mapping[str, ContextWindow]) -> LayeredPlan:
        ctx = build_contexts(batch, windows, self.context_window)
        lap(self.profile, "contexts")
        plans = [engine.plan(batch, ctx) for engine in self.layers]
        return LayeredPlan(plans[0].events, ctx.accepted, ctx.windows, ctx.rejections, plans)

    def complete(self, plan: LayeredPlan, cached: Sequence[bytes | None]) -> LayeredResult:
        """Decisions of every layer, given the lookups of ``plan.unique_keys`` in order."""
        if len(cached) != len(plan.unique_keys):
            raise ValueError(f"got {len(cached)} cache lookups for {len(plan.unique_keys)} keys")
        results, start = [], 0
        for engine, layer_plan in zip(self.layers, plan.layers):
            end = start + len(layer_plan.unique_keys)
            results.append(engine.complete(layer_plan, cached[start:end]))
            start = end
        return LayeredResult(plan.events, plan.accepted, plan.windows, plan.rejections, results)

    def complete_learned(self, plan: LayeredPlan) -> LayeredResult:
        """The always-learned baseline at every layer."""
        results = [engine.complete_learned(p) for engine, p in zip(self.layers, plan.layers)]
        return LayeredResult(plan.events, plan.accepted, plan.windows, plan.rejections, results)

    def route_batch(self, batch: EventBatch, windows: MutableMapping[str, ContextWindow]) -> LayeredResult:
        """Route with each layer's own (synchronous) cache; updates ``windows`` in place."""
        plan = self.prepare(batch, windows)
        results = [engine.finish(p, engine.columns.lookup(p.unique)) for engine, p in zip(self.layers, plan.layers)]
        for engine, r in zip(self.layers, results):
            if r.writes is not None:
                engine.columns.store(r.write_keys, r.writes)
        windows.update(plan.windows)
        return LayeredResult(plan.events, plan.accepted, plan.windows, plan.rejections, results)
