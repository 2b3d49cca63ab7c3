"""Hashing and first-occurrence dedupe as compiled loops (numba): splitmix64, the context
hashes and cache keys of :mod:`.hashing`, and an open-addressing map for a batch's keys.
``tests/unit/test_kernels.py`` checks them against the definitions in :mod:`.hashing`.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_SEED = np.uint64(0x243F6A8885A308D3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@njit(cache=True, inline="always")
def mix(x):
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
        out[i] = mix(values[i])
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
            h = mix((h * _GOLDEN) ^ np.uint64(contexts[i, j] + 2))
        hashes[i] = h
        keys[i] = mix((h * _GOLDEN) ^ (np.uint64(contexts[i, w - 1] + 2) * _MIX2 + salt))
    return hashes, keys


@njit(cache=True, inline="always")
def slot_table(n):
    size = 1
    while size < 2 * n:
        size <<= 1
    return np.empty(size, np.uint64), np.full(size, -1, np.int64)


@njit(cache=True, inline="always")
def find_or_add(key, value, keys, slots):
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
    map_keys, map_slots = slot_table(n)
    unique = np.empty(n, np.uint64)
    inverse = np.full(n, -1, np.int64)
    u = 0
    for i in range(n):
        if looked[i]:
            s = find_or_add(keys[i], u, map_keys, map_slots)
            if s < 0:
                unique[u] = keys[i]
                s = u
                u += 1
            inverse[i] = s
    return unique[:u], inverse


@njit(cache=True)
def keyed(contexts, salt):
    """:func:`context_keys` and :func:`first_occurrences` of every row, in one call:
    (hashes, keys, unique keys, inverse)."""
    hashes, keys = context_keys(contexts, salt)
    unique, inverse = first_occurrences(keys, np.ones(len(keys), np.bool_))
    return hashes, keys, unique, inverse
