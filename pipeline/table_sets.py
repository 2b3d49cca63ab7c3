"""The table sets of the stats worker's routers: which layers, their refreshers, their store, and
publishing offline tables (``var stats build --publish``, replays, chaos runs) with their statistics.
Below the workers: router workers, the stats worker and the replays all build their table sets here.

Every router worker and the stats worker derive the same layers from the same settings
(:func:`layer_routers`), hence the same Redis keys (:func:`routing_store`).
"""
from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from pipeline.assembly import build_routers, is_model, layer_budgets, model_vocab, router_spec, thresholds
from pipeline.engine.layered_refresher import LayeredRefresher
from pipeline.engine.refresher import Clock, RefreshPolicy, StatsRefresher
from pipeline.engine.routers import RouterSpec
from pipeline.engine.stats import TokenStats
from pipeline.engine.table import RoutingTable
from pipeline.errors import VARError
from pipeline.settings import Settings, SettingsError
from pipeline.stores.keys import RedisKeys, table_set_id
from pipeline.stores.redis_access import RedisAccess
from pipeline.stores.redis_store import RedisRoutingStore


class TableSetError(VARError, RuntimeError):
    """Settings that name no usable table set (no vocabulary, statistics or tables of other
    routers); one-line message."""


def refresh_policy(settings: Settings, budget: float | None = None) -> RefreshPolicy:
    """A model router's tables are calibrated per layer to the layer's learned budget (``budget``,
    default ``settings.budget``), as in the embedded model replay
    (:func:`pipeline.model_replay.layer_tables`); a synthetic router's follow
    ``adaptive``/``adaptive_target`` or the fixed thresholds."""
    model_target = settings.budget if budget is None else budget
    target = model_target if is_model(settings) else (settings.adaptive_target if settings.adaptive else None)
    return RefreshPolicy(settings.refresh_every, settings.refresh_interval_s, settings.stats_decay,
                         thresholds(settings), target, settings.audit_min_agreement)


def require_vocab(settings: Settings) -> int:
    """The vocabulary every worker routes: a model router's own (a different VAR_VOCAB_SIZE is an
    error), else the setting, which must then be given. Raises :class:`TableSetError`."""
    if is_model(settings):
        vocab = model_vocab(settings)
        assert vocab is not None
        if settings.vocab_size not in (None, vocab):
            raise TableSetError(f"VAR_VOCAB_SIZE={settings.vocab_size} but the model router's vocabulary is {vocab}")
        return vocab
    if settings.vocab_size is None:
        raise TableSetError("workers need the vocabulary size: set VAR_VOCAB_SIZE or --vocab-size")
    return settings.vocab_size


def layer_routers(settings: Settings) -> list[tuple[RouterSpec, str]]:
    """(spec, router id) of every layer the router workers route, in layer order: the model's
    layers, or the one synthetic router (see :func:`require_vocab`)."""
    vocab = require_vocab(settings)
    if is_model(settings):
        return [(r.spec, r.router_id) for r in build_routers(settings, vocab)]
    spec = router_spec(settings, vocab)
    return [(spec, spec.router_id)]


def build_refresher(settings: Settings, clock: Clock = time.monotonic) -> LayeredRefresher:
    """A cold refresher per layer of the routers (see :func:`layer_routers`)."""
    try:
        layers = layer_routers(settings)
    except SettingsError as exc:
        raise TableSetError(str(exc)) from None
    budgets = layer_budgets(settings, len(layers))
    return LayeredRefresher([StatsRefresher(spec.vocab_size, spec.num_experts, spec.top_k, router_id,
                                            refresh_policy(settings, budget), clock)
                             for (spec, router_id), budget in zip(layers, budgets)])


def routing_store(settings: Settings, router_ids: list[str], client: aioredis.Redis | None = None,
                  timeout_s: float | None = None) -> RedisRoutingStore:
    """The Redis store of these layers' table set (the router workers' keys)."""
    extra: dict[str, Any] = {"timeout_s": timeout_s} if timeout_s is not None else {}
    return RedisRoutingStore(RedisAccess.from_settings(settings), RedisKeys(settings.namespace, table_set_id(router_ids)),
                             settings.cache_ttl_s, len(router_ids), grace_s=settings.table_grace_s, client=client,
                             archive_ttl_s=settings.table_archive_ttl_s, **extra)


def seed_statistics(refresher: LayeredRefresher, stats: list[TokenStats], version: int = 0) -> None:
    """Start every layer's statistics from ``stats`` (copies), e.g. a model's training text."""
    if len(stats) != len(refresher.layers):
        raise TableSetError(f"got statistics of {len(stats)} layers for {len(refresher.layers)}")
    for layer, layer_stats in zip(refresher.layers, stats):
        layer.stats = layer_stats.copy()
        layer.counters.last_version = max(layer.counters.last_version, version)


def model_prior(settings: Settings) -> list[TokenStats] | None:
    """A model router's cold-start statistics: the exact routing of its training text (shipped
    with the checkpoint, :mod:`pipeline.model.corpus_stats`); None for a synthetic router."""
    if not is_model(settings):
        return None
    from pipeline.assembly import load_model
    from pipeline.model.corpus_stats import training_stats

    return training_stats(load_model(settings))


async def publish_table_and_stats(settings: Settings, table: RoutingTable, stats: TokenStats | None) -> tuple[int, bool]:
    """:func:`publish_tables_and_stats` of a one-layer engine (a synthetic router)."""
    return await publish_tables_and_stats(settings, [table], None if stats is None else [stats])


async def publish_tables_and_stats(settings: Settings, tables: list[RoutingTable],
                                   stats: list[TokenStats] | None) -> tuple[int, bool]:
    """Publish (offline) tables, one per layer, as one table set and, given their statistics,
    make them the stats worker's starting point -- only if the worker has no snapshot yet.
    Returns (version, whether stats were seeded).

    Without seeded statistics a stats worker started next to an offline table would have no
    evidence for the tokens the fast path serves (they produce no learned outcomes) and its first
    table would drop them all.
    """
    store = routing_store(settings, [t.router_id for t in tables], timeout_s=5.0)
    try:
        version = await store.publish_tables(tables)
        if stats is None:
            return version, False
        refresher = build_refresher(settings)
        if refresher.router_ids != [t.router_id for t in tables] or len(stats) != len(tables):
            raise TableSetError(f"tables of routers {[t.router_id for t in tables]} do not match the "
                                   f"settings' routers {refresher.router_ids}")
        seed_statistics(refresher, stats, version)
        for layer, layer_stats in zip(refresher.layers, stats):
            c = layer.counters
            c.outcomes, c.learned = int(layer_stats.total_frequency), int(layer_stats.total_routed)
        seeded = await store.client.set(store.keys.stats_snapshot, refresher.snapshot(), nx=True)
        return version, bool(seeded)
    finally:
        await store.close()
