"""The engine's per-batch bookkeeping as compiled loops (numba): a batch costs a few calls
around its one router call, not dozens of numpy passes.

They are the engine's implementation, not an alternative to it: :mod:`.engine` defines the
order of the tiers and :mod:`.hashing`, :mod:`.table`, :mod:`.audit` and :mod:`.budget` the
values, and ``tests/unit/test_kernels.py`` checks the kernels against those definitions (the
engine's tests check the passes below end to end). Each is compiled once per process and cached
on disk (``cache=True``). Hashing lives in :mod:`.hash_kernels`, table lookups in
:mod:`.table_kernels` (re-exported here).

A batch's passes: :func:`~.hash_kernels.keyed` (keys, dedupe), then after the cache lookup
:func:`assign` (resolve each event's table entry, fill cache hits, list the learned-router
requests), the governor, :func:`serve` (the table's routes, the rows for the router), the router,
:func:`conclude` (:func:`fill_routed`: its rows and the cache writes; :func:`tally`; the
budget ledger's record).

Conventions: rows are events in arrival order; ``contexts`` [n, W] end with the event's token;
``tab`` is a table's arrays (:data:`TABLE_FIELDS`); output arrays ``out`` = (``experts`` [n, k]
int64, ``weights`` [n, k] float32, ``conf``/``ent`` [n] float32, ``tiers``/``kinds`` [n] int8)
are filled in place. Token ids are checked against the vocabulary (a compiled loop has no bounds
checks of its own).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .budget_kernels import record
from .hash_kernels import context_keys, first_occurrences, find_or_add, keyed, mix, mix_all, slot_table
from .table_kernels import TABLE_FIELDS, entry_routes, pair_index, resolve

__all__ = ["TABLE_FIELDS", "assign", "conclude", "context_keys", "entry_routes", "fill_routed", "first_occurrences",
           "keyed", "mix_all", "pair_index", "resolve", "serve", "tally"]

# tiers (events.Tier), key kinds (events.KeyKind) and audit results (audit.*), as literals the
# compiler folds; tests/unit/test_kernels.py checks they match the enums.
CACHE, FAST, LEARNED, BUDGET_FALLBACK, PRIOR = 0, 1, 2, 3, 4
EXACT, PAIR, TOKEN, PRIOR_KEY = 0, 1, 2, 3
DISAGREED, AGREED = 0, 1

_AUDIT_SALT = np.uint64(0xA0D17A0D17A0D175)


@njit(cache=True, inline="always")
def _audited(key, position, mode, threshold):
    """audit.audit_selected of one decision (mode 0: none, 1: all, 2: the hash below threshold)."""
    if mode != 2:
        return mode == 1
    return mix(key ^ mix(np.uint64(position) ^ _AUDIT_SALT)) < threshold


@njit(cache=True)
def assign(contexts, vocab, static_below, tab, inverse, hit_slot, hits, keys, audit, position, out):
    """Each event's table entry resolved (RoutingTable.resolve of its previous token and token),
    cache hits filled, fast-path rows marked (tier and key kind; :func:`serve` fills their
    routes), the learned-router requests listed.

    ``hits``: the found cache values (experts, weights, confidence, entropy), ``hit_slot[u]``
    the hit row of unique key ``u`` or -1; ``audit``: (mode, threshold). Returns (asked rows,
    is-audit flags, miss_first, kind, pair row): the rows that ask the governor, in decision
    order -- each missed key's first row and each audited fast-path row --; for every missed
    row, the index in ``asked`` of its key's first row (-1 for the other rows); and each row's
    table entry (key kind and pair row, from :func:`~.table_kernels.resolve`).
    """
    experts, weights, conf, ent, tiers, kinds = out
    h_experts, h_weights, h_conf, h_ent = hits
    n, k = experts.shape
    w = contexts.shape[1]
    kind, ok, pair_row = resolve(contexts[:, w - 2] if w >= 2 else np.full(n, -1, np.int64), contexts[:, w - 1],
                                 vocab, static_below, tab)
    asked = np.empty(n, np.int64)
    is_audit = np.zeros(n, np.bool_)
    miss_first = np.full(n, -1, np.int64)
    map_keys, map_slots = slot_table(n)
    na = 0
    for i in range(n):
        u = inverse[i]
        if u >= 0 and hit_slot[u] >= 0:
            s = hit_slot[u]
            for j in range(k):
                experts[i, j], weights[i, j] = h_experts[s, j], h_weights[s, j]
            conf[i], ent[i], tiers[i], kinds[i] = h_conf[s], h_ent[s], CACHE, EXACT
        elif ok[i]:
            tiers[i], kinds[i] = FAST, kind[i]
            if _audited(keys[i], position + i, audit[0], audit[1]):
                asked[na], is_audit[na] = i, True
                na += 1
        else:
            first = find_or_add(keys[i], na, map_keys, map_slots)
            if first < 0:
                asked[na] = i
                first = na
                na += 1
            miss_first[i] = first
    return asked[:na], is_audit[:na], miss_first, kind, pair_row


@njit(cache=True)
def serve(asked, is_audit, granted, miss_first, kind, pair_row, contexts, tab, out):
    """After the governor: missed rows whose key it denied take their entry's route (tier
    budget_fallback, or prior for an event without an entry), and so do the fast-path rows
    (RoutingTable.routes). Returns the rows for the router: the granted missed keys' first rows
    in ``asked`` order, then the granted audits."""
    experts, weights, conf, ent, tiers, kinds = out
    n = len(miss_first)
    served = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        a = miss_first[i]
        if a >= 0 and not granted[a]:
            tiers[i] = PRIOR if kind[i] == PRIOR_KEY else BUDGET_FALLBACK
            kinds[i] = kind[i]
        if tiers[i] == FAST or tiers[i] == PRIOR or tiers[i] == BUDGET_FALLBACK:
            served[m] = i
            m += 1
    served = served[:m]
    entry_routes(served, served, contexts[:, contexts.shape[1] - 1], pair_row, tab, experts, weights, conf, ent)
    rows = np.empty(len(asked), np.int64)
    m = 0
    for audits in (False, True):
        for a in range(len(asked)):
            if granted[a] and is_audit[a] == audits:
                rows[m] = asked[a]
                m += 1
    return rows[:m]


@njit(cache=True, inline="always")
def _same_set(a, b):
    """audit.same_expert_sets of two rows of k expert ids."""
    x, y = np.sort(a), np.sort(b)
    for j in range(len(x)):
        if x[j] != y[j]:
            return False
    return True


@njit(cache=True)
def fill_routed(asked, is_audit, granted, miss_first, routed, out, audits, keys, min_conf):
    """The router's rows (``routed``: experts, weights, conf, ent for :func:`serve`'s rows) go to
    their first rows (tier learned) and repeats (tier cache); each granted audit records whether
    the router's set matches the fast path's. Returns the cache writes: the learned decisions with
    confidence >= ``min_conf`` (float32), as (keys, experts, weights, conf, ent) in router order."""
    experts, weights, conf, ent, tiers, kinds = out
    r_experts, r_weights, r_conf, r_ent = routed
    k = experts.shape[1]
    result_row = np.full(len(asked), -1, np.int64)
    write = np.empty(len(asked), np.int64)
    learned = nw = 0
    for a in range(len(asked)):
        if granted[a] and not is_audit[a]:
            result_row[a] = learned
            if r_conf[learned] >= min_conf:
                write[nw] = a
                nw += 1
            learned += 1
    audited = learned
    for a in range(len(asked)):
        if granted[a] and is_audit[a]:
            i = asked[a]
            audits[i] = AGREED if _same_set(experts[i], r_experts[audited]) else DISAGREED
            audited += 1
    for i in range(len(miss_first)):
        a = miss_first[i]
        if a >= 0 and granted[a]:
            r = result_row[a]
            for j in range(k):
                experts[i, j], weights[i, j] = r_experts[r, j], r_weights[r, j]
            conf[i], ent[i] = r_conf[r], r_ent[r]
            tiers[i], kinds[i] = (LEARNED if asked[a] == i else CACHE), EXACT
    w_keys, w_experts = np.empty(nw, np.uint64), np.empty((nw, k), np.int64)
    w_weights, w_conf, w_ent = np.empty((nw, k), np.float32), np.empty(nw, np.float32), np.empty(nw, np.float32)
    for j in range(nw):
        a = write[j]
        r = result_row[a]
        w_keys[j], w_conf[j], w_ent[j] = keys[asked[a]], r_conf[r], r_ent[r]
        for c in range(k):
            w_experts[j, c], w_weights[j, c] = r_experts[r, c], r_weights[r, c]
    return w_keys, w_experts, w_weights, w_conf, w_ent


@njit(cache=True)
def tally(tiers, kinds, audits, tier_counts, tier_key_counts):
    """Adds the batch's decisions per tier and per [tier, key kind] to the two count arrays;
    returns (cache hits, audited, agreed, router calls bool [n] -- the learned decisions and the
    audited ones, audit.router_calls)."""
    calls = np.empty(len(tiers), np.bool_)
    hits = audited = agreed = 0
    for i in range(len(tiers)):
        tier_counts[tiers[i]] += 1
        tier_key_counts[tiers[i], kinds[i]] += 1
        hits += tiers[i] == CACHE
        audited += audits[i] >= 0
        agreed += audits[i] == AGREED
        calls[i] = tiers[i] == LEARNED or audits[i] >= 0
    return hits, audited, agreed, calls


@njit(cache=True)
def conclude(asked, is_audit, granted, miss_first, routed, out, audits, keys, min_conf, counts, ledger):
    """After the router (``routed`` may be empty): :func:`fill_routed`, then :func:`tally` into
    ``counts`` (per tier, per [tier, key kind]) and the budget ledger's record of the router
    calls (``ledger``: its ring, state and window; budget_kernels.record). Returns (the cache
    writes, (cache hits, audited, agreed), the ledger's router calls per block)."""
    writes = fill_routed(asked, is_audit, granted, miss_first, routed, out, audits, keys, min_conf)
    hits, audited, agreed, calls = tally(out[4], out[5], audits, counts[0], counts[1])
    return writes, (hits, audited, agreed), record(calls, ledger[0], ledger[1], ledger[2])
