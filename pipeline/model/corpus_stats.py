"""Per-layer routing statistics of the model's own training text: the offline phase's prior.

A fast-path table learned from a few thousand tokens of a replay's prefix misses most of the
vocabulary, and a token without an entry can only fall back to the traffic-wide prior -- which
MoE measurements show to be ruinous. So the statistics of the training works (the exact
routing of every training token, one streamed pass of the LM) are computed once per checkpoint
and stored next to it as ``<checkpoint>.stats.npz``, tagged with the checkpoint's content hash.
They include the (previous token, token) pair statistics, bounded to the pairs with the most
traffic (twice the default table cap). Statistics without pairs (an older file) are recomputed.
``var model train`` writes them; :func:`training_stats` computes them on first use otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.engine.pairs import stats_pair_cap, stream_previous
from pipeline.engine.stats import TokenStats
from pipeline.engine.table import DEFAULT_PAIR_CAP

from .checkpoint import Checkpoint
from .router import exact_routing
from .train import encode_works


def stats_path(checkpoint_path: str | Path) -> Path:
    p = Path(checkpoint_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".stats.npz")


def compute_stats(checkpoint: Checkpoint, streams: Sequence[np.ndarray],
                  pair_cap: int = stats_pair_cap(DEFAULT_PAIR_CAP)) -> list[TokenStats]:
    """Exact per-layer statistics of ``streams`` (every token counted and routed), tokens and
    (previous token, token) pairs -- at most ``pair_cap`` pairs per layer."""
    cfg = checkpoint.config
    tokens = np.concatenate(streams) if streams else np.zeros(0, np.int64)
    prev = np.concatenate([stream_previous(s) for s in streams]) if streams else np.zeros(0, np.int64)
    everything = np.ones(len(tokens), bool)
    out = []
    for routing in exact_routing(checkpoint.model, streams):
        stats = TokenStats(cfg.vocab_size, cfg.n_experts, pair_cap)
        stats.observe(tokens, prev, everything, routing.experts, routing.weights, routing.confidence,
                      routing.entropy)
        out.append(stats)
    return out


def save_stats(stats: Sequence[TokenStats], path: str | Path, digest: str) -> None:
    # Any: savez's keywords include allow_pickle
    blobs: dict[str, Any] = {f"layer{l}": np.frombuffer(s.to_bytes(), np.uint8) for l, s in enumerate(stats)}
    with open(path, "wb") as handle:
        np.savez(handle, digest=np.asarray(digest), **blobs)


def load_stats(path: str | Path, digest: str) -> list[TokenStats] | None:
    """The stored statistics, or ``None`` if absent, unreadable or made for other weights."""
    try:
        with np.load(path) as data:
            if str(data["digest"]) != digest:
                return None
            layers = sorted((k for k in data.files if k.startswith("layer")), key=lambda k: int(k[5:]))
            return [TokenStats.from_bytes(data[k].tobytes()) for k in layers]
    except (OSError, KeyError, ValueError):
        return None


def training_stats(checkpoint: Checkpoint) -> list[TokenStats]:
    """The training works' per-layer statistics for ``checkpoint`` (stored, or computed and stored)."""
    path = stats_path(checkpoint.path)
    stats = load_stats(path, checkpoint.digest)
    if stats is not None and len(stats) == checkpoint.config.n_layer and all(len(s.pairs) for s in stats):
        return stats
    stats = compute_stats(checkpoint, encode_works(checkpoint.record.get("train_works", [])))
    try:
        save_stats(stats, path, checkpoint.digest)
    except OSError:
        pass  # a read-only install: recompute next time
    return stats


