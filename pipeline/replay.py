"""The embedded replay -- VAR's main job, in-process with in-memory stores.

1. Scan the corpus (streaming) for its size and vocabulary.
2. Offline phase: route the first ``train_fraction`` of its records with the learned router
   and build the fast-path table from the statistics -- or load a table file instead.
3. Online phase: route the remaining records in micro-batches through the engine (cache ->
   fast path -> learned router, budget governor), timing only the routing.
4. Route the same events with the learned router alone (the exact reference) and measure
   agreement and MoE-layer quality; build the report.

Same corpus + settings => identical report apart from the timing fields.
"""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from pipeline.corpus.jsonl import iter_batches
from pipeline.assembly import engine_config, router_spec, thresholds
from pipeline.engine.context import ContextWindow
from pipeline.engine.engine import RouteResult, VAREngine
from pipeline.engine.events import EventChunk, Tier, TIER_LABELS
from pipeline.engine.offline import collect_statistics
from pipeline.engine.pairs import stats_pair_cap
from pipeline.engine.routers import TorchRouter, build_router
from pipeline.engine.stats import TokenStats
from pipeline.engine.table import RoutingTable, build_table
from pipeline.errors import VARError
from pipeline.quality import QualityAccumulator
from pipeline.report import ReplayReport
from pipeline.settings import Settings
from pipeline.sources import CorpusSource
from pipeline.timeline import engine_point


class ReplayError(VARError, ValueError):
    """A replay that cannot run (bad corpus, inconsistent table...); one-line message."""


@dataclass
class Prepared:
    """What the offline phase hands to the online phase."""

    router: TorchRouter
    table: RoutingTable
    table_source: str
    train_tokens: int
    vocab_size: int
    records: int
    train_records: int
    stats: TokenStats | None = None  # the offline statistics (None with a table file)


def resolve_vocab(settings: Settings, max_token: int) -> int:
    """The configured vocabulary size, or the corpus's (largest token + 1).

    A configured size is not checked here: the corpus reader rejects each out-of-vocabulary
    token with its line number.
    """
    if settings.vocab_size is None:
        return max(1, max_token + 1)
    return settings.vocab_size


def offline_phase(source: CorpusSource, settings: Settings) -> tuple[Prepared, Iterator[EventChunk]]:
    """Build router and table; returns them and the iterator positioned after the training split."""
    info = source.info()
    vocab = resolve_vocab(settings, info.max_token)
    router = build_router(router_spec(settings, vocab), settings.device)
    chunks = source.chunks(vocab)
    if settings.table_file:
        return Prepared(router, RoutingTable.load(settings.table_file, router.router_id), f"file {settings.table_file}", 0, vocab,
                        info.records, 0), chunks
    train_records = int(info.records * settings.train_fraction)
    train = iter_batches(itertools.islice(chunks, train_records), settings.batch_size)  # streamed, not held
    stats = collect_statistics(router, train, settings.context_window, pair_cap=stats_pair_cap(settings.pair_cap))
    table = build_table(stats, thresholds(settings), settings.top_k, router.router_id, 1,
                        {"source": "offline", "records": train_records})
    train_tokens = int(stats.total_frequency)
    return Prepared(router, table, f"offline phase on {train_tokens:,} tokens", train_tokens, vocab,
                    info.records, train_records, stats), chunks


BatchHook = Callable[[RouteResult], "RoutingTable | None"]


def run_replay(source: CorpusSource, settings: Settings, progress: bool | None = None,
               on_batch: BatchHook | None = None) -> ReplayReport:
    """Run the embedded replay and return its report (see module docstring).

    ``on_batch`` is called after every batch with its result and may return a new table, which
    the engine uses from the next batch on (the in-process stats refresher does this).
    """
    wall_start = time.perf_counter()
    prepared, chunks = offline_phase(source, settings)
    engine = VAREngine(prepared.router, prepared.table, engine_config(settings))
    quality = QualityAccumulator(prepared.vocab_size, settings.experts, settings.seed, settings.quality_sample)
    windows: dict[str, ContextWindow] = {}
    timeline: list[dict[str, int]] = []
    routing_s = 0.0
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=prepared.records - prepared.train_records, unit="rec", unit_scale=True, file=sys.stderr,
              disable=not show, desc="replay") as bar:
        for batch in iter_batches(chunks, settings.batch_size):
            t0 = time.perf_counter()
            result = engine.route_batch(batch, windows)
            routing_s += time.perf_counter() - t0
            _check_rejections(result)
            exact = prepared.router.route(result.contexts)
            d = result.decisions
            quality.add(result.events.streams if quality.wants_sample else [], result.events.tokens, d.experts,
                        d.weights, exact.experts, exact.weights)
            timeline.append(engine_point(engine, d.table_version))
            if on_batch is not None and (new_table := on_batch(result)) is not None:
                engine.set_table(new_table)
            bar.update(len(np.unique(batch.offsets)))
    return _build_report(source, settings, prepared, engine, quality.result(), routing_s,
                         time.perf_counter() - wall_start, timeline)


def _check_rejections(result: RouteResult) -> None:
    if result.rejections:
        first = result.rejections[0]
        offset = int(result.events.offsets[0]) if len(result.events) else -1
        raise ReplayError(f"event {first.index} of the batch starting at record {offset}: {first.reason}")


def _build_report(source: CorpusSource, settings: Settings, prepared: Prepared, engine: VAREngine,
                  quality, routing_s: float, wall_s: float, timeline: list[dict[str, int]]) -> ReplayReport:
    c = engine.counters
    spec = prepared.router.spec
    table = engine.table
    return ReplayReport(
        source=source.name,
        mode="embedded",
        router={"id": spec.router_id, "kind": spec.kind, "vocab_size": spec.vocab_size, "hidden": spec.hidden,
                "experts": spec.num_experts, "top_k": spec.top_k, "window": spec.window, "device": settings.device},
        table={"version": table.version, "size": table.size, "source": prepared.table_source,
               "thresholds": table.thresholds.to_dict()},
        tokens=c.decisions,
        train_tokens=prepared.train_tokens,
        tiers={label: int(c.tiers[t]) for t, label in enumerate(TIER_LABELS)},
        cache_lookups=c.cache_lookups,
        learned_calls=int(c.tiers[Tier.LEARNED]),
        budget=settings.budget,
        budget_window=settings.budget_window,
        governor=settings.governor,
        max_window_learned=engine.ledger.max_sliding,
        window_learned=list(engine.ledger.block_learned),
        window_sizes=engine.ledger.block_sizes(),
        quality=quality,
        routing_s=routing_s,
        wall_s=wall_s,
        timeline=timeline,
    )
