"""VAR's core call: route a micro-batch through cache -> fast path -> learned router.

The engine performs no I/O. Routing a batch is split in two steps so that any store -- the
in-memory dict here, Redis in the pipeline -- is called once per batch, between them:

1. :meth:`VAREngine.prepare` computes each event's context from its stream's window, the
   context hash and the cache key, and the *unique* keys to look up.
2. The caller fetches those keys from its cache store (one batched call).
3. :meth:`VAREngine.complete` assigns tiers in decision order: cache hit (exact), fast path
   (the table entry the event resolves to -- its (previous token, token) pair, else its token --
   if that entry is eligible), otherwise the learned router -- if the budget governor admits it,
   else the budget fallback (the same entry's route; the traffic-wide prior only for a token
   without any entry, tier ``prior``). All admitted misses are routed in ONE batched router call; the same key
   met twice in a batch is routed once and the repeat reuses it (counted as a cache hit).
   The live audits (:mod:`.audit`: a hash-selected ``audit_rate`` sample of the fast-path
   decisions) join that same router call, admitted by the same governor in decision order, so
   learned calls + audits never exceed the cap in any budget window; an audit keeps the fast
   path's route and records only whether the router agreed (``DecisionBatch.audits``).
   It returns the decisions and the confident learned decisions to write back (one batched
   call again).

:meth:`VAREngine.route_batch` chains the three steps with a synchronous store.

The per-event work of both steps runs in a few compiled passes (:mod:`.kernels`; with the
engine's own array cache, two fused calls, :mod:`.batch_kernels`); this module orders them and
keeps the state (governor, counters, ledger) between batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, MutableMapping, Sequence

import numpy as np

from .budget import BudgetGovernor, BudgetPolicy, BudgetLedger
from . import batch_kernels, kernels
from .array_cache import ArrayDecisionCache, CacheHits, columns_of, hits_of
from .cache import CachePolicy, DecisionArrays, DecisionCache
from .context import ContextResult, ContextWindow, build_contexts
from .events import DecisionBatch, EventBatch, Tier
from .route_types import DecisionRows, EngineCounters
from .route_types import RoutePlan as RoutePlan, RouteResult as RouteResult  # re-exported: the engine's API
from .routers import Router
from .pairs import previous_tokens
from .profile import StageClock, lap
from .table import Lookup, RoutingTable


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine policy: context window, MoE layer, cache policy, learned-router budget and the share
    of fast-path decisions audited by the learned router (counted against the budget)."""

    context_window: int = 4
    layer: int = 0
    cache: CachePolicy = field(default_factory=CachePolicy)
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    cache_scope: str = "all"  # "all": every token looks the cache up first; "misses": only tokens the
    #                           fast path does not serve (their cache entries can only date from an
    #                           older table) -- far fewer lookups against a shared store
    audit_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.cache_scope not in ("all", "misses"):
            raise ValueError(f"cache scope must be 'all' or 'misses', got {self.cache_scope!r}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError("audit rate must be within [0, 1]")


class VAREngine:
    """Routes batches for one router and one MoE layer; holds the governor and the table."""

    def __init__(
        self,
        router: Router,
        table: RoutingTable,
        config: EngineConfig = EngineConfig(),
        cache: DecisionCache | ArrayDecisionCache | None = None,
    ) -> None:
        self.router = router
        self.config = config
        self.cache = cache if cache is not None else ArrayDecisionCache(config.cache, router.spec.top_k)
        self.columns = columns_of(self.cache, router.spec.top_k)  # the cache as route_batch uses it
        self.governor = BudgetGovernor(config.budget)
        self.ledger = BudgetLedger(config.budget.window)
        self.counters = EngineCounters()
        self.profile: StageClock | None = None  # attach one to time the stages (see .profile)
        self._salt = key_salt(config.layer)
        self._audit = audit_threshold(config.audit_rate)
        self._min_confidence = np.float32(config.cache.min_confidence)  # compared in float32, as numpy does
        k = router.spec.top_k
        self._no_routes = (np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), np.zeros(0, np.float32),
                           np.zeros(0, np.float32))
        self.set_table(table)

    @property
    def context_window(self) -> int:
        return self.config.context_window

    def set_table(self, table: RoutingTable) -> None:
        """Swap the fast-path table (e.g. when a new version is published)."""
        spec = self.router.spec
        if table.version > 0 and table.router_id != self.router.router_id:
            raise ValueError(
                f"fast-path table v{table.version} was built for router {table.router_id}, "
                f"this engine runs {self.router.router_id}"
            )
        if table.vocab_size != spec.vocab_size or table.top_k != spec.top_k:
            raise ValueError(
                f"fast-path table has vocab {table.vocab_size}/top-k {table.top_k}, "
                f"router has vocab {spec.vocab_size}/top-k {spec.top_k}"
            )
        self.table = table

    def prepare(self, batch: EventBatch, windows: Mapping[str, ContextWindow]) -> RoutePlan:
        """Contexts, context hashes and cache keys for the batch (pure; no store access)."""
        ctx = build_contexts(batch, windows, self.context_window)
        lap(self.profile, "contexts")
        return self.plan(batch, ctx)

    def plan(self, batch: EventBatch, ctx: ContextResult) -> RoutePlan:
        """:meth:`prepare` from contexts already built, possibly wider than this engine's window
        (a multi-layer engine builds them once for its widest layer; see :mod:`.layered`)."""
        events = batch.select(ctx.accepted) if ctx.rejections else batch
        contexts = ctx.contexts[:, ctx.contexts.shape[1] - self.context_window:]
        if self.config.cache_scope == "all":
            hashes, keys, unique, inverse = kernels.keyed(contexts, self._salt)
            lap(self.profile, "hashing")
        else:
            hashes, keys = kernels.context_keys(contexts, self._salt)
            lap(self.profile, "hashing")
            unique, inverse = kernels.first_occurrences(keys, ~self.resolve(contexts, events.tokens).eligible)
        lap(self.profile, "cache lookup")
        return RoutePlan(events, ctx.accepted, contexts, hashes, keys, unique, inverse, ctx.windows, ctx.rejections)

    def complete(self, plan: RoutePlan, cached: Sequence[bytes | None]) -> RouteResult:
        """Assign tiers and produce decisions, given the byte lookups of ``plan.unique_keys``
        (a routing store's answer; ``None`` for a miss)."""
        hits = hits_of(cached, self.router.spec.top_k)
        lap(self.profile, "cache lookup")
        return self.finish(plan, hits)

    def finish(self, plan: RoutePlan, cache_hits: CacheHits) -> RouteResult:
        """:meth:`complete` given the lookups of ``plan.unique`` as columns.

        Compiled passes (:mod:`.kernels`) around the governor and ONE router call: entries,
        hits and fast-path rows first (listing the rows that ask the governor), then the table's
        routes (fast path, and the denied misses' fallbacks), then the router's rows."""
        position = self.counters.decisions
        out = DecisionRows.allocate(len(plan.events), self.router.spec.top_k)
        hit_slot, hits = cache_hits
        tab, columns = self.table.kernel_arrays(), out.columns()
        asked, is_audit, miss_first, kind, pair_row = kernels.assign(
            plan.contexts, self.table.vocab_size, self.table.thresholds.static_below, tab, plan.inverse, hit_slot,
            hits, plan.keys, self._audit, position, columns)
        lap(self.profile, "fast path")
        granted = self.governor.admit(position + asked)
        lap(self.profile, "governor")
        rows = kernels.serve(asked, is_audit, granted, miss_first, kind, pair_row, plan.contexts, tab, columns)
        lap(self.profile, "fast path")
        first_block, c = self.ledger.first_block, self.counters
        writes, (hits, audited, agreed), blocks = kernels.conclude(
            asked, is_audit, granted, miss_first, self._route(plan.contexts, rows), columns, out.audits, plan.keys,
            self._min_confidence, (c.tiers, c.tier_keys), self.ledger.kernel_state())
        self.ledger.add_blocks(first_block, blocks)
        lookups = len(plan.inverse) if self.config.cache_scope == "all" else int((plan.inverse >= 0).sum())
        self._add_counts(len(plan.events), len(plan.rejections), lookups, hits, audited, agreed)
        lap(self.profile, "decision arrays")
        decisions, write_keys, write_rows = self._decided(out, plan.ctx_hash, writes)
        lap(self.profile, "cache write")  # fill_routed selected the writes: this only packs them
        return RouteResult(plan.events, plan.accepted, position, plan.contexts, decisions, plan.windows,
                           plan.rejections, write_keys, write_rows)

    def _decided(self, out: DecisionRows, ctx_hash: np.ndarray, writes: tuple[np.ndarray, ...]
                 ) -> tuple[DecisionBatch, np.ndarray, DecisionArrays | None]:
        """A batch's filled rows as its :class:`DecisionBatch`, and ``conclude``'s cache writes
        as (keys, columns; ``None`` when there are none)."""
        decisions = DecisionBatch(out.experts, out.weights, out.confidence, out.entropy, out.tiers, ctx_hash,
                                  self.table.version, self.router.router_id, self.config.layer, out.keys, out.audits)
        if len(writes[0]) == 0:
            return decisions, _NO_KEYS, None
        return decisions, writes[0], DecisionArrays(*writes[1:])

    def complete_learned(self, plan: RoutePlan) -> RouteResult:
        """The always-learned baseline: every event through the learned router (no cache, no
        fast path, no governor), with the same provenance as :meth:`complete`."""
        position = self.counters.decisions
        res = self.router.route(plan.contexts)
        self.counters.router_calls += 1
        lap(self.profile, "router")
        tiers = np.full(len(plan.events), Tier.LEARNED, np.int8)
        decisions = DecisionBatch(res.experts, res.weights, res.confidence, res.entropy, tiers, plan.ctx_hash,
                                  self.table.version, self.router.router_id, self.config.layer)
        self._count(decisions, len(plan.rejections), 0)
        return RouteResult(plan.events, plan.accepted, position, plan.contexts, decisions, plan.windows,
                           plan.rejections, _NO_KEYS, None)

    def resolve(self, contexts: np.ndarray, tokens: np.ndarray) -> Lookup:
        """The table entries of events whose context rows (ending with the token) are ``contexts``."""
        return self.table.resolve(previous_tokens(contexts), tokens)

    def route_batch(self, batch: EventBatch, windows: MutableMapping[str, ContextWindow]) -> RouteResult:
        """Route with this engine's (synchronous) cache; updates ``windows`` in place.

        With its own array cache and ``cache_scope="all"`` the passes run as two compiled calls
        (:mod:`.batch_kernels`); otherwise -- and with a stage profiler attached, which times
        every pass -- one by one, as :meth:`prepare` / :meth:`finish`. Both decide the same."""
        if self.profile is None and isinstance(self.cache, ArrayDecisionCache) and self.config.cache_scope == "all":
            return self._route_fused(batch, windows, self.cache)
        plan = self.prepare(batch, windows)
        hits = self.columns.lookup(plan.unique)
        lap(self.profile, "cache lookup")
        result = self.finish(plan, hits)
        if result.writes is not None:
            self.columns.store(result.write_keys, result.writes)
        windows.update(result.windows)
        lap(self.profile, "cache write")
        return result

    def _route_fused(self, batch: EventBatch, windows: MutableMapping[str, ContextWindow],
                     cache: ArrayDecisionCache) -> RouteResult:
        """:meth:`route_batch` with :mod:`.batch_kernels`: contexts, one call before the router
        and one after it (the cache's writes included)."""
        ctx = build_contexts(batch, windows, self.context_window)
        events, contexts = (batch.select(ctx.accepted) if ctx.rejections else batch), ctx.contexts
        position, c, ledger = self.counters.decisions, self.counters, self.ledger
        out = DecisionRows.allocate(len(events), self.router.spec.top_k)
        columns = out.columns()
        hashes, keys, asked, is_audit, granted, admitted, miss_first, rows = batch_kernels.decide(
            contexts, self._salt, float(cache.clock()), cache.kernel_state(), self.table.vocab_size,
            self.table.thresholds.static_below, self.table.kernel_arrays(), self._audit, position,
            self.governor.kernel_state(), columns)
        self.governor.count(len(asked), admitted)
        routed = self._route(contexts, rows)
        cache.reserve(len(rows))  # the writes are some of the router's rows
        first_block = ledger.first_block
        writes, (hits, audited, agreed), blocks = batch_kernels.conclude_store(
            asked, is_audit, granted, miss_first, routed, columns, out.audits, keys, self._min_confidence,
            (c.tiers, c.tier_keys), ledger.kernel_state(), float(cache.clock()) + cache.policy.ttl_s,
            cache.kernel_state(), cache.policy.max_entries)
        ledger.add_blocks(first_block, blocks)
        self._add_counts(len(events), len(ctx.rejections), len(keys), hits, audited, agreed)
        decisions, write_keys, write_rows = self._decided(out, hashes, writes)
        windows.update(ctx.windows)
        return RouteResult(events, ctx.accepted, position, contexts, decisions, ctx.windows, ctx.rejections,
                           write_keys, write_rows)

    def _route(self, contexts: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """ONE router call for ``rows`` (:func:`~.kernels.serve`'s: the granted missed keys' first
        rows, in decision order, then the granted audits): (experts, weights, confidence,
        entropy) as the kernels take them; empty columns, and no call, when there are none.

        Each distinct missed key is decided once, at its first row: its repeats in the batch
        reuse the router's result (tier cache). An audit keeps the fast path's route and
        records only whether the router agreed.
        """
        if len(rows) == 0:
            return self._no_routes
        both = self.router.route(contexts[rows])
        self.counters.router_calls += 1
        lap(self.profile, "router")
        return (np.ascontiguousarray(both.experts, np.int64), np.ascontiguousarray(both.weights, np.float32),
                np.ascontiguousarray(both.confidence, np.float32), np.ascontiguousarray(both.entropy, np.float32))

    def _count(self, decisions: DecisionBatch, rejected: int, lookups: int) -> None:
        """The counters and the budget ledger for decisions made outside :meth:`finish`."""
        c = self.counters
        hits, audited, agreed, calls = kernels.tally(decisions.tiers, decisions.key_kinds(),
                                                     decisions.audit_results(), c.tiers, c.tier_keys)
        self._add_counts(len(decisions.tiers), rejected, lookups, hits, audited, agreed)
        self.ledger.record(calls)

    def _add_counts(self, decided: int, rejected: int, lookups: int, hits: int, audited: int, agreed: int) -> None:
        c = self.counters
        c.decisions += decided
        c.rejected += rejected
        c.cache_lookups += lookups
        c.cache_hits += int(hits)
        c.audits += int(audited)
        c.audit_agreed += int(agreed)


_NO_KEYS = np.zeros(0, np.uint64)


def key_salt(layer: int) -> np.uint64:
    """The cache key's layer salt (:func:`~pipeline.engine.hashing.cache_key`)."""
    return np.uint64(((layer + 1) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF)


def audit_threshold(rate: float) -> tuple[int, np.uint64]:
    """(mode, threshold) of :func:`~pipeline.engine.audit.audit_selected` for the kernels: mode 0
    audits nothing, 1 everything, 2 the decisions whose audit hash is below the threshold."""
    if rate <= 0.0:
        return 0, np.uint64(0)
    if rate >= 1.0:
        return 1, np.uint64(0)
    return 2, np.uint64(min(int(rate * 2.0 ** 64), 2 ** 64 - 1))
