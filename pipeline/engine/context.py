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


@dataclass(slots=True)
class _Groups:
    """Events sorted by stream (stable), with per-group start windows."""

    order: np.ndarray  # event indices sorted by stream, arrival order within a stream
    group: np.ndarray  # group index of each sorted event
    names: list[str]
    starts: list[ContextWindow]

    @classmethod
    def of(cls, batch: EventBatch, windows: Mapping[str, ContextWindow], window: int) -> "_Groups":
        order = np.argsort(batch.stream_ids, kind="stable")
        sid = batch.stream_ids[order]
        first = np.flatnonzero(np.concatenate(([True], sid[1:] != sid[:-1]))) if len(sid) else sid
        group = np.cumsum(np.concatenate(([False], sid[1:] != sid[:-1]))) if len(sid) else sid
        names = [batch.stream_names[i] for i in sid[first].tolist()]
        empty = ContextWindow.empty(window)
        return cls(order, group, names, [windows.get(name) or empty for name in names])


def _accepted_sorted(batch: EventBatch, g: _Groups) -> np.ndarray:
    """Acceptance of each sorted event: its seq exceeds every earlier seq of its stream."""
    seqs = batch.seqs[g.order]
    last_seq = np.asarray([w.last_seq for w in g.starts], dtype=np.int64)
    new_group = np.concatenate(([True], g.group[1:] != g.group[:-1]))
    prev = np.where(new_group, last_seq[g.group], np.concatenate(([0], seqs[:-1])))
    ok: np.ndarray = seqs > prev
    if ok.all():
        return ok
    for gi in np.unique(g.group[~ok]).tolist():  # rare: exact running max for offending streams
        rows = np.flatnonzero(g.group == gi)
        running = np.maximum.accumulate(np.concatenate(([last_seq[gi]], seqs[rows])))[:-1]
        ok[rows] = seqs[rows] > running
    return ok


def _rejections(batch: EventBatch, g: _Groups, ok: np.ndarray) -> list[Rejection]:
    rejections = []
    for i, gi in zip(g.order[~ok].tolist(), g.group[~ok].tolist()):
        start, stream, seq = g.starts[gi], g.names[gi], int(batch.seqs[i])
        if 0 <= batch.offsets[i] <= start.last_offset:
            rejections.append(Rejection(i, REDELIVERED, f"stream {stream!r} seq {seq} was already routed"))
        else:
            rejections.append(Rejection(i, SEQ_NOT_INCREASING, f"seq {seq} of stream {stream!r} does not "
                                                               f"increase (last routed seq {start.last_seq})"))
    return sorted(rejections, key=lambda r: r.index)


def _contexts_sorted(tokens: np.ndarray, group: np.ndarray, start_tokens: np.ndarray, window: int) -> np.ndarray:
    """[m, W] contexts for events sorted by group: previous tokens from the batch or the start window."""
    m = len(tokens)
    first = np.searchsorted(group, group, side="left")
    pos = np.arange(m) - first
    ctx = np.empty((m, window), dtype=np.int64)
    ctx[:, -1] = tokens
    for back in range(1, window):
        in_batch = pos >= back
        from_window = start_tokens[group, np.clip(window - 1 - (back - pos), 0, window - 2)] if window > 1 else tokens
        ctx[:, window - 1 - back] = np.where(in_batch, tokens[np.maximum(np.arange(m) - back, 0)], from_window)
    return ctx


def build_contexts(
    batch: EventBatch, windows: Mapping[str, ContextWindow], window: int
) -> ContextResult:
    """Compute each event's context from its stream's window, in arrival order.

    ``windows`` holds the windows of (some of) the batch's streams; a missing stream starts
    empty. The returned ``windows`` holds the updated window of every stream in the batch
    (unchanged for streams whose events were all rejected). Vectorised: the Python work is per
    stream, not per event.
    """
    if len(batch) == 0:
        return ContextResult(np.zeros(0, dtype=bool), np.zeros((0, window), dtype=np.int64), {}, [])
    g = _Groups.of(batch, windows, window)
    ok = _accepted_sorted(batch, g)
    rows, group = g.order[ok], g.group[ok]
    start_tokens = np.asarray([w.tokens for w in g.starts], dtype=np.int64).reshape(len(g.starts), window - 1)
    ctx_sorted = _contexts_sorted(batch.tokens[rows], group, start_tokens, window)
    accepted = np.zeros(len(batch), dtype=bool)
    accepted[rows] = True
    contexts = ctx_sorted[np.argsort(rows, kind="stable")]
    return ContextResult(accepted, contexts, _new_windows(batch, g, rows, group, ctx_sorted),
                         _rejections(batch, g, ok) if not ok.all() else [])


def _new_windows(batch: EventBatch, g: _Groups, rows: np.ndarray, group: np.ndarray,
                 ctx_sorted: np.ndarray) -> dict[str, ContextWindow]:
    windows = dict(zip(g.names, g.starts))
    if len(rows) == 0:
        return windows
    boundary = np.concatenate(([True], group[1:] != group[:-1]))
    firsts = np.flatnonzero(boundary)
    lasts = np.concatenate((firsts[1:] - 1, [len(rows) - 1]))
    max_offsets = np.maximum.reduceat(batch.offsets[rows], firsts)
    for gi, li, top in zip(group[firsts].tolist(), lasts.tolist(), max_offsets.tolist()):
        windows[g.names[gi]] = ContextWindow(
            tuple(ctx_sorted[li, 1:].tolist()),
            int(batch.seqs[rows[li]]),
            max(g.starts[gi].last_offset, top),
        )
    return windows


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
