"""Deterministic, vectorised 64-bit hashes for context windows and cache keys.

Python's ``hash`` is salted per process, so it cannot key a cache shared by several workers.
These functions use the splitmix64 finaliser on numpy ``uint64`` arrays (wrap-around
arithmetic), which is fast, stable across processes and machines, and well mixed.
"""
from __future__ import annotations

import numpy as np

from . import hash_kernels

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0x94D049BB133111EB)


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser applied element-wise; returns a new uint64 array (the compiled
    :func:`~pipeline.engine.hash_kernels.mix_all`, so the engine's fused kernels and this module hash
    with one definition)."""
    mixed: np.ndarray = hash_kernels.mix_all(np.ascontiguousarray(values, dtype=np.uint64).ravel())
    return mixed.reshape(np.shape(values))


def _as_u64(tokens: np.ndarray) -> np.ndarray:
    # +2 keeps PAD (-1) and token 0 distinct from zero.
    return (tokens.astype(np.int64) + 2).astype(np.uint64)


def context_hash(prev_tokens: np.ndarray) -> np.ndarray:
    """Hash of each row of ``prev_tokens`` ([n, w] int, PAD = -1), order-sensitive.

    A mixing step per position -- ``h = mix64(h * G ^ (token + 2))`` -- so distinct windows
    collide only as often as random 64-bit values do. A row with ``w == 0`` columns hashes to a
    constant, so a window of 1 still works.
    """
    h = np.full(len(prev_tokens), 0x243F6A8885A308D3, dtype=np.uint64)
    for j in range(prev_tokens.shape[1]):
        h = mix64((h * _GOLDEN) ^ _as_u64(prev_tokens[:, j]))
    return h


def cache_key(ctx_hash: np.ndarray, tokens: np.ndarray, layer: int = 0) -> np.ndarray:
    """Decision-cache key of (context hash, token id, MoE layer), as uint64."""
    salt = np.uint64(((layer + 1) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF)
    return mix64((ctx_hash * _GOLDEN) ^ (_as_u64(tokens) * _MIX2 + salt))
