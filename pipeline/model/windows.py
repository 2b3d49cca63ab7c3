"""Exact chunked forward passes over long token streams.

With sliding-window attention the output at position ``t`` depends on the last
``cfg.context`` tokens only. A stream can therefore be cut into chunks of ``chunk`` positions,
each row fed with up to ``prefix = cfg.context - 1`` tokens before its chunk, and the outputs
equal one pass over the whole stream. Rows are padded with ``-1`` (before a stream's start,
after its end); padding never influences a real position.

All streams are addressed in one flat layout: stream ``s`` occupies
``[offsets[s], offsets[s] + len(s))``, which is how per-token routing arrays are passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .moe import Route


@dataclass
class WindowBatch:
    tokens: torch.Tensor  # long [B, P + C], -1 = padding
    flat: torch.Tensor  # long [B, P + C]: flat-layout index of every column (-1 = padding)
    outputs: torch.Tensor  # bool [B, P + C]: the columns this row reports (its chunk)
    targets: torch.Tensor  # long [B, P + C]: next token of the stream (-1 = none / not reported)


def flat_offsets(streams: Sequence[np.ndarray]) -> np.ndarray:
    """Start of each stream in the flat layout (length ``len(streams) + 1``)."""
    return np.concatenate(([0], np.cumsum([len(s) for s in streams]))).astype(np.int64)


def window_batches(streams: Sequence[np.ndarray], prefix: int, chunk: int = 512,
                   rows: int = 16) -> Iterator[WindowBatch]:
    """Batches of up to ``rows`` windows covering every position of every stream once."""
    offsets = flat_offsets(streams)
    plan = [(s, start) for s, ids in enumerate(streams) for start in range(0, len(ids), chunk)]
    width = prefix + chunk
    for i in range(0, len(plan), rows):
        part = plan[i:i + rows]
        tokens = np.full((len(part), width), -1, dtype=np.int64)
        flat = np.full((len(part), width), -1, dtype=np.int64)
        targets = np.full((len(part), width), -1, dtype=np.int64)
        for r, (s, start) in enumerate(part):
            ids = streams[s]
            lo, hi = max(0, start - prefix), min(len(ids), start + chunk)
            lead = prefix - (start - lo)
            tokens[r, lead:lead + hi - lo] = ids[lo:hi]
            flat[r, lead:lead + hi - lo] = offsets[s] + np.arange(lo, hi)
            nxt = np.arange(start + 1, hi + 1)
            targets[r, prefix:prefix + hi - start] = np.where(nxt < len(ids), ids[np.minimum(nxt, len(ids) - 1)], -1)
        out = np.zeros_like(tokens, dtype=bool)
        out[:, prefix:] = flat[:, prefix:] >= 0
        yield WindowBatch(torch.from_numpy(tokens), torch.from_numpy(flat), torch.from_numpy(out),
                          torch.from_numpy(targets))


def gather_route(batch: WindowBatch, experts: np.ndarray, weights: np.ndarray) -> Route:
    """The forced :class:`Route` of one layer for ``batch``, from flat-layout arrays
    ``experts`` [N, k] and ``weights`` [N, k]."""
    idx = batch.flat.clamp_min(0)  # [B, W]
    e = torch.from_numpy(np.ascontiguousarray(experts, dtype=np.int64))[idx]  # [B, W, k]
    w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))[idx]  # [B, W, k]
    return Route(e, torch.where((batch.flat >= 0)[..., None], w, 0.0))
