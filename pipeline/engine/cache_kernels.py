"""The in-process decision cache as compiled loops (numba): an open-addressing index over a
pool of entries kept in LRU order by a doubly linked list.

:class:`~pipeline.engine.array_cache.ArrayDecisionCache` owns the arrays and states the
contract (the same LRU/TTL policy as :class:`~pipeline.engine.cache.MemoryDecisionCache`);
these loops are its implementation. ``tests/unit/test_array_cache.py`` checks them against
``MemoryDecisionCache`` on random traffic.

Layout, passed as the tuple ``pool``:

* ``index_keys`` uint64 [cap], ``index_ids`` int64 [cap] (``-1``: empty): linear probing from
  the key's Fibonacci hash; removal shifts the following run back (no tombstones). ``cap`` is a
  power of two at least twice the pool, so probes stay short.
* ``keys`` uint64 [m] (m: at most ``max_entries`` plus one write), ``older``/``newer`` int64
  [m] (the LRU list, ``-1`` at its ends), ``expiry`` float64 [m]; the decision columns ``experts`` int64 [m, k], ``weights`` float32
  [m, k], ``conf``/``ent`` float32 [m]; ``free`` int64 [m], a stack of the ids that were given up.
* ``state`` int64 [7]: oldest, newest, count, fresh (ids below it were used once), free top,
  evictions, expirations.
"""
from __future__ import annotations

import numpy as np
from numba import njit

OLDEST, NEWEST, COUNT, FRESH, FREE_TOP, EVICTIONS, EXPIRATIONS = range(7)
STATE_SIZE = 7
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _shift(cap):
    """64 - log2(cap): the shift that keeps a hash's top log2(cap) bits (cap a power of two >= 2)."""
    bits = 0
    while (1 << bits) < cap:
        bits += 1
    return np.uint64(64 - bits)


@njit(cache=True, inline="always")
def _home(key, shift):
    """The key's first probe: the top bits of its Fibonacci hash."""
    return np.int64((key * _GOLDEN) >> shift)


@njit(cache=True, inline="always")
def _probe(key, index_keys, index_ids, shift):
    """The index slot holding ``key``, or the empty slot where it would go."""
    mask = len(index_keys) - 1
    pos = _home(key, shift)
    while index_ids[pos] >= 0 and index_keys[pos] != key:
        pos = (pos + 1) & mask
    return pos


@njit(cache=True, inline="always")
def _unindex(pos, index_keys, index_ids, shift):
    """Empty slot ``pos`` and shift back the entries of its run that would no longer be found."""
    mask = len(index_keys) - 1
    gap, nxt = pos, (pos + 1) & mask
    while index_ids[nxt] >= 0:
        home = _home(index_keys[nxt], shift)
        if (nxt - home) & mask >= (nxt - gap) & mask:  # its home is at or before the gap
            index_keys[gap], index_ids[gap] = index_keys[nxt], index_ids[nxt]
            gap = nxt
        nxt = (nxt + 1) & mask
    index_ids[gap] = -1


@njit(cache=True, inline="always")
def _unlink(e, older, newer, state):
    o, w = older[e], newer[e]
    if o >= 0:
        newer[o] = w
    else:
        state[OLDEST] = w
    if w >= 0:
        older[w] = o
    else:
        state[NEWEST] = o


@njit(cache=True, inline="always")
def _append(e, older, newer, state):
    """Make ``e`` the newest entry."""
    last = state[NEWEST]
    older[e], newer[e] = last, -1
    if last >= 0:
        newer[last] = e
    else:
        state[OLDEST] = e
    state[NEWEST] = e


@njit(cache=True, inline="always")
def _drop(e, pos, pool, state, shift):
    """Remove entry ``e`` (at index slot ``pos``) from the index and the LRU list."""
    index_keys, index_ids, older, newer = pool[0], pool[1], pool[3], pool[4]
    _unindex(pos, index_keys, index_ids, shift)
    _unlink(e, older, newer, state)
    state[COUNT] -= 1


@njit(cache=True)
def lookup(keys, now, pool, state):
    """(hit row of each key, -1 if absent or expired; the hits' experts, weights, confidence,
    entropy in key order). A hit becomes the newest entry; an expired one is removed (counted)."""
    index_keys, index_ids, ids_keys, older, newer, expiry = pool[0], pool[1], pool[2], pool[3], pool[4], pool[5]
    experts, weights, conf, ent, free = pool[6], pool[7], pool[8], pool[9], pool[10]
    n, shift = len(keys), _shift(len(index_keys))
    slot, found = np.full(n, -1, np.int64), np.empty(n, np.int64)
    h = 0
    for i in range(n):
        pos = _probe(keys[i], index_keys, index_ids, shift)
        e = index_ids[pos]
        if e < 0:
            continue
        if expiry[e] <= now:
            _drop(e, pos, pool, state, shift)
            free[state[FREE_TOP]] = e
            state[FREE_TOP] += 1
            state[EXPIRATIONS] += 1
            continue
        _unlink(e, older, newer, state)
        _append(e, older, newer, state)
        slot[i], found[h] = h, e
        h += 1
    k = experts.shape[1]
    out_e, out_w = np.empty((h, k), np.int64), np.empty((h, k), np.float32)
    out_c, out_n = np.empty(h, np.float32), np.empty(h, np.float32)
    for j in range(h):
        e = found[j]
        out_e[j], out_w[j], out_c[j], out_n[j] = experts[e], weights[e], conf[e], ent[e]
    return slot, out_e, out_w, out_c, out_n


@njit(cache=True, inline="always")
def _claim(state, free):
    """An unused entry id: an expired one, else a never used one."""
    if state[FREE_TOP] > 0:
        state[FREE_TOP] -= 1
        return free[state[FREE_TOP]]
    state[FRESH] += 1
    return state[FRESH] - 1


@njit(cache=True, inline="always")
def _last_rows(keys):
    """Whether row ``i`` is the last occurrence of its key among ``keys``."""
    n = len(keys)
    cap = 8
    while cap < 2 * n:
        cap *= 2
    seen_keys, seen_rows, shift = np.zeros(cap, np.uint64), np.full(cap, -1, np.int64), _shift(cap)
    last = np.zeros(n, np.bool_)
    for i in range(n - 1, -1, -1):
        pos = _probe(keys[i], seen_keys, seen_rows, shift)
        if seen_rows[pos] < 0:
            seen_keys[pos], seen_rows[pos], last[i] = keys[i], i, True
    return last


@njit(cache=True)
def store(keys, experts, weights, conf, ent, expires_at, pool, state, max_entries):
    """Write row ``i`` under ``keys[i]``, in order: a rewrite replaces the value and the expiry
    and makes the entry the newest; once all are written, the oldest entries beyond
    ``max_entries`` are evicted. (A key written twice counts once: only its last row is kept.)
    The pool must hold count + len(keys) entries."""
    index_keys, index_ids, ids_keys, older, newer, expiry = pool[0], pool[1], pool[2], pool[3], pool[4], pool[5]
    p_experts, p_weights, p_conf, p_ent = pool[6], pool[7], pool[8], pool[9]
    shift, last = _shift(len(index_keys)), _last_rows(keys)
    for i in range(len(keys)):
        if not last[i]:
            continue
        key = keys[i]
        pos = _probe(key, index_keys, index_ids, shift)
        e = index_ids[pos]
        if e >= 0:
            _unlink(e, older, newer, state)
        else:
            e = _claim(state, pool[10])
            index_keys[pos], index_ids[pos], ids_keys[e] = key, e, key
            state[COUNT] += 1
        _append(e, older, newer, state)
        p_experts[e], p_weights[e], p_conf[e], p_ent[e], expiry[e] = experts[i], weights[i], conf[i], ent[i], expires_at
    while state[COUNT] > max_entries:
        e = state[OLDEST]
        _drop(e, _probe(ids_keys[e], index_keys, index_ids, shift), pool, state, shift)
        pool[10][state[FREE_TOP]] = e
        state[FREE_TOP] += 1
        state[EVICTIONS] += 1


@njit(cache=True)
def reindex(ids_keys, older, state, cap):
    """A fresh index of capacity ``cap`` over the live entries (the pool grew)."""
    index_keys, index_ids, shift = np.zeros(cap, np.uint64), np.full(cap, -1, np.int64), _shift(cap)
    e = state[NEWEST]
    while e >= 0:
        pos = _probe(ids_keys[e], index_keys, index_ids, shift)
        index_keys[pos], index_ids[pos] = ids_keys[e], e
        e = older[e]
    return index_keys, index_ids
