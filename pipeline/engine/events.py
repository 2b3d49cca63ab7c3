"""Event and decision types shared by every part of VAR.

Events arrive as *chunks*: consecutive tokens of one stream, the first with sequence number
``first_seq`` and each following token one higher. A single-token record is a chunk of length 1.
The engine works on *columnar* batches (numpy arrays) so that a micro-batch is routed with a
handful of vectorised operations instead of a Python loop per token.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, Sequence

import numpy as np

PAD_TOKEN = -1
"""Placeholder for "no token" in a context window (the start of a stream)."""


class Tier(IntEnum):
    """Which of VAR's tiers produced a decision (cheapest first)."""

    CACHE = 0
    FAST = 1
    LEARNED = 2
    BUDGET_FALLBACK = 3  # over budget: the pair's or the token's own table entry
    PRIOR = 4  # over budget and the token has no entry at all: the traffic-wide prior

    @property
    def label(self) -> str:
        return self.name.lower()


TIER_LABELS: tuple[str, ...] = tuple(t.label for t in Tier)


class KeyKind(IntEnum):
    """Which table key served a decision: none (an exact router decision, learned or cached),
    the (previous token, token) pair's entry, the token's entry, or the traffic-wide prior."""

    EXACT = 0
    PAIR = 1
    TOKEN = 2
    PRIOR = 3

    @property
    def label(self) -> str:
        return self.name.lower()


KEY_LABELS: tuple[str, ...] = tuple(k.label for k in KeyKind)


def tier_key_counts(tiers: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """int64 [tiers, key kinds]: how many decisions each (tier, key kind) has."""
    flat = tiers.astype(np.int64) * len(KeyKind) + keys.astype(np.int64)
    return np.bincount(flat, minlength=len(Tier) * len(KeyKind)).reshape(len(Tier), len(KeyKind))


def served_by_key(counts: np.ndarray) -> dict[str, dict[str, int]]:
    """The table-served tiers split by key kind, e.g. ``{"fast": {"pair": 9, "token": 3}, ...}``,
    from a :func:`tier_key_counts` matrix."""
    return {Tier(t).label: {KeyKind(k).label: int(counts[t, k]) for k in (KeyKind.PAIR, KeyKind.TOKEN)}
            for t in (Tier.FAST, Tier.BUDGET_FALLBACK)}


@dataclass(frozen=True, slots=True)
class EventChunk:
    """Consecutive tokens of one stream; token ``i`` has sequence number ``first_seq + i``.

    ``offset`` locates the chunk in its source (a line number for files, a Kafka offset for
    topics) so that errors and duplicates can be reported precisely.
    """

    stream: str
    first_seq: int
    tokens: tuple[int, ...]
    offset: int = -1

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(slots=True)
class EventBatch:
    """A micro-batch of token events in arrival order, stored column-wise.

    Streams are interned: ``stream_names`` lists each stream of the batch once and
    ``stream_ids[i]`` is the position of event ``i``'s stream in it, so that grouping by stream
    is a numpy operation. ``offsets[i]`` is the source offset of the record event ``i`` came from.
    """

    stream_names: list[str]
    stream_ids: np.ndarray  # int64 [n]
    seqs: np.ndarray  # int64 [n]
    tokens: np.ndarray  # int64 [n]
    offsets: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def streams(self) -> list[str]:
        """The stream of every event (a list as long as the batch)."""
        names = self.stream_names
        return [names[i] for i in self.stream_ids.tolist()]

    @classmethod
    def empty(cls) -> "EventBatch":
        z = np.zeros(0, dtype=np.int64)
        return cls([], z, z.copy(), z.copy(), z.copy())

    @classmethod
    def from_chunks(cls, chunks: Sequence[EventChunk]) -> "EventBatch":
        """Flatten chunks (in order) into one batch."""
        if not chunks:
            return cls.empty()
        index: dict[str, int] = {}
        ids = [index.setdefault(c.stream, len(index)) for c in chunks]
        lengths = np.fromiter((len(c.tokens) for c in chunks), dtype=np.int64, count=len(chunks))
        starts = np.fromiter((c.first_seq for c in chunks), dtype=np.int64, count=len(chunks))
        first_of_chunk = np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.arange(int(lengths.sum()), dtype=np.int64) - first_of_chunk
        return cls(
            list(index),
            np.repeat(np.asarray(ids, dtype=np.int64), lengths),
            np.repeat(starts, lengths) + position,
            np.fromiter((t for c in chunks for t in c.tokens), dtype=np.int64, count=int(lengths.sum())),
            np.repeat(np.fromiter((c.offset for c in chunks), dtype=np.int64, count=len(chunks)), lengths),
        )

    @classmethod
    def from_events(cls, events: Iterable[tuple[str, int, int]]) -> "EventBatch":
        """Build a batch from ``(stream, seq, token)`` triples (offsets = -1)."""
        return cls.from_chunks([EventChunk(s, seq, (tok,)) for s, seq, tok in events])

    def select(self, index: np.ndarray) -> "EventBatch":
        """The events at ``index`` (an int or bool array), in that order."""
        return EventBatch(self.stream_names, self.stream_ids[index], self.seqs[index], self.tokens[index],
                          self.offsets[index])


@dataclass(slots=True)
class DecisionBatch:
    """Routing decisions for an :class:`EventBatch`, row ``i`` for event ``i``.

    Every decision records its provenance -- tier, fast-path table version, router id, MoE
    layer and context hash -- so it can be checked afterwards against the router and table it
    claims to come from. ``audits`` holds each decision's live-audit result (:mod:`.audit`):
    -1 not audited, 0 the table's top-k set differed from the learned router's, 1 it agreed. An
    audited decision (``audits >= 0``) keeps its tier and route but consumed a learned-router
    call at its position, like a ``learned`` one.
    """

    experts: np.ndarray  # int64 [n, k]
    weights: np.ndarray  # float32 [n, k], sum to 1 per row
    confidence: np.ndarray  # float32 [n], top-1 gate probability (or its estimate)
    entropy: np.ndarray  # float32 [n], routing entropy in nats (or its estimate)
    tiers: np.ndarray  # int8 [n], values of Tier
    ctx_hash: np.ndarray  # uint64 [n]
    table_version: int
    router_id: str
    layer: int = 0
    keys: np.ndarray | None = None  # int8 [n], values of KeyKind (None: all exact)
    audits: np.ndarray | None = None  # int8 [n], -1 / 0 / 1 (None: nothing audited)

    def __len__(self) -> int:
        return len(self.tiers)

    def audit_results(self) -> np.ndarray:
        """int8 [n]: the audit result of every decision (-1 where not audited)."""
        return self.audits if self.audits is not None else np.full(len(self.tiers), -1, np.int8)

    def key_kinds(self) -> np.ndarray:
        return self.keys if self.keys is not None else np.zeros(len(self.tiers), np.int8)

    def tier_counts(self) -> dict[str, int]:
        counts = np.bincount(self.tiers.astype(np.int64), minlength=len(Tier))
        return {label: int(counts[t]) for t, label in enumerate(TIER_LABELS)}
