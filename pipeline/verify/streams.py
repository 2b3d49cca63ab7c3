"""The token streams behind a set of outcomes, and each decision's context rebuilt from them.

The verifier never trusts a recorded context: it rebuilds every stream from the corpus (when
given) or from the outcomes' own (stream, seq, token) triples, and derives the context a layer
of receptive field ``W`` saw -- the stream's tokens at seqs ``s-W+1 .. s``, PAD before the start.
A context that includes a seq the verifier does not know is *unknown* and not re-routed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from pipeline.engine.events import PAD_TOKEN, EventChunk

UNKNOWN = -2  # a seq no outcome (and no corpus record) holds


@dataclass
class StreamIndex:
    """Every stream's tokens in one flat array: stream ``i`` holds seqs 0..len-1 at
    ``start[i] .. start[i] + length[i]`` of ``tokens`` (UNKNOWN where no token is known)."""

    names: dict[str, int]
    start: np.ndarray  # int64 [streams]
    length: np.ndarray  # int64 [streams]
    tokens: np.ndarray  # int64 [total]

    @classmethod
    def build(cls, streams: Sequence[str], seqs: np.ndarray, tokens: np.ndarray) -> "StreamIndex":
        names: dict[str, int] = {}
        ids = np.fromiter((names.setdefault(s, len(names)) for s in streams), dtype=np.int64, count=len(streams))
        length = np.zeros(len(names), np.int64)
        np.maximum.at(length, ids, seqs + 1)
        start = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64)
        flat = np.full(int(length.sum()), UNKNOWN, np.int64)
        flat[start[ids] + seqs] = tokens
        return cls(names, start, length, flat)

    @classmethod
    def from_chunks(cls, chunks: Iterable[EventChunk]) -> "StreamIndex":
        streams: list[str] = []
        seqs: list[int] = []
        toks: list[int] = []
        for c in chunks:
            streams += [c.stream] * len(c.tokens)
            seqs += range(c.first_seq, c.first_seq + len(c.tokens))
            toks += c.tokens
        return cls.build(streams, np.asarray(seqs, np.int64), np.asarray(toks, np.int64))

    def ids(self, streams: Sequence[str]) -> np.ndarray:
        """int64 [n]: each stream's index (-1 for a stream this index does not hold)."""
        names = self.names
        return np.fromiter((names.get(s, -1) for s in streams), dtype=np.int64, count=len(streams))

    def contexts(self, ids: np.ndarray, seqs: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(contexts int64 [n, window] ending with each event's token, known bool [n])."""
        offsets = seqs[:, None] - (window - 1) + np.arange(window)[None, :]  # [n, window]
        inside = (ids[:, None] >= 0) & (offsets < self.length[np.maximum(ids, 0)][:, None])
        before = offsets < 0
        flat = self.start[np.maximum(ids, 0)][:, None] + np.maximum(offsets, 0)
        ctx = np.where(before, PAD_TOKEN, np.where(inside, self.tokens[np.minimum(flat, len(self.tokens) - 1)],
                                                   UNKNOWN))
        return ctx, ~(ctx == UNKNOWN).any(axis=1)
