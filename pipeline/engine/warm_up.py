"""Load (or, the first time on a machine, compile) the engine's kernels before traffic arrives.

Numba compiles a kernel on its first call for each set of argument types and caches the
machine code on disk (next to the sources, or in the user's cache directory when that is not
writable). Compiling all of them takes several seconds; loading them from the cache a fraction
of one. :func:`warm_up` calls every kernel once on a two-token batch with the exact argument
types the engine uses, so a router worker pays that before it joins its consumer group, and a
Docker image can ship the compiled code (``deploy/Dockerfile`` runs it at build time).
"""
from __future__ import annotations

import numpy as np

from . import batch_kernels, budget_kernels, kernels
from .array_cache import ArrayDecisionCache, hits_of
from .budget import BudgetGovernor, BudgetLedger, BudgetPolicy
from .cache import CachePolicy, DecisionArrays
from .context import build_contexts
from .engine import audit_threshold, key_salt
from .events import EventBatch, KeyKind, Tier
from .route_types import DecisionRows
from .table import RoutingTable

_warm = False


def warm_up() -> None:
    """Every kernel once (idempotent within a process)."""
    global _warm
    if _warm:
        return
    table = RoutingTable.empty(vocab_size=8, num_experts=4, top_k=2, router_id="warm-up")
    tab, wide = table.kernel_arrays(), np.zeros((2, 5), np.int64)
    contexts = wide[:, 1:]
    tokens = np.zeros(2, np.int64)
    build_contexts(EventBatch.from_events([("warm-up", 1, 0), ("warm-up", 1, 0)]), {}, 4)  # one accepted, one not
    kernels.resolve(tokens - 1, tokens, 8, 0, tab)  # the table's own lookups (RoutingTable.resolve/routes)
    kernels.entry_routes(tokens, tokens, tokens, tokens - 1, tab, *DecisionRows.allocate(2, 2).columns()[:4])
    for ctx in (contexts, np.ascontiguousarray(contexts)):  # a window's columns of wider contexts (the
        hashes, keys = kernels.context_keys(ctx, key_salt(0))  # layered engine) and whole rows
        unique, inverse = kernels.first_occurrences(keys, np.ones(2, bool))
        hashes, keys, unique, inverse = kernels.keyed(ctx, key_salt(0))
        routed = _finish(ctx, tab, keys, unique, inverse)
    kernels.mix_all(keys)
    cache = ArrayDecisionCache(CachePolicy(max_entries=1), 2, clock=lambda: 0.0)
    cache.store(keys, DecisionArrays(*routed))  # two keys: the pool grows (re-index), then one is evicted
    cache.lookup(keys)
    _fused(np.ascontiguousarray(contexts), tab, cache)
    _warm = True


def _fused(contexts: np.ndarray, tab: tuple[np.ndarray, ...], cache: ArrayDecisionCache) -> None:
    """VAREngine._route_fused's two calls, with its argument types, governor on and off."""
    for enabled in (True, False):
        out = DecisionRows.allocate(2, 2)
        columns = out.columns()
        governor = BudgetGovernor(BudgetPolicy(0.5, 10, enabled=enabled)).kernel_state()
        _, keys, asked, is_audit, granted, _, miss_first, rows = batch_kernels.decide(
            contexts, key_salt(0), 0.0, cache.kernel_state(), 8, 0, tab, audit_threshold(0.5), 0, governor, columns)
        routed = (out.experts[rows], out.weights[rows], out.confidence[rows], out.entropy[rows])
        cache.reserve(len(rows))
        counts = (np.zeros(len(Tier), np.int64), np.zeros((len(Tier), len(KeyKind)), np.int64))
        batch_kernels.conclude_store(asked, is_audit, granted, miss_first, routed, columns, out.audits, keys,
                                     np.float32(0.5), counts, BudgetLedger(10).kernel_state(), 1.0,
                                     cache.kernel_state(), 1)


def _finish(contexts: np.ndarray, tab: tuple[np.ndarray, ...], keys: np.ndarray, unique: np.ndarray,
            inverse: np.ndarray) -> tuple[np.ndarray, ...]:
    """The passes of VAREngine.finish, with its argument types; returns the routed rows used."""
    _, hits = hits_of([], 2)
    out = DecisionRows.allocate(2, 2)
    columns = out.columns()
    asked, is_audit, miss_first, kind, pair_row = kernels.assign(
        contexts, 8, 0, tab, inverse, np.full(len(unique), -1, np.int64), hits, keys, audit_threshold(0.5), 0, columns)
    granted = budget_kernels.admit(np.arange(len(asked), dtype=np.int64), np.zeros(1, np.int64), np.zeros(2, np.int64),
                                   10, 1)[0]
    kernels.serve(asked, is_audit, granted, miss_first, kind, pair_row, contexts, tab, columns)
    routed = (out.experts.copy(), out.weights.copy(), out.confidence.copy(), out.entropy.copy())
    counts = (np.zeros(len(Tier), np.int64), np.zeros((len(Tier), len(KeyKind)), np.int64))
    ledger = BudgetLedger(10).kernel_state()
    for rows in (routed, tuple(a[:0] for a in routed)):  # a router call, and none
        kernels.conclude(asked, is_audit, granted, miss_first, rows, columns, out.audits, keys, np.float32(0.5),
                         counts, ledger)
    calls = kernels.tally(out.tiers, out.keys, out.audits, *counts)[3]  # the always-learned path's count
    budget_kernels.record(calls, *ledger)
    return routed
