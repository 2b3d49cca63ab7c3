"""Per-stream context windows.

Every stream keeps the last ``W - 1`` tokens it routed (``W`` = the context window, the
receptive field of the learned router and the scope of the cache key). Windows are plain,
immutable values so that any store can hold them: a dict for the embedded replay, a Faust
table (changelog-backed) in the streaming pipeline.

Ordering rule: within a stream, sequence numbers must strictly increase (gaps are allowed).
An event whose ``seq`` does not increase is rejected without touching the window. If its
source offset is not after the offset that last advanced the window, it is a *redelivery*
(the event was already routed before a crash/rebalance) rather than bad input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .context_kernels import advance
from .events import PAD_TOKEN, EventBatch, EventChunk
from .hashing import context_hash

REDELIVERED = "redelivered"
SEQ_NOT_INCREASING = "seq_not_increasing"


@dataclass(frozen=True, slots=True)
class ContextWindow:
    """The tail of one stream: last ``W-1`` tokens (oldest first), last seq and offset."""

    tokens: tuple[int, ...]
    last_seq: int = -1
    last_offset: int = -1

    @classmethod
    def empty(cls, window: int) -> "ContextWindow":
        return cls((PAD_TOKEN,) * (window - 1))

    def to_list(self) -> list[int]:
        """Compact JSON-friendly form: ``[last_seq, last_offset, *tokens]``."""
        return [self.last_seq, self.last_offset, *self.tokens]

    @classmethod
    def from_list(cls, values: list[int]) -> "ContextWindow":
        return cls(tuple(values[2:]), values[0], values[1])


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event that was not routed: its index in the batch, a kind and a reason."""

    index: int
    kind: str
    reason: str


@dataclass(slots=True)
class ContextResult:
    """Contexts for the accepted events of a batch and the windows after them."""

    accepted: np.ndarray  # bool [n]
    contexts: np.ndarray  # int64 [n_accepted, W]: W-1 previous tokens, then the token
    windows: dict[str, ContextWindow]
    rejections: list[Rejection]


def build_contexts(
    batch: EventBatch, windows: Mapping[str, ContextWindow], window: int
) -> ContextResult:
    """Compute each event's context from its stream's window, in arrival order.

    ``windows`` holds the windows of (some of) the batch's streams; a missing stream starts
    empty. The returned ``windows`` holds the updated window of every stream in the batch
    (unchanged for streams whose events were all rejected), in the order of
    ``batch.stream_names``. The per-event work is one compiled pass
    (:func:`~.context_kernels.advance`); the Python work is per stream.
    """
    if len(batch) == 0:
        return ContextResult(np.zeros(0, dtype=bool), np.zeros((0, window), dtype=np.int64), {}, [])
    empty = ContextWindow.empty(window)
    starts = [windows.get(name) or empty for name in batch.stream_names]
    ring = np.asarray([w.tokens for w in starts], dtype=np.int64).reshape(len(starts), window - 1)
    last_seq = np.fromiter((w.last_seq for w in starts), dtype=np.int64, count=len(starts))
    last_offset = np.fromiter((w.last_offset for w in starts), dtype=np.int64, count=len(starts))
    accepted, contexts, redelivered, present = advance(
        batch.stream_ids, batch.seqs, batch.offsets, batch.tokens, ring, last_seq, last_offset)
    names, tails, seqs, offsets = batch.stream_names, ring.tolist(), last_seq.tolist(), last_offset.tolist()
    new = {}
    for s in np.flatnonzero(present).tolist():  # a stream whose events were all rejected keeps its window
        start = starts[s]
        new[names[s]] = start if seqs[s] == start.last_seq else ContextWindow(tuple(tails[s]), seqs[s], offsets[s])
    rejected = [] if len(contexts) == len(batch) else _rejections(batch, starts, accepted, redelivered)
    return ContextResult(accepted, contexts, new, rejected)


def _rejections(batch: EventBatch, starts: list[ContextWindow], accepted: np.ndarray,
                redelivered: np.ndarray) -> list[Rejection]:
    rejections = []
    for i in np.flatnonzero(~accepted).tolist():
        s = int(batch.stream_ids[i])
        stream, seq = batch.stream_names[s], int(batch.seqs[i])
        if redelivered[i]:
            rejections.append(Rejection(i, REDELIVERED, f"stream {stream!r} seq {seq} was already routed"))
        else:
            rejections.append(Rejection(i, SEQ_NOT_INCREASING, f"seq {seq} of stream {stream!r} does not "
                                                               f"increase (last routed seq {starts[s].last_seq})"))
    return rejections


def corpus_context_hashes(chunks: Iterable[EventChunk], window: int) -> dict[tuple[str, int], int]:
    """(stream, seq) -> hash of the W-1 tokens before it in its stream (PAD-filled at the start):
    the context every decision for that event must carry, computed from the corpus alone."""
    history: dict[str, list[int]] = {}
    rows, keys = [], []
    for chunk in chunks:
        past = history.setdefault(chunk.stream, [PAD_TOKEN] * (window - 1))
        for i, token in enumerate(chunk.tokens):
            rows.append(past[len(past) - (window - 1):] if window > 1 else [])
            keys.append((chunk.stream, chunk.first_seq + i))
            past.append(token)
    hashes = context_hash(np.asarray(rows, dtype=np.int64).reshape(len(rows), window - 1))
    return dict(zip(keys, hashes.tolist()))


def layer_context_hashes(chunks: Iterable[EventChunk], windows: Sequence[int]
                         ) -> dict[tuple[str, int], tuple[int, ...]]:
    """(stream, seq) -> the context hash of every layer (``windows``: each layer's receptive field)."""
    chunks = list(chunks)
    per_layer = [corpus_context_hashes(chunks, w) for w in windows]
    return {key: tuple(layer[key] for layer in per_layer) for key in per_layer[0]}
