"""The fast-path table's lookups as compiled loops (numba): its pair index, the entry an event
resolves to, and that entry's route.

``tab`` is a table's arrays as :meth:`~pipeline.engine.table.RoutingTable.kernel_arrays` returns
them (:data:`TABLE_FIELDS`). The engine's passes (:mod:`.kernels`) call these from compiled code
-- once per batch, not per event: a compiled helper called per event with arrays as arguments
costs their reference counts each time, which tripled the passes -- so they run exactly what
:meth:`RoutingTable.resolve` and :meth:`RoutingTable.routes` run; ``tests/unit/test_kernels.py``
checks both against the numpy definitions.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .hash_kernels import mix

TABLE_FIELDS = ("known", "eligible", "experts", "weights", "confidence", "entropy", "prior_experts",
                "prior_weights", "prior_confidence", "prior_entropy", "pair_index", "pair_eligible",
                "pair_experts", "pair_weights", "pair_confidence", "pair_entropy")

# key kinds (events.KeyKind), as literals the compiler folds (checked by tests/unit/test_kernels.py)
PAIR, TOKEN, PRIOR_KEY = 1, 2, 3


@njit(cache=True)
def pair_index(pair_ids):
    """int64 [capacity, 2] open-addressing map of distinct pair ids -> row (empty slots: id -1):
    one probe or two per lookup instead of a binary search's dozen cache lines."""
    size = 1
    while size < 2 * len(pair_ids):
        size <<= 1
    index = np.full((size, 2), -1, np.int64)
    for row in range(len(pair_ids)):
        b = np.int64(mix(np.uint64(pair_ids[row])) & np.uint64(size - 1))
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
            b = np.int64(mix(np.uint64(pid)) & np.uint64(mask))
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
