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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, MutableMapping, Sequence

import numpy as np

from .audit import AGREED, DISAGREED, audit_selected, router_calls, same_expert_sets
from .budget import BudgetGovernor, BudgetPolicy, BudgetLedger
from .cache import CachePolicy, DecisionCache, MemoryDecisionCache, decode_decisions, encode_decisions
from .context import ContextResult, ContextWindow, build_contexts
from .events import DecisionBatch, EventBatch, KeyKind, Tier, tier_key_counts
from .route_types import DecisionRows, EngineCounters
from .route_types import RoutePlan as RoutePlan, RouteResult as RouteResult  # re-exported: the engine's API
from .hashing import cache_key, context_hash
from .routers import Router, RouterOutput
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
        cache: DecisionCache | None = None,
    ) -> None:
        self.router = router
        self.config = config
        self.cache: DecisionCache = cache if cache is not None else MemoryDecisionCache(config.cache)
        self.governor = BudgetGovernor(config.budget)
        self.ledger = BudgetLedger(config.budget.window)
        self.counters = EngineCounters()
        self.profile: StageClock | None = None  # attach one to time the stages (see .profile)
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
        hashes = context_hash(contexts[:, :-1])
        keys = cache_key(hashes, events.tokens, self.config.layer)
        lap(self.profile, "hashing")
        inverse = np.full(len(keys), -1, dtype=np.int64)
        looked = (np.ones(len(keys), bool) if self.config.cache_scope == "all"
                  else ~self.resolve(contexts, events.tokens).eligible)
        unique, inverse[looked] = np.unique(keys[looked], return_inverse=True)
        lap(self.profile, "cache lookup")
        return RoutePlan(events, ctx.accepted, contexts, hashes, keys, unique.tolist(), inverse, ctx.windows,
                         ctx.rejections)

    def complete(self, plan: RoutePlan, cached: Sequence[bytes | None]) -> RouteResult:
        """Assign tiers and produce decisions, given the cache lookups for ``plan.unique_keys``."""
        n, k = len(plan.events), self.router.spec.top_k
        position = self.counters.decisions
        out = DecisionRows.allocate(n, k)
        lap(self.profile, "decision arrays")
        hit = self._fill_cache_hits(plan, cached, out)
        lap(self.profile, "cache lookup")
        tokens = plan.events.tokens
        lookup = self.resolve(plan.contexts, tokens)
        fast = np.flatnonzero(~hit & lookup.eligible)
        out.fill(fast, *self.table.routes(lookup, fast, tokens), Tier.FAST, lookup.kind[fast])
        lap(self.profile, "fast path")
        audit = fast[audit_selected(plan.keys[fast], position + fast, self.config.audit_rate)]
        misses = np.flatnonzero(~hit & ~lookup.eligible)
        write_keys, write_values = self._route_misses(plan, misses, audit, out, lookup)
        decisions = DecisionBatch(out.experts, out.weights, out.confidence, out.entropy, out.tiers,
                                  plan.ctx_hash, self.table.version, self.router.router_id, self.config.layer,
                                  out.keys, out.audits)
        self._count(decisions, len(plan.rejections), int((plan.inverse >= 0).sum()))
        lap(self.profile, "decision arrays")
        return RouteResult(plan.events, plan.accepted, position, plan.contexts, decisions, plan.windows,
                           plan.rejections, write_keys, write_values)

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
                           plan.rejections, [], [])

    def resolve(self, contexts: np.ndarray, tokens: np.ndarray) -> Lookup:
        """The table entries of events whose context rows (ending with the token) are ``contexts``."""
        return self.table.resolve(previous_tokens(contexts), tokens)

    def route_batch(self, batch: EventBatch, windows: MutableMapping[str, ContextWindow]) -> RouteResult:
        """Route with this engine's (synchronous) cache; updates ``windows`` in place."""
        plan = self.prepare(batch, windows)
        cached = self.cache.get_many(plan.unique_keys)
        lap(self.profile, "cache lookup")
        result = self.complete(plan, cached)
        if result.cache_keys:
            self.cache.put_many(result.cache_keys, result.cache_values)
        windows.update(result.windows)
        lap(self.profile, "cache write")
        return result

    def _fill_cache_hits(self, plan: RoutePlan, cached: Sequence[bytes | None], out: "DecisionRows") -> np.ndarray:
        """Fill rows whose key was found; returns the hit mask over events."""
        found = [u for u, value in enumerate(cached) if value is not None]
        if not found:
            return np.zeros(len(plan.events), dtype=bool)
        slot = np.full(len(cached), -1, dtype=np.int64)
        slot[found] = np.arange(len(found))
        row_slot = np.where(plan.inverse >= 0, slot[plan.inverse], -1)
        hit = row_slot >= 0
        hits = decode_decisions([value for value in cached if value is not None], self.router.spec.top_k)  # = found
        take = row_slot[hit]
        out.fill(hit, hits.experts[take], hits.weights[take], hits.confidence[take], hits.entropy[take], Tier.CACHE)
        return hit

    def _route_misses(self, plan: RoutePlan, misses: np.ndarray, audit: np.ndarray, out: "DecisionRows",
                      lookup: Lookup) -> tuple[list[int], list[bytes]]:
        """Governor in decision order, one batched router call, in-batch repeats, fallbacks, audits.

        Each distinct key among the misses is decided once, at its first occurrence: admitted
        keys are routed (tier learned) and their repeats reuse the result (tier cache); denied
        keys and their repeats take the budget fallback. The fast-path rows ``audit`` ask the
        governor at their own positions, interleaved with those first occurrences; the admitted
        ones are routed in the same call and scored (``out.audits``), their route unchanged.
        """
        uniq, first, inverse = np.unique(plan.keys[misses], return_index=True, return_inverse=True)
        by_arrival = np.argsort(first)
        first_rows = misses[first[by_arrival]]
        asked = np.concatenate((first_rows, audit))
        order = np.argsort(asked, kind="stable")  # fast and missed rows are disjoint: positions increase
        granted = np.zeros(len(asked), dtype=bool)
        granted[order] = self.governor.admit(self.counters.decisions + asked[order])
        admitted, audit_rows = granted[:len(first_rows)], audit[granted[len(first_rows):]]
        learned_rows = first_rows[admitted]
        slot = np.full(len(uniq), -1, dtype=np.int64)
        slot[by_arrival[admitted]] = np.arange(len(learned_rows))
        miss_slot = slot[inverse]
        is_first = np.zeros(len(misses), dtype=bool)
        is_first[first] = True
        lap(self.profile, "governor")
        fallback = misses[miss_slot < 0]
        if len(fallback):
            kinds = lookup.kind[fallback]
            tiers = np.where(kinds == KeyKind.PRIOR, Tier.PRIOR, Tier.BUDGET_FALLBACK)
            out.fill(fallback, *self.table.routes(lookup, fallback, plan.events.tokens), tiers, kinds)
        lap(self.profile, "fast path")
        if len(learned_rows) + len(audit_rows) == 0:
            return [], []
        both = self.router.route(plan.contexts[np.concatenate((learned_rows, audit_rows))])
        self.counters.router_calls += 1
        lap(self.profile, "router")
        m = len(learned_rows)
        agree = same_expert_sets(out.experts[audit_rows], both.experts[m:])
        out.audits[audit_rows] = np.where(agree, AGREED, DISAGREED)
        res = RouterOutput(both.experts[:m], both.weights[:m], both.confidence[:m], both.entropy[:m])
        out.fill(learned_rows, res.experts, res.weights, res.confidence, res.entropy, Tier.LEARNED)
        repeat = ~is_first & (miss_slot >= 0)
        if repeat.any():
            src = miss_slot[repeat]
            out.fill(misses[repeat], res.experts[src], res.weights[src], res.confidence[src], res.entropy[src],
                     Tier.CACHE)
        lap(self.profile, "decision arrays")
        writes = self._cache_writes(plan.keys[learned_rows], res)
        lap(self.profile, "cache write")
        return writes

    def _cache_writes(self, keys: np.ndarray, res: RouterOutput) -> tuple[list[int], list[bytes]]:
        keep = res.confidence >= self.config.cache.min_confidence
        if not keep.any():
            return [], []
        return keys[keep].tolist(), encode_decisions(res.experts[keep], res.weights[keep], res.confidence[keep],
                                                     res.entropy[keep])

    def _count(self, decisions: DecisionBatch, rejected: int, lookups: int) -> None:
        c = self.counters
        tiers = decisions.tiers
        c.tiers += np.bincount(tiers.astype(np.int64), minlength=len(Tier))
        c.tier_keys += tier_key_counts(tiers, decisions.key_kinds())
        c.cache_lookups += lookups
        c.cache_hits += int((tiers == Tier.CACHE).sum())
        c.decisions += len(tiers)
        c.rejected += rejected
        audits = decisions.audit_results()
        c.audits += int((audits >= 0).sum())
        c.audit_agreed += int((audits == AGREED).sum())
        self.ledger.record(router_calls(tiers, audits))
