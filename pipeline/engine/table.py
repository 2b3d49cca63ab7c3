"""The fast-path table: eligibility predicate, per-token routes, versioning and file format.

A :class:`RoutingTable` is built from :class:`~pipeline.engine.stats.TokenStats`. For every
token with routing evidence it holds the token's typical route: the ``k`` experts with the
most accumulated gate weight, those weights renormalised, and the mean confidence/entropy.
Tokens that pass the predicate (:class:`Thresholds`) are *eligible*: the fast path serves them.
The others' routes are still kept, because the budget governor falls back to them when the
learned-router budget is spent; tokens never routed fall back to the traffic-wide prior.

Tables are immutable values with a version number. Writers publish a new version; readers
swap their in-memory copy when the version changes. Each decision records the version it used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .stats import TokenStats

TABLE_FORMAT = "var-fastpath-table/1"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Fast-path eligibility: ``(frequency > min_frequency and mean entropy < max_entropy)
    or token_id < static_below`` (the static rule only for tokens with routing evidence)."""

    min_frequency: float = 50.0
    max_entropy: float = 0.5
    static_below: int = 10

    def __post_init__(self) -> None:
        if self.min_frequency < 0 or self.max_entropy < 0 or self.static_below < 0:
            raise ValueError("fast-path thresholds must be >= 0")

    def eligible(self, stats: TokenStats) -> np.ndarray:
        """Boolean mask over the vocabulary."""
        evidence = stats.routed > 0
        by_stats = (stats.frequency > self.min_frequency) & (stats.mean_entropy() < self.max_entropy)
        static = np.arange(stats.vocab_size) < self.static_below
        return evidence & (by_stats | static)


@dataclass(slots=True)
class RoutingTable:
    """Per-token routes for the fast path and the budget fallback (arrays over the vocabulary)."""

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

    @property
    def vocab_size(self) -> int:
        return len(self.eligible)

    @property
    def size(self) -> int:
        """Number of fast-path (eligible) tokens."""
        return int(self.eligible.sum())

    @classmethod
    def empty(cls, vocab_size: int, num_experts: int, top_k: int, router_id: str) -> "RoutingTable":
        """Version 0: nothing eligible, uniform prior (cold start)."""
        return build_table(TokenStats(vocab_size, num_experts), Thresholds(), top_k, router_id, 0)

    def with_version(self, version: int) -> "RoutingTable":
        clone = RoutingTable(**{f: getattr(self, f) for f in self.__slots__})  # type: ignore[arg-type]
        clone.version = version
        return clone

    def fallback_routes(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(experts, weights, confidence, entropy) for the budget fallback of ``tokens``."""
        known = self.known[tokens]
        experts = np.where(known[:, None], self.experts[tokens], self.prior_experts[None, :])
        weights = np.where(known[:, None], self.weights[tokens], self.prior_weights[None, :])
        conf = np.where(known, self.confidence[tokens], self.prior_weights[0])
        ent = np.where(known, self.entropy[tokens], np.float32(np.log(self.num_experts)))
        return experts, weights.astype(np.float32), conf.astype(np.float32), ent.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        rows = [
            [t, int(self.eligible[t]), self.experts[t].tolist(), self.weights[t].tolist(),
             float(self.confidence[t]), float(self.entropy[t]), float(self.frequency[t])]
            for t in np.flatnonzero(self.known).tolist()
        ]
        return {
            "format": TABLE_FORMAT, "version": self.version, "router_id": self.router_id,
            "vocab_size": self.vocab_size, "num_experts": self.num_experts, "top_k": self.top_k,
            "thresholds": asdict(self.thresholds), "meta": self.meta,
            "prior": {"experts": self.prior_experts.tolist(), "weights": self.prior_weights.tolist()},
            "tokens": rows,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoutingTable":
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"not a fast-path table (format {data.get('format')!r}, expected {TABLE_FORMAT!r})")
        v, k = int(data["vocab_size"]), int(data["top_k"])
        table = cls(
            int(data["version"]), str(data["router_id"]), k, int(data["num_experts"]),
            Thresholds(**data["thresholds"]), np.zeros(v, bool), np.zeros(v, bool),
            np.zeros((v, k), np.int64), np.zeros((v, k), np.float32), np.zeros(v, np.float32),
            np.zeros(v, np.float32), np.zeros(v, np.float64),
            np.asarray(data["prior"]["experts"], np.int64), np.asarray(data["prior"]["weights"], np.float32),
            dict(data.get("meta", {})),
        )
        for token, eligible, experts, weights, conf, ent, freq in data["tokens"]:
            table.known[token], table.eligible[token] = True, bool(eligible)
            table.experts[token], table.weights[token] = experts, weights
            table.confidence[token], table.entropy[token], table.frequency[token] = conf, ent, freq
        return table

    @classmethod
    def from_bytes(cls, raw: bytes) -> "RoutingTable":
        return cls.from_dict(orjson.loads(raw))

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, path: str | Path) -> "RoutingTable":
        return cls.from_bytes(Path(path).read_bytes())


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
        meta=dict(meta or {}, tokens_observed=stats.total_frequency, tokens_routed=stats.total_routed),
    )
