"""``var replay --router model --via kafka``: the model replay's job, done by the streaming system.

1. Offline phase in-process, the embedded replay's own code (:func:`pipeline.model_replay.prepare`:
   per-layer tables calibrated to the budget), published with their statistics as ONE table set
   to the run's Redis namespace -- or nothing (``cold``).
2. A fresh run id scopes topics, consumer group and Redis namespace
   (:func:`~pipeline.stream.kafka_replay.scoped_settings`); ``workers`` router processes route
   every layer of the model (``VAR_ROUTER=model``), optionally next to the stats worker. Once all
   routers are in the consumer group, the online events (``prepared.online``) are produced and
   every outcome is collected back.
3. The routed streams and per-layer experts/weights are rebuilt from the outcomes (each stream
   ordered by seq, streams in order of first appearance in the online events: the embedded
   replay's layout) and scored exactly as the embedded replay scores them
   (:func:`~pipeline.model_replay.reference_routings`, :func:`compare_routings`,
   :func:`token_determinism`), so the two reports compare field by field. The reference
   ``fast_path_everywhere`` always uses the offline tables (with ``cold`` too); ``table_size``
   is that of the newest table set the routers used.
4. Per layer, from the outcomes: tiers (distinct outcomes); learned share over complete budget
   windows and the most learned calls in any window (every outcome, duplicates included, per
   worker and per layer: a layer's ``pos`` is its governor's clock); cache hit rate (cache-tier
   decisions / lookups under ``cache_scope``). The outcomes do not carry the learned router's
   timing: ``learned_us_per_token`` is reported as 0 (unknown). The timeline (learned calls per
   layer and table-set version over the outcomes in arrival order) comes from every outcome.
5. Completeness: events in, distinct outcomes, duplicates, missing, invalid outcomes, dead letters,
   per-layer context mismatches, worker exits; the constraint ``complete`` needs all of them
   clean. With missing events the quality is measured over the events that came back.
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Sequence

import numpy as np
from tqdm import tqdm

from pipeline.engine.context import layer_context_hashes
from pipeline.assembly import layer_budgets
from pipeline.engine.audit import AGREED, audit_summary
from pipeline.engine.events import TIER_LABELS, EventBatch, Tier, served_by_key, tier_key_counts
from pipeline.engine.table import RoutingTable
from pipeline.model.determinism import LayerDeterminism, token_determinism
from pipeline.model.evaluate import compare_routings
from pipeline.model.router import ModelRouter, model_routers
from pipeline.model_replay import ModelPrepared, Routed, prepare, reference_routings
from pipeline.model_report import LayerReport, ModelReplayReport
from pipeline.outcomes import Outcomes
from pipeline.replay import ReplayError
from pipeline.report import full_window_share
from pipeline.timeline import layers_timeline
from pipeline.settings import Settings
from pipeline.sources import CorpusSource

from .collector import Collected
from .kafka_access import KafkaAccess
from .kafka_replay import KafkaReplayOptions, route_through_pipeline, scoped_settings
from .published import load_published
from .replay_checks import align, budget_ledger, completeness_section, context_mismatches
from .topics import ensure_topics, pipeline_topics


def routed_from_outcomes(outcomes: Outcomes, stream_order: Sequence[str]) -> Routed:
    """The routed streams of distinct ``outcomes``: one token array per stream, ordered by seq;
    streams in ``stream_order`` first (those without outcomes left out), then any others in order
    of first appearance; per layer the experts/weights in the same flat layout."""
    if not len(outcomes):
        raise ValueError("no outcomes to rebuild streams from")
    names = {s: i for i, s in enumerate(dict.fromkeys([*stream_order, *outcomes.streams]))}
    codes = np.fromiter((names[s] for s in outcomes.streams), np.int64, len(outcomes))
    order = np.lexsort((outcomes.seqs, codes))
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return Routed(np.split(outcomes.tokens[order], bounds), [layer.experts[order] for layer in outcomes.layers],
                  [layer.weights[order] for layer in outcomes.layers])


def layer_reports(outcomes: Outcomes, everything: Outcomes, routers: Sequence[ModelRouter],
                  tables: Sequence[RoutingTable], determinism: Sequence[LayerDeterminism],
                  settings: Settings) -> list[LayerReport]:
    """Per layer, what the outcomes show (module docstring, step 4): ``outcomes`` distinct,
    ``everything`` with duplicates (the governors counted those decisions too)."""
    window, n, reports = settings.budget_window, max(1, len(outcomes)), []
    budgets = layer_budgets(settings, len(routers))
    for layer, (router, table, det) in enumerate(zip(routers, tables, determinism)):
        tiers, audits = outcomes.layers[layer].tiers, outcomes.layers[layer].audit_results
        counts = np.bincount(tiers.astype(np.int64), minlength=len(TIER_LABELS))
        best, blocks, sizes = budget_ledger(everything, window, layer)
        lookups = len(outcomes) if settings.cache_scope == "all" else int((tiers != Tier.FAST).sum())
        reports.append(LayerReport(
            layer=layer, router_id=router.router_id, receptive_field=router.spec.window, table_size=table.size,
            tiers={label: int(counts[t]) for t, label in enumerate(TIER_LABELS)},
            learned_fraction=int(counts[Tier.LEARNED]) / n,
            learned_fraction_full_windows=full_window_share(blocks, sizes, window),
            max_window_learned_fraction=best / window,
            cache_hit_rate=int(counts[Tier.CACHE]) / lookups if lookups else 0.0,
            learned_us_per_token=0.0, determinism=det, budget=budgets[layer],
            served=served_by_key(tier_key_counts(tiers, outcomes.layers[layer].key_kinds)),
            pair_entries=len(table.pair_entries), table_bytes=table.nbytes,
            audits=audit_summary(int((audits >= 0).sum()), int((audits == AGREED).sum()))))
    return reports


async def _publish(run: Settings, prepared: ModelPrepared) -> int:
    from pipeline.table_sets import publish_tables_and_stats

    version, _ = await publish_tables_and_stats(run, prepared.tables, prepared.stats)
    return version


def _tables_used(run: Settings, start: list[RoutingTable], versions: list[int]) -> list[RoutingTable]:
    """The newest table set the routers used (read back from Redis when the stats worker made it)."""
    if versions and max(versions) != start[0].version:
        return asyncio.run(load_published(run, [t.router_id for t in start], max(versions))) or start
    return start


def _starting_tables(run: Settings, prepared: ModelPrepared, cold: bool) -> list[RoutingTable]:
    """Publish the offline tables as one set (their version set), or empty tables when ``cold``."""
    if cold:
        cfg = prepared.checkpoint.config
        return [RoutingTable.empty(cfg.vocab_size, cfg.n_experts, cfg.top_k, t.router_id) for t in prepared.tables]
    version = asyncio.run(_publish(run, prepared))
    return [t.with_version(version) for t in prepared.tables]


def _completeness(prepared: ModelPrepared, routers: Sequence[ModelRouter], got: Collected, outcomes: Outcomes,
                  opts: KafkaReplayOptions, exits: list[str], versions: list[int]) -> dict[str, object]:
    events = EventBatch.from_chunks(prepared.online)
    have = align(outcomes, events.streams, events.seqs) >= 0
    expected = layer_context_hashes(prepared.online, [r.spec.window for r in routers])
    section = completeness_section(got, have, context_mismatches(expected, got.all_parts), opts.run_id)
    section.update(worker_exits=exits, complete=bool(section["complete"]) and not exits, workers=opts.workers,
                   message_size=opts.message_size, table_versions_seen=versions)
    return section


def run_kafka_model_replay(source: CorpusSource, settings: Settings, opts: KafkaReplayOptions,
                           progress: bool = False) -> tuple[ModelReplayReport, Collected]:
    """Run the model replay through Kafka, Faust workers and Redis (module docstring). Raises
    :class:`ReplayError` for ``attach`` and when no outcome came back at all."""
    if opts.attach:
        raise ReplayError("--attach replays synthetic routers only; a model replay via kafka starts its own workers")
    wall_start = time.perf_counter()
    prepared = prepare(source, settings)
    cfg = prepared.checkpoint.config
    routers = model_routers(prepared.checkpoint, settings.device)
    run = scoped_settings(settings, opts.run_id, cfg.vocab_size)
    asyncio.run(ensure_topics(KafkaAccess.from_settings(run), pipeline_topics(run), run.replication_factor))
    start_tables = _starting_tables(run, prepared, opts.cold)
    # every worker in the group before the first event: each then routes its share of partitions
    got, start, exits = route_through_pipeline(prepared.online, run, opts, progress, opts.idle_timeout_s)
    outcomes = got.outcomes()
    if not len(outcomes):
        raise ReplayError(f"no routing outcome came back from the {opts.workers} worker(s) "
                          f"(logs in {opts.log_dir / opts.run_id})")
    versions = sorted(set(outcomes.layers[0].table_versions.tolist()))  # one set version for every layer
    completeness = _completeness(prepared, routers, got, outcomes, opts, exits, versions)
    tables = _tables_used(run, start_tables, versions)
    routed = routed_from_outcomes(outcomes, list(dict.fromkeys(c.stream for c in prepared.online)))
    variants = reference_routings(routed, prepared.tables, cfg.n_experts, cfg.top_k, settings.seed)
    total = sum(len(s) for s in routed.streams)
    with tqdm(total=total, unit="tok", unit_scale=True, file=sys.stderr, disable=not progress, desc="quality") as bar:
        quality = compare_routings(prepared.checkpoint.model, routed.streams, variants, bar.update)
    determinism = token_determinism(prepared.checkpoint.model, routed.streams, prepared.stats)
    everything = Outcomes.concat(got.all_parts)
    report = ModelReplayReport(
        source=source.name,
        checkpoint={"path": prepared.checkpoint.path, "sha256": prepared.checkpoint.digest, **cfg.to_dict()},
        tokens=total, train_tokens=prepared.train_tokens, budget=settings.budget,
        budget_window=settings.budget_window, governor=settings.governor,
        layers=layer_reports(outcomes, everything, routers, tables, determinism, settings), quality=quality,
        quality_bound_pct=settings.quality_bound_pct, routing_s=(got.last_at or start) - (got.first_at or start),
        wall_s=time.perf_counter() - wall_start, timeline=layers_timeline(everything, settings.batch_size),
        mode="kafka", completeness=completeness)
    return report, got
