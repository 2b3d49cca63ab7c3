"""Live audits of the fast path: which decisions are audited, how a result is scored, the Wilson
interval and the ledger of results per (table version, layer). No I/O.

**What an audit is.** A table-served decision (tier ``fast``) chosen by :func:`audit_selected`
is also routed by the learned router, in the same batched router call as the batch's learned
misses. The decision served does not change (tier, experts, weights stay the table's); only its
audit result is recorded: :data:`AGREED` when the table's top-k expert SET equals the router's
(order-insensitive), :data:`DISAGREED` otherwise, :data:`NOT_AUDITED` for every other decision.

**Budget.** An audit is a learned-router call: the budget governor admits it in decision order
exactly like a learned miss (one sliding-window cap for both), and an audit it denies is simply
not made (:data:`NOT_AUDITED`). So the calls that count against the budget at a layer are the
decisions with ``tier == learned`` plus those with ``audit >= 0`` (:func:`router_calls`), each at
its own decision position. Budget-fallback and prior decisions are in the audit sample too, but
they exist only because the governor refused a router call at their position (or at the first
occurrence of their key in the batch, where every repeat of a key is decided), so their audit
is refused the same way: in practice only fast-path decisions carry audit results.

**Selection.** Deterministic and recomputable from an outcome: decision ``i`` of a layer is
audited when ``mix64(cache_key ^ mix64(position ^ AUDIT_SALT)) < audit_rate * 2**64`` -- its cache
key (context hash, token, layer) mixed with its governor position, so that every occurrence of
a context has the same chance (a frequent context is not audited at every occurrence, a rare
one not never), with bits independent of the cache key's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .events import Tier
from .hashing import mix64

NOT_AUDITED, DISAGREED, AGREED = -1, 0, 1
AUDIT_SALT = np.uint64(0xA0D17A0D17A0D175)
KEEP_AUDIT_VERSIONS = 64  # table versions whose audit counts a ledger keeps (per layer)


def audit_selected(keys: np.ndarray, positions: np.ndarray, rate: float) -> np.ndarray:
    """bool [n]: which decisions (uint64 cache ``keys`` at governor ``positions``) are in the
    audit sample of ``rate`` (0: none, 1: all)."""
    if rate <= 0.0 or len(keys) == 0:
        return np.zeros(len(keys), bool)
    if rate >= 1.0:
        return np.ones(len(keys), bool)
    h = mix64(np.asarray(keys, np.uint64) ^ mix64(np.asarray(positions).astype(np.uint64) ^ AUDIT_SALT))
    selected: np.ndarray = h < np.uint64(min(int(rate * 2.0 ** 64), 2 ** 64 - 1))
    return selected


def same_expert_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """bool [n]: row ``i`` of ``a`` and ``b`` ([n, k] expert ids) hold the same set of experts."""
    same: np.ndarray = (np.sort(a, axis=1) == np.sort(b, axis=1)).all(axis=1)
    return same


def router_calls(tiers: np.ndarray, audits: np.ndarray) -> np.ndarray:
    """bool [n]: the decisions that consumed a learned-router call at their position (the budget)."""
    calls: np.ndarray = (tiers == Tier.LEARNED) | (audits >= 0)
    return calls


def wilson(agree: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``agree / n`` (``z``: normal quantile, 1.96 = 95%).
    ``n == 0`` gives the uninformative ``(0.0, 1.0)``."""
    if n <= 0:
        return 0.0, 1.0
    p, z2 = agree / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def audit_summary(audited: int, agreed: int, z: float = 1.96) -> dict[str, Any]:
    """``{audited, agreed, agreement, low, high}``: the agreement (None without audits) and its
    Wilson interval."""
    low, high = wilson(agreed, audited, z)
    return {"audited": audited, "agreed": agreed, "agreement": agreed / audited if audited else None,
            "low": low, "high": high}


@dataclass(slots=True)
class AuditLedger:
    """Audited and agreeing decisions per (table version, layer), e.g. over a stream of outcomes.

    Only the ``keep`` highest table versions of each layer are kept."""

    keep: int = KEEP_AUDIT_VERSIONS
    counts: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # -> [audited, agreed]

    def observe(self, layer: int, versions: np.ndarray | np.integer[Any] | int, audits: np.ndarray) -> int:
        """Count the audit results ``audits`` (int8, -1 = none) of decisions of ``layer`` made under
        table ``versions`` (int [n], or one int); returns how many were audited."""
        done = audits >= 0
        if not done.any():
            return 0
        versions = np.broadcast_to(np.asarray(versions, np.int64), audits.shape)[done]
        agreed = audits[done] == AGREED
        for version in np.unique(versions).tolist():
            mine = versions == version
            row = self.counts.setdefault((int(version), layer), [0, 0])
            row[0] += int(mine.sum())
            row[1] += int(agreed[mine].sum())
        self._prune(layer)
        return int(done.sum())

    def observe_decisions(self, decisions: Iterable[Any]) -> None:
        """Count :class:`~pipeline.engine.events.DecisionBatch` objects (e.g. one per layer)."""
        for d in decisions:
            self.observe(d.layer, np.int64(d.table_version), d.audit_results())

    def _prune(self, layer: int) -> None:
        versions = sorted(v for v, lay in self.counts if lay == layer)
        for old in versions[:-self.keep]:
            del self.counts[(old, layer)]

    def rows(self, z: float = 1.96) -> list[dict[str, Any]]:
        """``{table_version, layer, audited, agreed, agreement, low, high}`` per (version, layer),
        in that order; ``agreement`` is None without audits, ``low``/``high`` the Wilson interval."""
        return [{"table_version": version, "layer": layer, **audit_summary(n, agreed, z)}
                for (version, layer), (n, agreed) in sorted(self.counts.items())]

    def to_dict(self) -> list[list[int]]:
        """JSON-safe: ``[[version, layer, audited, agreed], ...]`` (inverse of :meth:`from_dict`)."""
        return [[v, lay, n, a] for (v, lay), (n, a) in sorted(self.counts.items())]

    @classmethod
    def from_dict(cls, data: Iterable[Iterable[int]], keep: int = KEEP_AUDIT_VERSIONS) -> "AuditLedger":
        ledger = cls(keep)
        for v, lay, n, a in data:
            ledger.counts[(int(v), int(lay))] = [int(n), int(a)]
        return ledger
