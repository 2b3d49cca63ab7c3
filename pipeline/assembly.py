"""The composition root: routers, engines and policies built from :class:`Settings`.

Every entry point -- the embedded replay, the Faust router workers, the stats worker, the
benchmarks -- builds its routing stack here, so one setting (``router``) selects the same
learned routers everywhere:

* ``model`` / ``model:PATH``: the gate of every MoE layer of the bundled (or given) trained
  language model (:mod:`pipeline.model`), one learned router per layer, each with its own
  receptive field as its context window;
* ``context`` / ``seed``: one synthetic router (:mod:`pipeline.engine.routers`), a one-layer
  engine with the configured ``window``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

from pipeline.engine.budget import BudgetPolicy, split_budget
from pipeline.engine.cache import CachePolicy
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.layered import LayeredEngine
from pipeline.engine.routers import Router, RouterSpec, build_router
from pipeline.engine.table import RoutingTable, Thresholds
from pipeline.engine.warm_up import warm_up
from pipeline.settings import Settings, SettingsError

if TYPE_CHECKING:
    from pipeline.model.checkpoint import Checkpoint


def is_model(settings: Settings) -> bool:
    return settings.router == "model" or settings.router.startswith("model:")


def checkpoint_path(settings: Settings) -> str | None:
    """The checkpoint named by ``router`` (``None``: the bundled one); only for model routers."""
    return settings.router[len("model:"):] if settings.router.startswith("model:") else None


@lru_cache(maxsize=4)
def _load(path: str | None, device: str) -> Checkpoint:
    from pipeline.model.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise SettingsError(f"invalid VAR_ROUTER / --router: {exc}") from None


def load_model(settings: Settings) -> Checkpoint:
    """The :class:`~pipeline.model.checkpoint.Checkpoint` of a model router (loaded once)."""
    return _load(checkpoint_path(settings), settings.device)


def router_spec(settings: Settings, vocab_size: int) -> RouterSpec:
    """The synthetic router's spec (``context`` / ``seed``)."""
    return RouterSpec(kind=settings.router, vocab_size=vocab_size, hidden=settings.hidden,
                      num_experts=settings.experts, top_k=settings.top_k, window=settings.context_window,
                      seed=settings.seed)


def model_vocab(settings: Settings) -> int | None:
    """The vocabulary a model router fixes (``None`` for synthetic routers)."""
    return load_model(settings).config.vocab_size if is_model(settings) else None


def build_routers(settings: Settings, vocab_size: int) -> list[Router]:
    """One learned router per MoE layer, in layer order."""
    if is_model(settings):
        from pipeline.model.router import model_routers

        return list(model_routers(load_model(settings), settings.device))
    return [build_router(router_spec(settings, vocab_size), settings.device)]


def engine_config(settings: Settings, layer: int = 0, context_window: int | None = None,
                  budget: float | None = None) -> EngineConfig:
    return EngineConfig(
        context_window=settings.context_window if context_window is None else context_window,
        layer=layer,
        cache=CachePolicy(settings.cache_ttl_s, settings.cache_size, settings.cache_min_confidence),
        budget=BudgetPolicy(settings.budget if budget is None else budget, settings.budget_window, settings.governor),
        cache_scope=settings.cache_scope,
        audit_rate=settings.audit_rate,
    )


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds(settings.min_frequency, settings.max_entropy, settings.static_below, settings.pair_min_count,
                      settings.pair_max_entropy, settings.pair_cap)


def empty_tables(routers: Sequence[Router]) -> list[RoutingTable]:
    return [RoutingTable.empty(r.spec.vocab_size, r.spec.num_experts, r.spec.top_k, r.router_id) for r in routers]


def layer_budgets(settings: Settings, layers: int) -> list[float]:
    """Each MoE layer's learned budget (``--budget-split``): ``even`` -- ``settings.budget`` for
    every layer; ``error`` -- ``layers x budget`` split by each layer's fast-path error on the
    model's training text (:func:`~pipeline.engine.adaptive.fast_path_error`), at most
    ``budget_layer_max`` each. Deterministic per checkpoint and settings, so every worker and a
    verifier derive the same caps."""
    if settings.budget_split == "even" or layers == 1 or not is_model(settings):
        return [settings.budget] * layers
    from pipeline.engine.adaptive import fast_path_error
    from pipeline.model.corpus_stats import training_stats

    base = thresholds(settings)
    errors = [fast_path_error(stats, base) for stats in training_stats(load_model(settings))]
    return split_budget(settings.budget, errors, settings.budget_layer_max)


def build_engine(settings: Settings, routers: Sequence[Router],
                 tables: Sequence[RoutingTable] | None = None) -> LayeredEngine:
    """One :class:`VAREngine` per router (layer), each with its router's receptive field and
    its layer's budget (:func:`layer_budgets`). The compiled kernels are loaded first
    (:func:`~pipeline.engine.warm_up.warm_up`), so the first batch does not wait for them."""
    warm_up()
    tables = list(tables) if tables is not None else empty_tables(routers)
    budgets = layer_budgets(settings, len(routers))
    return LayeredEngine([VAREngine(r, t, engine_config(settings, layer, r.spec.window, budgets[layer]))
                          for layer, (r, t) in enumerate(zip(routers, tables))])
