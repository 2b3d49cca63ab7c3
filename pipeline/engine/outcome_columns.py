"""Routing outcomes as columns: what the stats worker, the verifier and the replays read.

:class:`Outcomes` holds one row per routed token and one :class:`LayerOutcomes` per MoE layer.
The engine's consumers (the stats refresher, the audits) work on these columns; the message
format that carries them over Kafka -- encoding and strict decoding -- is :mod:`pipeline.outcomes`,
outside the core.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .audit import router_calls
from .events import KeyKind, Tier


@dataclass(slots=True)
class LayerOutcomes:
    """One MoE layer's decisions as columns, rows aligned with :class:`Outcomes`."""

    layer: int
    experts: np.ndarray  # int64 [n, k]
    weights: np.ndarray  # float32 [n, k]
    confidence: np.ndarray  # float32 [n]
    entropy: np.ndarray  # float32 [n]
    tiers: np.ndarray  # int8 [n]
    ctx: np.ndarray  # uint64 [n]
    positions: np.ndarray  # int64 [n], the layer's governor position
    table_versions: np.ndarray  # int64 [n]
    router_ids: list[str]
    keys: np.ndarray | None = None  # int8 [n], KeyKind (None: derived from the tiers)
    audits: np.ndarray | None = None  # int8 [n], audit results -1 / 0 / 1 (None: none audited)

    _ARRAYS = ("experts", "weights", "confidence", "entropy", "tiers", "ctx", "positions", "table_versions")

    def __post_init__(self) -> None:
        if self.audits is None:
            self.audits = np.full(len(self.tiers), -1, np.int8)
        if self.keys is None:
            exact = (self.tiers == Tier.LEARNED) | (self.tiers == Tier.CACHE)
            self.keys = np.where(exact, KeyKind.EXACT, np.where(self.tiers == Tier.PRIOR, KeyKind.PRIOR,
                                                                KeyKind.TOKEN)).astype(np.int8)

    @property
    def key_kinds(self) -> np.ndarray:
        assert self.keys is not None
        return self.keys

    @property
    def audit_results(self) -> np.ndarray:
        assert self.audits is not None
        return self.audits

    def select(self, idx: np.ndarray) -> "LayerOutcomes":
        return LayerOutcomes(self.layer, **{name: getattr(self, name)[idx] for name in self._ARRAYS},
                             router_ids=[self.router_ids[i] for i in idx.tolist()], keys=self.key_kinds[idx],
                             audits=self.audit_results[idx])

    def learned(self) -> np.ndarray:
        learned: np.ndarray = self.tiers == Tier.LEARNED
        return learned

    def router_calls(self) -> np.ndarray:
        """Rows that consumed a learned-router call at their position: learned decisions and audits."""
        return router_calls(self.tiers, self.audit_results)

    @classmethod
    def concat(cls, parts: Sequence["LayerOutcomes"]) -> "LayerOutcomes":
        return cls(parts[0].layer, **{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls._ARRAYS},
                   router_ids=[r for p in parts for r in p.router_ids], keys=np.concatenate([p.key_kinds for p in parts]),
                   audits=np.concatenate([p.audit_results for p in parts]))


@dataclass(slots=True)
class Outcomes:
    """Outcomes as columns: one row per routed token, one :class:`LayerOutcomes` per layer."""

    streams: list[str]
    seqs: np.ndarray
    tokens: np.ndarray
    workers: list[str]
    layers: list[LayerOutcomes]
    prevs: np.ndarray | None = None  # int64 [n], the token before each token (-1: none or unknown)

    def __post_init__(self) -> None:
        if self.prevs is None:
            self.prevs = np.full(len(self.tokens), -1, np.int64)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @classmethod
    def empty(cls) -> "Outcomes":
        z = np.zeros(0, np.int64)
        return cls([], z, z, [], [])

    def select(self, idx: np.ndarray) -> "Outcomes":
        """The rows ``idx`` (integer indices)."""
        rows = idx.tolist()
        assert self.prevs is not None
        return Outcomes([self.streams[i] for i in rows], self.seqs[idx], self.tokens[idx],
                        [self.workers[i] for i in rows], [layer.select(idx) for layer in self.layers], self.prevs[idx])

    @classmethod
    def concat(cls, parts: Sequence["Outcomes"]) -> "Outcomes":
        """Rows of ``parts`` in order; they must all have the same layers (ValueError otherwise)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        shapes = {tuple(layer.layer for layer in p.layers) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"cannot concatenate outcomes of different layers: {sorted(shapes)}")
        return cls([s for p in parts for s in p.streams], np.concatenate([p.seqs for p in parts]),
                   np.concatenate([p.tokens for p in parts]), [w for p in parts for w in p.workers],
                   [LayerOutcomes.concat([p.layers[i] for p in parts]) for i in range(len(parts[0].layers))],
                   np.concatenate([p.prevs for p in parts if p.prevs is not None]))
