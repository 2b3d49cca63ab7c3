"""The engine's per-batch bookkeeping as compiled loops (numba), one pass per step.

Each function is a plain loop over one micro-batch, compiled once per process (and cached on
disk, ``cache=True``), so a batch costs a handful of calls instead of dozens of numpy passes.
They are the engine's implementation, not an alternative to it: :mod:`.engine` defines the
order of the tiers and :mod:`.hashing`, :mod:`.table`, :mod:`.audit` and :mod:`.budget` the
values, and ``tests/unit/test_kernels.py`` checks every kernel against those definitions.

Conventions: rows are events in arrival order; ``tab`` is a table's arrays as returned by
:meth:`~pipeline.engine.table.RoutingTable.kernel_arrays` (see :data:`TABLE_FIELDS`); output
arrays (``experts`` [n, k] int64, ``weights`` [n, k] float32, ``conf``/``ent`` [n] float32,
``tiers``/``kinds`` [n] int8) are filled in place. The kernels check token ids against the
vocabulary (a compiled loop has no bounds checks of its own).
"""
from __future__ import annotations

import numpy as np
from numba import njit

# tiers (events.Tier), key kinds (events.KeyKind) and audit results (audit.*), as literals the
# compiler folds; tests/unit/test_kernels.py checks they match the enums.
CACHE, FAST, LEARNED, BUDGET_FALLBACK, PRIOR = 0, 1, 2, 3, 4
EXACT, PAIR, TOKEN, PRIOR_KEY = 0, 1, 2, 3
DISAGREED, AGREED = 0, 1

TABLE_FIELDS = ("known", "eligible", "experts", "weights", "confidence", "entropy", "prior_experts",
                "prior_weights", "prior_confidence", "prior_entropy", "pair_index", "pair_eligible",
                "pair_experts", "pair_weights", "pair_confidence", "pair_entropy")

_SEED = np.uint64(0x243F6A8885A308D3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_AUDIT_SALT = np.uint64(0xA0D17A0D17A0D175)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@njit(cache=True, inline="always")
def _mix(x):
    """The splitmix64 finaliser of one uint64 (``hashing.mix64`` element-wise)."""
    x ^= x >> _S30
    x *= _MIX1
    x ^= x >> _S27
    x *= _MIX2
    x ^= x >> _S31
    return x


@njit(cache=True)
def mix_all(values):
    """hashing.mix64 of a uint64 array [n]."""
    out = np.empty_like(values)
    for i in range(len(values)):
        out[i] = _mix(values[i])
    return out


@njit(cache=True)
def context_keys(contexts, salt):
    """(context hashes, cache keys) [n] uint64 of context rows [n, W] ending with the token:
    hashing.context_hash of the first W-1 columns and hashing.cache_key with ``salt``."""
    n, w = contexts.shape
    hashes = np.empty(n, np.uint64)
    keys = np.empty(n, np.uint64)
    for i in range(n):
        h = _SEED
        for j in range(w - 1):
            h = _mix((h * _GOLDEN) ^ np.uint64(contexts[i, j] + 2))
        hashes[i] = h
        keys[i] = _mix((h * _GOLDEN) ^ (np.uint64(contexts[i, w - 1] + 2) * _MIX2 + salt))
    return hashes, keys


@njit(cache=True, inline="always")
def _slot_table(n):
    size = 1
    while size < 2 * n:
        size <<= 1
    return np.empty(size, np.uint64), np.full(size, -1, np.int64)


@njit(cache=True, inline="always")
def _find_or_add(key, value, keys, slots):
    """The value stored under ``key`` in the open-addressing map (keys, slots); if absent, stores
    ``value`` and returns -1."""
    mask = len(slots) - 1
    b = np.int64(key & np.uint64(mask))
    while slots[b] >= 0:
        if keys[b] == key:
            return slots[b]
        b = (b + 1) & mask
    keys[b] = key
    slots[b] = value
    return -1


@njit(cache=True)
def first_occurrences(keys, looked):
    """(distinct keys among rows ``looked``, in first-occurrence order; inverse [n]: each looked
    row's index into them, -1 for the other rows)."""
    n = len(keys)
    map_keys, map_slots = _slot_table(n)
    unique = np.empty(n, np.uint64)
    inverse = np.full(n, -1, np.int64)
    u = 0
    for i in range(n):
        if looked[i]:
            s = _find_or_add(keys[i], u, map_keys, map_slots)
            if s < 0:
                unique[u] = keys[i]
                s = u
                u += 1
            inverse[i] = s
    return unique[:u], inverse


@njit(cache=True)
def pair_index(pair_ids):
    """int64 [capacity, 2] open-addressing map of distinct pair ids -> row (empty slots: id -1):
    one probe or two per lookup instead of a binary search's dozen cache lines."""
    size = 1
    while size < 2 * len(pair_ids):
        size <<= 1
    index = np.full((size, 2), -1, np.int64)
    for row in range(len(pair_ids)):
        b = np.int64(_mix(np.uint64(pair_ids[row])) & np.uint64(size - 1))
        while index[b, 0] >= 0:
            b = (b + 1) & (size - 1)
        index[b, 0], index[b, 1] = pair_ids[row], row
    return index


@njit(cache=True)
def resolve(prev, tokens, vocab, static_below, tab):
    """RoutingTable.resolve: (key kind int8, eligible bool, pair row int64, -1 if none) per event."""
    known, eligible, index, pair_eligible = tab[0], tab[1], tab[10], tab[11]
    n, mask = len(tokens), len(index) - 1
    kind = np.empty(n, np.int8)
    ok = np.empty(n, np.bool_)
    row = np.full(n, -1, np.int64)
    for i in range(n):
        t, q = tokens[i], prev[i]
        if t < 0 or t >= vocab:
            raise IndexError("token id outside the fast-path table's vocabulary")
        if 0 <= q < vocab:
            pid = q * vocab + t
            b = np.int64(_mix(np.uint64(pid)) & np.uint64(mask))
            while index[b, 0] >= 0:
                if index[b, 0] == pid:
                    row[i] = index[b, 1]
                    break
                b = (b + 1) & mask
        if row[i] >= 0:
            kind[i] = PAIR
            ok[i] = pair_eligible[row[i]] or (known[t] and t < static_below)
        else:
            kind[i] = TOKEN if known[t] else PRIOR_KEY
            ok[i] = eligible[t]
    return kind, ok, row


@njit(cache=True)
def entry_routes(rows, targets, tokens, pair_row, tab, experts, weights, conf, ent):
    """RoutingTable.routes: output row ``targets[j]`` gets the route of event ``rows[j]``'s table
    entry -- its pair's (``pair_row`` >= 0), else its token's, else the prior."""
    known, t_experts, t_weights, t_conf, t_ent = tab[0], tab[2], tab[3], tab[4], tab[5]
    prior_experts, prior_weights, prior_conf, prior_ent = tab[6], tab[7], tab[8], tab[9]
    p_experts, p_weights, p_conf, p_ent = tab[12], tab[13], tab[14], tab[15]
    k = experts.shape[1]
    for j in range(len(rows)):
        i, o = rows[j], targets[j]
        t, r = tokens[i], pair_row[i]
        if r >= 0:
            for c in range(k):
                experts[o, c], weights[o, c] = p_experts[r, c], p_weights[r, c]
            conf[o], ent[o] = p_conf[r], p_ent[r]
        elif known[t]:
            for c in range(k):
                experts[o, c], weights[o, c] = t_experts[t, c], t_weights[t, c]
            conf[o], ent[o] = t_conf[t], t_ent[t]
        else:
            for c in range(k):
                experts[o, c], weights[o, c] = prior_experts[c], prior_weights[c]
            conf[o], ent[o] = prior_conf, prior_ent


@njit(cache=True, inline="always")
def _audited(key, position, mode, threshold):
    """audit.audit_selected of one decision (mode 0: none, 1: all, 2: the hash below threshold)."""
    if mode != 2:
        return mode == 1
    return _mix(key ^ _mix(np.uint64(position) ^ _AUDIT_SALT)) < threshold


@njit(cache=True)
def assign(inverse, hit_slot, hits, lookup, keys, audit, position, out):
    """Cache hits filled, fast-path rows marked (tier and key kind; :func:`entry_routes` fills
    their routes), the learned-router requests listed.

    ``hits``: the found cache values (experts, weights, confidence, entropy), ``hit_slot[u]``
    the hit row of unique key ``u`` or -1; ``lookup``: resolve's (kind, eligible, pair row);
    ``audit``: (mode, threshold); ``out``: (experts, weights, conf, ent, tiers, kinds).
    Returns (asked rows, is-audit flags, miss_first): the rows that ask the governor, in
    decision order -- each missed key's first row and each audited fast-path row -- and, for
    every missed row, the index in ``asked`` of its key's first row (-1 for the other rows).
    """
    experts, weights, conf, ent, tiers, kinds = out
    kind, ok = lookup[0], lookup[1]
    h_experts, h_weights, h_conf, h_ent = hits
    n, k = experts.shape
    asked = np.empty(n, np.int64)
    is_audit = np.zeros(n, np.bool_)
    miss_first = np.full(n, -1, np.int64)
    map_keys, map_slots = _slot_table(n)
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
            first = _find_or_add(keys[i], na, map_keys, map_slots)
            if first < 0:
                asked[na] = i
                first = na
                na += 1
            miss_first[i] = first
    return asked[:na], is_audit[:na], miss_first


@njit(cache=True)
def deny(miss_first, granted, kind, tiers, kinds):
    """Missed rows whose key the governor denied are marked for their entry's route (tier
    budget_fallback, or prior for an event without an entry); returns the rows the table
    serves -- these and the fast-path rows -- for :func:`entry_routes`."""
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
    return served[:m]


@njit(cache=True, inline="always")
def _same_set(a, b):
    """audit.same_expert_sets of two rows of k expert ids."""
    x, y = np.sort(a), np.sort(b)
    for j in range(len(x)):
        if x[j] != y[j]:
            return False
    return True


@njit(cache=True)
def fill_routed(asked, is_audit, granted, miss_first, routed, out, audits):
    """The router's rows (``routed``: experts, weights, conf, ent for the granted missed keys in
    ``asked`` order, then the granted audits) go to their first rows (tier learned) and repeats
    (tier cache); each granted audit records whether the router's set matches the fast path's."""
    experts, weights, conf, ent, tiers, kinds = out
    r_experts, r_weights, r_conf, r_ent = routed
    result_row = np.full(len(asked), -1, np.int64)
    learned = 0
    for a in range(len(asked)):
        if granted[a] and not is_audit[a]:
            result_row[a] = learned
            learned += 1
    audited = learned
    for a in range(len(asked)):
        if granted[a] and is_audit[a]:
            i = asked[a]
            audits[i] = AGREED if _same_set(experts[i], r_experts[audited]) else DISAGREED
            audited += 1
    k = experts.shape[1]
    for i in range(len(miss_first)):
        a = miss_first[i]
        if a >= 0 and granted[a]:
            r = result_row[a]
            for j in range(k):
                experts[i, j], weights[i, j] = r_experts[r, j], r_weights[r, j]
            conf[i], ent[i] = r_conf[r], r_ent[r]
            tiers[i], kinds[i] = (LEARNED if asked[a] == i else CACHE), EXACT


@njit(cache=True)
def tally(tiers, kinds, audits, n_tiers, n_kinds):
    """(decisions per [tier, key kind], audited, agreed, router calls bool [n] -- the learned
    decisions and the audited ones, audit.router_calls)."""
    counts = np.zeros((n_tiers, n_kinds), np.int64)
    calls = np.empty(len(tiers), np.bool_)
    audited = agreed = 0
    for i in range(len(tiers)):
        counts[tiers[i], kinds[i]] += 1
        audited += audits[i] >= 0
        agreed += audits[i] == AGREED
        calls[i] = tiers[i] == LEARNED or audits[i] >= 0
    return counts, audited, agreed, calls
