"""The data a routed batch passes through: the plan (first half), the result, the decision rows
being filled, and the engine's running counters (see :mod:`.engine`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audit import NOT_AUDITED
from .cache import DecisionArrays, encode_decisions
from .context import Rejection, ContextWindow
from .events import DecisionBatch, EventBatch, KeyKind, Tier

_LEARNED = int(Tier.LEARNED)  # np.full with a plain int: an enum member costs a conversion per call


@dataclass(slots=True)
class RoutePlan:
    """The pure first half of routing a batch (see :mod:`.engine`)."""

    events: EventBatch  # accepted events only
    accepted: np.ndarray  # bool over the input batch: which events were routed
    contexts: np.ndarray
    ctx_hash: np.ndarray
    keys: np.ndarray  # uint64 [n]
    unique: np.ndarray  # uint64 [u], the distinct keys looked up, in first-occurrence order
    inverse: np.ndarray  # keys[i] == unique[inverse[i]]; -1 for events not looked up
    windows: dict[str, ContextWindow]
    rejections: list[Rejection]

    @property
    def unique_keys(self) -> list[int]:
        """:attr:`unique` as Python ints (what a byte store is asked for)."""
        return self.unique.tolist()  # type: ignore[no-any-return]


@dataclass(slots=True)
class RouteResult:
    """Decisions for the accepted events, the new windows, rejections and cache writes."""

    events: EventBatch
    accepted: np.ndarray  # bool over the input batch
    position: int  # engine decision index of the first decision (the governor's clock)
    contexts: np.ndarray  # int64 [n, W], what the learned router sees for each event
    decisions: DecisionBatch
    windows: dict[str, ContextWindow]
    rejections: list[Rejection]
    write_keys: np.ndarray  # uint64 [m], confident learned decisions to write back ...
    writes: DecisionArrays | None  # ... as columns (None when m = 0)

    @property
    def cache_keys(self) -> list[int]:
        return self.write_keys.tolist()  # type: ignore[no-any-return]

    @property
    def cache_values(self) -> list[bytes]:
        """The writes packed with :func:`~pipeline.engine.cache.encode_decisions`, for a byte store."""
        w = self.writes
        return [] if w is None else encode_decisions(w.experts, w.weights, w.confidence, w.entropy)


@dataclass(slots=True)
class EngineCounters:
    """Running totals since the engine started."""

    decisions: int = 0
    tiers: np.ndarray = field(default_factory=lambda: np.zeros(len(Tier), dtype=np.int64))
    tier_keys: np.ndarray = field(default_factory=lambda: np.zeros((len(Tier), len(KeyKind)), dtype=np.int64))
    cache_lookups: int = 0
    cache_hits: int = 0
    router_calls: int = 0  # batched router calls (not rows)
    rejected: int = 0
    audits: int = 0  # fast-path decisions audited (each one learned-router call at its position)
    audit_agreed: int = 0  # of which the router's top-k set agreed


@dataclass(slots=True)
class DecisionRows:
    """A batch's decisions under construction: one row per event, filled tier by tier."""

    experts: np.ndarray
    weights: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    tiers: np.ndarray
    keys: np.ndarray
    audits: np.ndarray

    @classmethod
    def allocate(cls, n: int, k: int) -> "DecisionRows":
        return cls(np.zeros((n, k), np.int64), np.zeros((n, k), np.float32), np.zeros(n, np.float32),
                   np.zeros(n, np.float32), np.full(n, _LEARNED, np.int8), np.zeros(n, np.int8),
                   np.full(n, NOT_AUDITED, np.int8))

    def columns(self) -> tuple[np.ndarray, ...]:
        """(experts, weights, confidence, entropy, tiers, keys): the arrays the kernels fill."""
        return self.experts, self.weights, self.confidence, self.entropy, self.tiers, self.keys
