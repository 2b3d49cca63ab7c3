"""A batch's bookkeeping in two compiled calls, one on each side of its router call (numba).

:meth:`~pipeline.engine.engine.VAREngine.route_batch` with the engine's own array cache
(``cache_scope="all"``) uses these instead of calling the passes one by one: on a cheap router
VAR's cost is its Python between the passes and the code it runs between two router calls, and
one call each side halves both (the seed-size bench: ~60 µs of ~250 per 1,024-token batch).
They compose the very kernels the staged path calls -- :func:`~.hash_kernels.keyed`,
:func:`~.cache_kernels.lookup`, :func:`~.kernels.assign`, :func:`~.budget_kernels.admit`,
:func:`~.kernels.serve` before the router; :func:`~.kernels.conclude` and
:func:`~.cache_kernels.store` after it -- in the same order with the same state, so the two
paths decide the same (``tests/unit/test_engine_fused.py`` drives both with the same traffic).
The staged path remains for the byte caches, ``cache_scope="misses"``, the split pipeline path
(a routing store between the halves) and the stage profiler, which times each pass.

``cache`` is the array cache's (pool, state); ``governor`` the budget governor's (ring, state,
window, cap, enabled).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import budget_kernels, cache_kernels, hash_kernels, kernels


@njit(cache=True)
def decide(contexts, salt, now, cache, vocab, static_below, tab, audit, position, governor, out):
    """Keys, cache lookup (at time ``now``), tier assignment, the governor and the table's
    routes. Returns (context hashes, keys, asked rows, is-audit flags, granted, how many the
    governor admitted, miss_first, the router's rows), as the staged passes produce them."""
    hashes, keys, unique, inverse = hash_kernels.keyed(contexts, salt)
    slot, h_experts, h_weights, h_conf, h_ent = cache_kernels.lookup(unique, now, cache[0], cache[1])
    asked, is_audit, miss_first, kind, pair_row = kernels.assign(
        contexts, vocab, static_below, tab, inverse, slot, (h_experts, h_weights, h_conf, h_ent), keys, audit,
        position, out)
    ring, state, window, cap, enabled = governor
    if enabled and len(asked):
        granted, admitted = budget_kernels.admit(position + asked, ring, state, window, cap)
    else:
        granted, admitted = np.ones(len(asked), np.bool_), len(asked)
    rows = kernels.serve(asked, is_audit, granted, miss_first, kind, pair_row, contexts, tab, out)
    return hashes, keys, asked, is_audit, granted, admitted, miss_first, rows


@njit(cache=True)
def conclude_store(asked, is_audit, granted, miss_first, routed, out, audits, keys, min_conf, counts, ledger,
                   expires_at, cache, max_entries):
    """:func:`~.kernels.conclude`, then its cache writes stored with expiry ``expires_at`` (the
    pool must have room for them: ``ArrayDecisionCache.reserve``). Returns conclude's result."""
    writes, tallies, blocks = kernels.conclude(asked, is_audit, granted, miss_first, routed, out, audits, keys,
                                               min_conf, counts, ledger)
    if len(writes[0]):
        cache_kernels.store(writes[0], writes[1], writes[2], writes[3], writes[4], expires_at, cache[0], cache[1],
                            max_entries)
    return writes, tallies, blocks
