"""The fast-path table: eligibility predicate, per-pair and per-token routes, versioning.

A :class:`RoutingTable` is built from :class:`~pipeline.engine.stats.TokenStats`. It holds, for
every token with routing evidence, the token's typical route (the ``k`` experts with the most
accumulated gate weight, those weights renormalised, and the mean confidence/entropy) and, for
the (previous token, token) pairs with enough evidence (:mod:`.pairs`), the pair's typical route.

**Back-off.** An event is resolved (:meth:`RoutingTable.resolve`) to the most specific entry
there is: its pair's entry; else its token's entry; else -- a token never routed -- the
traffic-wide prior. The entry's eligibility decides whether the fast path serves the event:
a pair entry is eligible if its mean entropy is below ``pair_max_entropy``; a token entry by
the token predicate (:class:`Thresholds`); the prior never. An event that is not served goes
to the learned router; if the budget is spent it takes its entry's route anyway (budget
fallback), and only an event resolved to the prior takes the prior (tier ``prior``).

Tables are immutable values with a version number. Writers publish a new version; readers
swap their in-memory copy when the version changes. Each decision records the version it used
and which key kind served it. The byte format is in :mod:`.table_codec`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import table_kernels
from .pairs import PairRoutes, PairView
from .stats import TokenStats

DEFAULT_PAIR_CAP = 65536


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Fast-path eligibility.

    Token entries: ``(frequency > min_frequency and mean entropy < max_entropy) or token_id <
    static_below`` (the static rule only for tokens with routing evidence). Pair entries exist
    for pairs with ``>= pair_min_count`` learned observations, at most ``pair_cap`` of them (the
    most traffic first; 0 turns pairs off), and are eligible if their mean entropy is below
    ``pair_max_entropy`` (or their token is static).
    """

    min_frequency: float = 50.0
    max_entropy: float = 0.5
    static_below: int = 10
    pair_min_count: float = 3.0
    pair_max_entropy: float = 0.5
    pair_cap: int = DEFAULT_PAIR_CAP

    def __post_init__(self) -> None:
        if self.min_frequency < 0 or self.max_entropy < 0 or self.static_below < 0 or self.pair_max_entropy < 0:
            raise ValueError("fast-path thresholds must be >= 0")
        if self.pair_min_count < 1 or self.pair_cap < 0:
            raise ValueError("pair thresholds need pair_min_count >= 1 and pair_cap >= 0")

    def eligible(self, stats: TokenStats) -> np.ndarray:
        """Boolean mask over the vocabulary (token entries)."""
        evidence = stats.routed > 0
        by_stats = (stats.frequency > self.min_frequency) & (stats.mean_entropy() < self.max_entropy)
        eligible: np.ndarray = evidence & (by_stats | self.static(stats.vocab_size))
        return eligible

    def static(self, vocab_size: int) -> np.ndarray:
        static: np.ndarray = np.arange(vocab_size) < self.static_below
        return static

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (an infinite entropy bound is written as ``null``)."""
        return {name: (None if isinstance(v := getattr(self, name), float) and math.isinf(v) else v)
                for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Thresholds":
        inf = {"max_entropy", "pair_max_entropy"}
        values: dict[str, Any] = {k: (math.inf if v is None and k in inf else v) for k, v in data.items()}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Lookup:
    """How a table resolves a batch of events (rows aligned with the events)."""

    kind: np.ndarray  # int8 [n], KeyKind.PAIR / TOKEN / PRIOR
    eligible: np.ndarray  # bool [n], served by the fast path
    pair_row: np.ndarray  # int64 [n], row in the pair entries, -1 if none


@dataclass(slots=True)
class RoutingTable:
    """Per-token and per-pair routes for the fast path and the budget fallback."""

    version: int
    router_id: str
    top_k: int
    num_experts: int
    thresholds: Thresholds
    eligible: np.ndarray  # bool [V]
    known: np.ndarray  # bool [V], has routing evidence
    experts: np.ndarray  # int64 [V, k]
    weights: np.ndarray  # float32 [V, k]
    confidence: np.ndarray  # float32 [V]
    entropy: np.ndarray  # float32 [V]
    frequency: np.ndarray  # float64 [V]
    prior_experts: np.ndarray  # int64 [k]
    prior_weights: np.ndarray  # float32 [k]
    meta: dict[str, Any] = field(default_factory=dict)
    pairs: PairRoutes | None = None
    _arrays: tuple[PairRoutes, tuple[Any, ...]] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pairs is None:
            self.pairs = PairRoutes.empty(self.top_k)

    def kernel_arrays(self) -> tuple[Any, ...]:
        """The table as the compiled kernels read it (:data:`~pipeline.engine.table_kernels.TABLE_FIELDS`:
        contiguous arrays of fixed dtypes -- the table's own arrays, not copies, when they already
        are --, with the prior's confidence and entropy as scalars). Built once per pair entries
        object: a table's arrays are not replaced once it routes."""
        if self._arrays is None or self._arrays[0] is not self.pairs:
            self._arrays = (self.pair_entries, self._build_kernel_arrays())
        return self._arrays[1]

    def _build_kernel_arrays(self) -> tuple[Any, ...]:
        p, c = self.pair_entries, np.ascontiguousarray
        return (c(self.known, bool), c(self.eligible, bool), c(self.experts, np.int64), c(self.weights, np.float32),
                c(self.confidence, np.float32), c(self.entropy, np.float32), c(self.prior_experts, np.int64),
                c(self.prior_weights, np.float32), np.float32(self.prior_weights[0]),
                np.float32(np.log(self.num_experts)), p.index(), c(p.eligible, bool),
                c(p.experts, np.int16), c(p.weights, np.float32), c(p.confidence, np.float32),
                c(p.entropy, np.float32))

    @property
    def vocab_size(self) -> int:
        return len(self.eligible)

    @property
    def size(self) -> int:
        """Number of fast-path (eligible) tokens."""
        return int(self.eligible.sum())

    @property
    def pair_entries(self) -> PairRoutes:
        assert self.pairs is not None
        return self.pairs

    @property
    def nbytes(self) -> int:
        """Memory of the table's arrays (tokens and pairs)."""
        arrays = (self.eligible, self.known, self.experts, self.weights, self.confidence, self.entropy, self.frequency)
        return sum(a.nbytes for a in arrays) + self.pair_entries.nbytes

    @classmethod
    def empty(cls, vocab_size: int, num_experts: int, top_k: int, router_id: str) -> "RoutingTable":
        """Version 0: nothing eligible, uniform prior (cold start)."""
        return build_table(TokenStats(vocab_size, num_experts), Thresholds(), top_k, router_id, 0)

    def with_version(self, version: int) -> "RoutingTable":
        return replace(self, version=version)

    def resolve(self, prev: np.ndarray, tokens: np.ndarray) -> Lookup:
        """The entry of each event (pair, else token, else prior) and whether it is eligible
        (``prev``: the token before each event, -1 for none). A token outside the vocabulary
        raises IndexError."""
        kind, eligible, row = table_kernels.resolve(np.asarray(prev, np.int64), np.asarray(tokens, np.int64),
                                              self.vocab_size, self.thresholds.static_below, self.kernel_arrays())
        return Lookup(kind, eligible, row)

    def routes(self, lookup: Lookup, rows: np.ndarray, tokens: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(experts, weights, confidence, entropy) of the entries of events ``rows`` (``tokens``:
        the whole batch's tokens; ``lookup``: the batch's resolution)."""
        n, k = len(rows), self.top_k
        experts, weights = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
        conf, ent = np.empty(n, np.float32), np.empty(n, np.float32)
        table_kernels.entry_routes(np.asarray(rows, np.int64), np.arange(n), np.asarray(tokens, np.int64), lookup.pair_row,
                             self.kernel_arrays(), experts, weights, conf, ent)
        return experts, weights, conf, ent

    def fallback_routes(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(experts, weights, confidence, entropy) of the token entries of ``tokens`` (the prior for
        tokens without one)."""
        known = self.known[tokens]
        experts = np.where(known[:, None], self.experts[tokens], self.prior_experts[None, :])
        weights = np.where(known[:, None], self.weights[tokens], self.prior_weights[None, :])
        conf = np.where(known, self.confidence[tokens], self.prior_weights[0])
        ent = np.where(known, self.entropy[tokens], np.float32(np.log(self.num_experts)))
        return experts, weights.astype(np.float32), conf.astype(np.float32), ent.astype(np.float32)

    def to_bytes(self) -> bytes:
        from .table_codec import encode_table
        return encode_table(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "RoutingTable":
        from .table_codec import decode_table
        return decode_table(raw)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path, router_id: str | None = None) -> "RoutingTable":
        """The one table-file loader: the table in ``path``, checked against ``router_id`` when
        given. Every failure (missing, unreadable, not a table, another router's) is a one-line
        :class:`~pipeline.engine.table_codec.TableError` naming the file."""
        from .table_codec import TableError
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise TableError(f"no such table file: {path}") from None
        except OSError as exc:
            raise TableError(f"{path}: cannot read the table file ({exc.strerror})") from None
        try:
            table = cls.from_bytes(raw)
        except TableError as exc:
            raise TableError(f"{path}: {exc}") from None
        if router_id is not None and table.router_id != router_id:
            raise TableError(f"{path} was built for router {table.router_id}, not {router_id}")
        return table


def _top_k_routes(weight_sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row (stable tie-break: lower expert id) and normalised weights."""
    order = np.argsort(-weight_sums, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(weight_sums, order, axis=1)
    totals = top.sum(axis=1, keepdims=True)
    weights = np.divide(top, totals, out=np.full_like(top, 1.0 / k), where=totals > 0)
    return order.astype(np.int64), weights.astype(np.float32)


def build_table(
    stats: TokenStats,
    thresholds: Thresholds,
    top_k: int,
    router_id: str,
    version: int,
    meta: dict[str, Any] | None = None,
) -> RoutingTable:
    """Apply the predicate to ``stats`` and derive every known token's typical route."""
    experts, weights = _top_k_routes(stats.expert_weight, top_k)
    prior_experts, prior_weights = _top_k_routes(stats.expert_prior()[None, :], top_k)
    known = stats.routed > 0
    entropy = np.where(known, stats.mean_entropy(), 0.0)
    pairs = build_pairs(stats.pairs.view(), thresholds, top_k)
    return RoutingTable(
        version=version,
        router_id=router_id,
        top_k=top_k,
        num_experts=stats.num_experts,
        thresholds=thresholds,
        eligible=thresholds.eligible(stats),
        known=known,
        experts=experts,
        weights=weights,
        confidence=stats.mean_confidence().astype(np.float32),
        entropy=entropy.astype(np.float32),
        frequency=stats.frequency.copy(),
        prior_experts=prior_experts[0],
        prior_weights=prior_weights[0],
        meta=dict(meta or {}, tokens_observed=stats.total_frequency, tokens_routed=stats.total_routed,
                  keys=["pair", "token"] if len(pairs) else ["token"]),  # the key kinds this table resolves to
        pairs=pairs,
    )


def build_pairs(view: PairView, thresholds: Thresholds, top_k: int) -> PairRoutes:
    """The pair entries: candidates by evidence and cap, routes, eligibility by entropy."""
    rows = view.candidates(thresholds.pair_min_count, thresholds.pair_cap)
    experts, weights = _top_k_routes(view.expert_weight[rows].astype(np.float64), top_k)
    entropy = view.mean_entropy(rows)
    return PairRoutes(view.keys[rows], entropy < thresholds.pair_max_entropy, experts.astype(np.int16),
                      weights, (view.confidence_sum[rows] / view.routed[rows]).astype(np.float32),
                      entropy.astype(np.float32), view.frequency[rows].astype(np.float64))
