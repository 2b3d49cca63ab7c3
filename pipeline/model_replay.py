"""The embedded replay through a real MoE language model (``var replay`` with ``--router model``).

1. Read the corpus; its first ``train_fraction`` of records is the offline split.
2. Offline phase: route the split exactly (one streamed pass of the LM, every layer at once),
   add the model's training-text statistics (:mod:`pipeline.model.corpus_stats`) and build one
   fast-path table per MoE layer, thresholds calibrated per layer.
3. Online phase: route the rest in micro-batches through the :class:`LayeredEngine` -- per
   layer: cache -> fast path -> the layer's gate (learned call, recomputed from the token's
   receptive field) under that layer's budget governor, else the budget fallback.
4. Quality: run the LM over the online streams with exact routing, with VAR's experts and gate
   weights forced at every layer, and with two reference routings that show the metric's scale
   (the fast-path table for every token; uniformly random experts). See
   :mod:`pipeline.model.evaluate`. Also the per-layer token-id determinism
   (:mod:`pipeline.model.determinism`).

Same corpus + settings + checkpoint => the same report apart from the timing fields.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm import tqdm

from pipeline.assembly import build_engine, layer_budgets, load_model, thresholds
from pipeline.engine.adaptive import choose_thresholds
from pipeline.corpus.jsonl import iter_batches
from pipeline.engine.events import EventChunk
from pipeline.engine.layered import LayeredEngine, LayeredResult
from pipeline.engine.pairs import stream_previous
from pipeline.engine.stats import TokenStats
from pipeline.engine.table import RoutingTable, build_table
from pipeline.model.checkpoint import Checkpoint
from pipeline.model.corpus_stats import compute_stats, training_stats
from pipeline.model.determinism import token_determinism
from pipeline.model.evaluate import Routing, compare_routings, random_routing
from pipeline.model.router import ModelRouter, model_router_id, model_routers
from pipeline.model_report import ModelReplayReport, layer_report
from pipeline.replay import ReplayError
from pipeline.settings import Settings
from pipeline.sources import CorpusSource
from pipeline.timeline import engine_layers_point


@dataclass
class Routed:
    """Everything the online phase decided, in the flat stream layout (:mod:`pipeline.model.windows`)."""

    streams: list[np.ndarray]
    experts: list[np.ndarray]  # per layer [N, k]
    weights: list[np.ndarray]  # per layer [N, k]


def group_streams(chunks: Sequence[EventChunk]) -> list[np.ndarray]:
    """Token ids of each stream, in order of first appearance."""
    parts: dict[str, list[int]] = {}
    for c in chunks:
        parts.setdefault(c.stream, []).extend(c.tokens)
    return [np.asarray(t, dtype=np.int64) for t in parts.values()]


def offline_statistics(checkpoint: Checkpoint, chunks: Sequence[EventChunk]) -> list[TokenStats]:
    """Per layer: the training text's statistics plus the exact routing of the offline split."""
    cfg = checkpoint.config
    streams = group_streams(chunks)
    split = compute_stats(checkpoint, streams) if streams else [TokenStats(cfg.vocab_size, cfg.n_experts)] * cfg.n_layer
    merged = []
    for prior, local in zip(training_stats(checkpoint), split):
        stats = prior.copy()
        stats.merge(local)
        merged.append(stats)
    return merged


def layer_tables(settings: Settings, stats: Sequence[TokenStats], ids: Sequence[str], top_k: int) -> list[RoutingTable]:
    """One fast-path table per layer, thresholds calibrated per layer (:func:`choose_thresholds`,
    aiming at the layer's learned budget, :func:`~pipeline.assembly.layer_budgets`) so that each
    layer's misses fit its budget whatever the layer's entropy: the entries the statistics trust
    least get the learned calls."""
    tables, budgets = [], layer_budgets(settings, len(stats))
    for layer, layer_stats in enumerate(stats):
        choice = choose_thresholds(layer_stats, budgets[layer], thresholds(settings))
        meta = {"source": "offline", "layer": layer, "adaptive": choice.to_meta()}
        tables.append(build_table(layer_stats, choice.thresholds, top_k, ids[layer], 1, meta))
    return tables


class _Collector:
    """Accumulates the online decisions of every layer, then regroups them by stream."""

    def __init__(self, layers: int) -> None:
        self.codes: dict[str, int] = {}
        self.stream: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []
        self.experts: list[list[np.ndarray]] = [[] for _ in range(layers)]
        self.weights: list[list[np.ndarray]] = [[] for _ in range(layers)]

    def add(self, result: LayeredResult) -> None:
        ev = result.events
        codes = np.asarray([self.codes.setdefault(n, len(self.codes)) for n in ev.stream_names], np.int64)
        self.stream.append(codes[ev.stream_ids])
        self.tokens.append(ev.tokens)
        for l, r in enumerate(result.layers):
            self.experts[l].append(r.decisions.experts)
            self.weights[l].append(r.decisions.weights)

    def routed(self) -> Routed:
        stream = np.concatenate(self.stream)
        order = np.argsort(stream, kind="stable")
        tokens = np.concatenate(self.tokens)[order]
        bounds = np.flatnonzero(np.diff(stream[order])) + 1
        return Routed(np.split(tokens, bounds), [np.concatenate(e)[order] for e in self.experts],
                      [np.concatenate(w)[order] for w in self.weights])


def route_online(engine: LayeredEngine, chunks: Sequence[EventChunk], settings: Settings, show: bool
                 ) -> tuple[_Collector, float, list[dict[str, int]]]:
    collector = _Collector(len(engine))
    windows: dict = {}
    routing_s, timeline = 0.0, []
    with tqdm(total=sum(len(c) for c in chunks), unit="tok", unit_scale=True, file=sys.stderr, disable=not show,
              desc="route") as bar:
        for batch in iter_batches(chunks, settings.batch_size):
            t0 = time.perf_counter()
            result = engine.route_batch(batch, windows)
            routing_s += time.perf_counter() - t0
            if result.rejections:
                raise ReplayError(f"record {int(batch.offsets[result.rejections[0].index])}: "
                                  f"{result.rejections[0].reason}")
            collector.add(result)
            timeline.append(engine_layers_point(engine))
            bar.update(len(batch))
    return collector, routing_s, timeline


def reference_routings(routed: Routed, tables: Sequence[RoutingTable], num_experts: int, top_k: int,
                       seed: int) -> dict[str, Routing]:
    """VAR's routing plus the scale references: the table for every token (its pair's entry, else
    its token's -- no learned calls at all), random experts."""
    tokens = np.concatenate(routed.streams)
    prev = np.concatenate([stream_previous(s) for s in routed.streams])
    every = np.arange(len(tokens))
    fast = [t.routes(t.resolve(prev, tokens), every, tokens)[:2] for t in tables]
    return {"var": list(zip(routed.experts, routed.weights)), "fast_path_everywhere": fast,
            "random": random_routing(len(tokens), num_experts, top_k, len(tables), seed)}


@dataclass
class ModelPrepared:
    """What the offline phase hands to the online phase (shared by every budget of a frontier)."""

    checkpoint: Checkpoint
    online: list[EventChunk]
    tables: list[RoutingTable]
    stats: list[TokenStats]
    train_tokens: int


def prepare(source: CorpusSource, settings: Settings) -> ModelPrepared:
    """Read the corpus, split it and build the per-layer tables (steps 1-2 of the module docstring)."""
    if settings.table_file:
        raise ReplayError("--table-file files hold one layer's table; a model replay builds its per-layer tables "
                          "in the offline phase")
    checkpoint = load_model(settings)
    chunks = list(source.chunks(checkpoint.config.vocab_size))
    split = int(len(chunks) * settings.train_fraction)
    if split == len(chunks):
        raise ReplayError("the corpus has no records left after the offline split")
    stats = offline_statistics(checkpoint, chunks[:split])
    tables = layer_tables(settings, stats, router_ids(checkpoint), checkpoint.config.top_k)
    return ModelPrepared(checkpoint, chunks[split:], tables, stats, sum(len(c) for c in chunks[:split]))


def router_ids(checkpoint: Checkpoint) -> list[str]:
    return [model_router_id(checkpoint.digest, layer) for layer in range(checkpoint.config.n_layer)]


def route_prepared(prepared: ModelPrepared, settings: Settings, show: bool
                   ) -> tuple[LayeredEngine, list[ModelRouter], Routed, float, list[dict[str, int]]]:
    """The online phase with fresh routers and engines (the tables are shared, never mutated)."""
    routers = model_routers(prepared.checkpoint, settings.device)
    engine = build_engine(settings, routers, prepared.tables)
    collector, routing_s, timeline = route_online(engine, prepared.online, settings, show)
    return engine, routers, collector.routed(), routing_s, timeline


def run_model_replay(source: CorpusSource, settings: Settings, progress: bool | None = None) -> ModelReplayReport:
    """Run the embedded replay through the model named by ``settings.router`` (module docstring)."""
    wall_start = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    prepared = prepare(source, settings)
    cfg = prepared.checkpoint.config
    engine, routers, routed, routing_s, timeline = route_prepared(prepared, settings, show)
    variants = reference_routings(routed, prepared.tables, cfg.n_experts, cfg.top_k, settings.seed)
    total = sum(len(s) for s in routed.streams)
    with tqdm(total=total, unit="tok", unit_scale=True, file=sys.stderr, disable=not show, desc="quality") as bar:
        quality = compare_routings(prepared.checkpoint.model, routed.streams, variants, bar.update)
    determinism = token_determinism(prepared.checkpoint.model, routed.streams, prepared.stats)
    layers = [layer_report(e, r, d) for e, r, d in zip(engine.layers, routers, determinism)]
    return ModelReplayReport(
        source=source.name,
        checkpoint={"path": prepared.checkpoint.path, "sha256": prepared.checkpoint.digest, **cfg.to_dict()},
        tokens=total, train_tokens=prepared.train_tokens, budget=settings.budget,
        budget_window=settings.budget_window, governor=settings.governor, layers=layers, quality=quality,
        quality_bound_pct=settings.quality_bound_pct, routing_s=routing_s,
        wall_s=time.perf_counter() - wall_start, timeline=timeline)


