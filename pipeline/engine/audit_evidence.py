"""Audits as evidence for the stats refresher: per-token audit counts, bans and their reset. No I/O.

The learned router's routing evidence stops for a token once the fast path serves it, so drift
(the router's checkpoint changed, the traffic's contexts shifted) would go unseen. Audited
decisions (:mod:`.audit`) are the fresh evidence for those tokens. The rule:

1. **Count.** Every audited decision of the layer counts for its token: ``audited += 1``, and
   ``agreed += 1`` when the router's top-k set equalled the route served -- whichever entry (the
   token's or one of its pairs') served it; a token's pair entries are judged with their token.
   Audits of decisions made under a table older than the token's last reset are ignored
   (outcomes still in flight when it was reset).
2. **Ban.** Building the next table, a token with ``audited >= MIN_AUDITS`` whose agreement is
   *confidently* below ``audit_min_agreement`` -- the upper end of its 95% Wilson interval is
   below it -- is banned: its token entry and every pair entry of it are made ineligible, so the
   token goes back to the learned router. (A point estimate over a handful of audits bans
   healthy tokens by chance -- 2 of 5 happens often at a true 60% -- and each false ban costs
   learned calls until fresh evidence rebuilds the entry; drift shows as intervals far below.)
3. **Reset.** When that table is published (as version ``v``), the banned tokens' routing
   evidence (token and pairs; not their frequency, a fact about the traffic) is cleared -- it is
   what the audits disproved -- and their audit counts restart at zero from version ``v``. Their
   entries are rebuilt from fresh learned evidence only, and later audits judge those: a token is
   never banned for good.
4. **Decay.** Other tokens' audit counts fade with the policy's ``decay`` at every publication,
   like all statistics.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .pairs import PairRoutes
from .table import RoutingTable

MIN_AUDITS = 5  # audits a token needs before its audited agreement can ban it


def wilson_high(agreed: np.ndarray, audited: np.ndarray, z: float = 1.96) -> np.ndarray:
    """float64 [V]: the upper end of each token's Wilson interval (1 where nothing was audited)."""
    n = np.maximum(audited.astype(np.float64), 1e-12)
    p = agreed / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.where(audited > 0, (centre + spread) / (1 + z * z / n), 1.0)


class TokenAudits:
    """Audited / agreeing decisions per token, and the table version from which they count."""

    def __init__(self, vocab_size: int) -> None:
        self.audited = np.zeros(vocab_size, np.float64)
        self.agreed = np.zeros(vocab_size, np.float64)
        self.since = np.zeros(vocab_size, np.int64)

    def observe(self, tokens: np.ndarray, audits: np.ndarray, versions: np.ndarray) -> int:
        """Count the audit results (-1 / 0 / 1) of decisions of ``tokens`` made under table
        ``versions``; returns the audits counted."""
        use = (audits >= 0) & (versions >= self.since[tokens])
        if not use.any():
            return 0
        v = len(self.audited)
        self.audited += np.bincount(tokens[use], minlength=v)[:v]
        self.agreed += np.bincount(tokens[use], weights=(audits[use] == 1).astype(np.float64), minlength=v)[:v]
        return int(use.sum())

    def banned(self, min_agreement: float, min_audits: float = MIN_AUDITS) -> np.ndarray:
        """bool [V]: tokens with enough audits whose Wilson upper bound is below ``min_agreement``."""
        return (self.audited >= min_audits) & (wilson_high(self.agreed, self.audited) < min_agreement)

    def reset(self, tokens: np.ndarray, version: int) -> None:
        """Restart the counts of the tokens in the mask ``tokens``, from table ``version`` on."""
        self.audited[tokens] = 0.0
        self.agreed[tokens] = 0.0
        self.since[tokens] = version

    def decay(self, factor: float) -> None:
        self.audited *= factor
        self.agreed *= factor

    def to_dict(self) -> dict[str, list[Any]]:
        """JSON-safe, only the tokens with counts or a reset (inverse of :meth:`restore`)."""
        rows = np.flatnonzero((self.audited > 0) | (self.since > 0))
        return {"tokens": rows.tolist(), "audited": self.audited[rows].tolist(), "agreed": self.agreed[rows].tolist(),
                "since": self.since[rows].tolist()}

    def restore(self, data: dict[str, list[Any]]) -> None:
        rows = np.asarray(data["tokens"], np.int64)
        self.audited[rows] = data["audited"]
        self.agreed[rows] = data["agreed"]
        self.since[rows] = data["since"]


def ban_tokens(table: RoutingTable, banned: np.ndarray) -> RoutingTable:
    """A copy of ``table`` in which the token entries of the mask ``banned`` are not eligible (their
    routes stay, for the budget fallback) and their pair entries are removed (a pair entry of a
    static token would be served whatever its eligibility); ``meta["audit_banned"]`` counts the
    banned tokens that had an entry."""
    out = table.with_version(table.version)
    out.eligible = table.eligible & ~banned
    pairs = table.pair_entries
    keep = ~banned[pairs.keys % table.vocab_size]
    out.pairs = PairRoutes(*(getattr(pairs, name)[keep] for name in PairRoutes._ARRAYS))
    out.meta = dict(table.meta, audit_banned=int((banned & table.known).sum()))
    return out
