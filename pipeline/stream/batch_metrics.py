"""A router worker's metrics after each routed batch (see :class:`pipeline.observability.RouterMetrics`)."""
from __future__ import annotations

import logging

from pipeline.engine.events import Tier
from pipeline.observability import RouterMetrics

from .processor import BatchOutput, RouterProcessor

log = logging.getLogger("pipeline.stream.app")


def record_batch(metrics: RouterMetrics, processor: RouterProcessor, out: BatchOutput, messages: int,
                 seconds: float, offset_gaps: int, repeated: int = 0) -> None:
    """Update the worker's metrics after a routed batch (counters follow the engines' totals).

    Tier counts add up every layer's decisions; the learned share, cache hit rate and window
    maximum (learned calls + audits) are those of the layer with the highest (what the budget must
    hold for each); audits are counted per layer and table version."""
    layers, store = processor.engine.layers, processor.store
    metrics.batch_size.observe(messages)
    metrics.latency.observe(seconds)
    if out.result is not None:
        for layer in out.result.layers:
            for tier, count in layer.decisions.tier_counts().items():
                metrics.tier(tier).inc(count)
        metrics.observe_audits(layer.decisions for layer in out.result.layers)
    shares = [e.counters.tiers[Tier.LEARNED] / e.counters.decisions for e in layers if e.counters.decisions]
    if shares:
        metrics.learned_share.set(max(shares))
    hits = [e.counters.cache_hits / e.counters.cache_lookups for e in layers if e.counters.cache_lookups]
    if hits:
        metrics.cache_hit_rate.set(min(hits))
    metrics.window_max.set(max(e.ledger.max_window_fraction for e in layers))
    metrics.table_version.set(processor.table_version)
    metrics.deadletters.inc(len(out.deadletters))
    metrics.redelivered.inc(out.redelivered)
    metrics.observe_totals(getattr(store, "round_trips", 0), getattr(store, "degraded", 0), offset_gaps,
                           repeated)
    if processor.engine.profile is not None:
        metrics.observe_stages(processor.engine.profile.seconds)
    log.debug("batch of %d messages: %d routed, %d dead letters, %d redelivered", messages, out.routed,
              len(out.deadletters), out.redelivered,
              extra={"batch_messages": messages, "table_version": processor.table_version})
