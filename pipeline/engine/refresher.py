"""The stats refresher's core: learn from routing outcomes, rebuild the fast-path table (no I/O).

The stats worker (``workers/stats_worker.py``) feeds it outcomes consumed from Kafka and
publishes the tables it builds; the embedded replay can drive the same object in-process
(:func:`embedded_hook`). Everything here is deterministic given the inputs and the clock.

**No self-confirmation.** Frequency counts every outcome -- how often a token occurs is a fact
about the traffic, whichever tier served it. Routing evidence (entropy, confidence, the expert
distribution) comes only from outcomes with ``tier == learned``: fast-path and budget-fallback
decisions are copies of the table itself, and counting them would make the table confirm its
own guesses (a token once on the fast path would look ever more certain). Cache hits are exact
learned decisions, but only the confident ones are cached, so counting them would bias the
entropy downwards; they are left out too. The learned sample is therefore biased the *other*
way (confident repeated contexts are served by the cache), which only makes the predicate more
cautious. A token on the fast path stops receiving new evidence; its entry keeps the evidence
gathered before (with decay, that evidence fades, see :mod:`pipeline.engine.adaptive`).
**Audits** are the exception, and the fresh evidence for fast-path tokens: a token whose
audited agreement falls below ``audit_min_agreement`` is dropped from the next table, and its
disproved evidence is cleared once that table is out (:mod:`.audit_evidence` has the rule). The
refresher also keeps the audit results per table version (:class:`~.audit.AuditLedger`).
Outcomes of another router (``router_id``) or out of range for this vocabulary are rejected by
:meth:`StatsRefresher.check`. A refresher learns ONE layer's table (``check``/``observe`` read
that layer of each outcome); :mod:`.layered_refresher` runs one per MoE layer.

**Bounded memory.** :class:`~pipeline.engine.stats.TokenStats` is O(vocab x experts) whatever
the traffic; ``decay`` multiplies it at every refresh, so evidence older than about
``every / (1 - decay)`` outcomes has little weight. Per-version tier counts keep the last
:data:`KEEP_VERSIONS` versions only.

**When to refresh.** After ``every`` outcomes, or ``interval_s`` seconds (injectable clock) if
at least one outcome arrived since the last refresh.

**Snapshots.** :meth:`StatsRefresher.snapshot` serialises the statistics together with the next
offset of every outcome partition they include, so a restarted worker seeks there and counts
nothing twice and nothing not at all.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from .adaptive import AdaptiveChoice, Prediction, choose_thresholds, predict
from .audit import AuditLedger
from .audit_evidence import TokenAudits, ban_tokens
from .events import TIER_LABELS, Tier
from .pairs import previous_tokens, stats_pair_cap
from .route_types import RouteResult
from .snapshot import encode_snapshot
from .snapshot import SnapshotError as SnapshotError, read_snapshot as read_snapshot  # re-exported
from .snapshot import version_report as version_report  # re-exported
from .stats import TokenStats
from .table import RoutingTable, Thresholds, build_table

if TYPE_CHECKING:  # the message format lives outside the core; only its columns are used here
    from .outcome_columns import Outcomes

KEEP_VERSIONS = 64
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh, how fast to forget, which predicate (fixed, or adaptive to a target), and
    the audited agreement below which a token leaves the table."""

    every: int = 20000
    interval_s: float = 10.0
    decay: float = 1.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    adaptive_target: float | None = None  # None: the fixed thresholds
    audit_min_agreement: float = 0.5

    def __post_init__(self) -> None:
        if self.every < 1 or self.interval_s <= 0 or not 0.0 < self.decay <= 1.0:
            raise ValueError("refresh policy needs every >= 1, interval_s > 0 and decay in (0, 1]")
        if not 0.0 <= self.audit_min_agreement <= 1.0:
            raise ValueError("audit min agreement must be within [0, 1]")
        if self.adaptive_target is not None and not 0.0 <= self.adaptive_target <= 1.0:
            raise ValueError("adaptive target must be within [0, 1]")


@dataclass(slots=True)
class Refresh:
    """A table built from the statistics, with its thresholds' prediction (not yet published)."""

    table: RoutingTable
    prediction: Prediction
    choice: AdaptiveChoice | None
    banned: np.ndarray | None = None  # bool [V]: tokens dropped for their audits (None: none)


def refresh_table(stats: TokenStats, policy: RefreshPolicy, top_k: int, router_id: str, version: int,
                  meta: dict[str, Any] | None = None, banned: np.ndarray | None = None) -> Refresh:
    """Choose the thresholds (fixed or adaptive) and build the table -- the offline ``var stats
    build`` and the online refresher share this function. ``banned`` (bool [V]): tokens dropped
    for their live audits (:func:`~.audit_evidence.ban_tokens`); the thresholds are chosen and
    the prediction made for the table without them."""
    banned = banned if banned is not None and banned.any() else None
    fixed = policy.thresholds
    choice = None
    if policy.adaptive_target is not None:
        choice = choose_thresholds(stats, policy.adaptive_target, fixed, banned=banned)
    thresholds = choice.thresholds if choice else fixed
    prediction = choice.prediction if choice else predict(stats, thresholds, banned)
    info = dict(meta or {}, **prediction.to_meta(), **(choice.to_meta() if choice else {}))
    table = build_table(stats, thresholds, top_k, router_id, version, info)
    return Refresh(table if banned is None else ban_tokens(table, banned), prediction, choice, banned)


@dataclass(slots=True)
class RefreshCounters:
    """Running totals (persisted in the snapshot, so they survive restarts)."""

    outcomes: int = 0  # outcome rows (tokens) counted as traffic
    learned: int = 0  # of which used as routing evidence
    refreshes: int = 0  # tables published
    last_version: int = 0
    since_refresh: int = 0


class StatsRefresher:
    """Accumulates outcomes into :class:`TokenStats` and builds new tables (module docstring)."""

    def __init__(self, vocab_size: int, num_experts: int, top_k: int, router_id: str,
                 policy: RefreshPolicy = RefreshPolicy(), clock: Clock = time.monotonic) -> None:
        self.stats = TokenStats(vocab_size, num_experts, stats_pair_cap(policy.thresholds.pair_cap))
        self.top_k, self.router_id, self.policy, self.clock = top_k, router_id, policy, clock
        self.offsets: dict[int, int] = {}
        self.counters = RefreshCounters()
        self.observed: dict[int, np.ndarray] = {}  # table version -> outcomes per tier under it
        self.predicted: dict[int, float] = {}  # table version -> predicted learned share
        self.audits = TokenAudits(vocab_size)
        self.audit_ledger = AuditLedger()
        self._last_refresh = clock()
        self._not_before = -math.inf

    # --- input ---------------------------------------------------------------------------
    def check(self, outcomes: "Outcomes", layer: int = 0) -> str | None:
        """Why ``layer``'s decisions in these outcomes (one decoded message) cannot be counted
        here, or None."""
        if layer >= outcomes.num_layers:
            return f"no layer {layer} in the outcome (it has {outcomes.num_layers})"
        d = outcomes.layers[layer]
        if any(r != self.router_id for r in set(d.router_ids)):
            return f"router id {d.router_ids[0]!r} is not this worker's {self.router_id!r}"
        s = self.stats
        if len(outcomes.tokens) and int(outcomes.tokens.max()) >= s.vocab_size:
            return f"token {int(outcomes.tokens.max())} outside the vocabulary ({s.vocab_size})"
        if d.experts.shape[1:] != (self.top_k,):
            return f"experts per token {d.experts.shape[1:]} is not top-k {self.top_k}"
        if d.experts.size and not (0 <= d.experts.min() and d.experts.max() < s.num_experts):
            return f"expert ids outside [0, {s.num_experts})"
        numbers = (d.weights, d.confidence, d.entropy)
        if not all(np.isfinite(a).all() and (a >= 0).all() for a in numbers):
            return "weights, confidence and entropy must be finite and >= 0"
        return None

    def observe(self, outcomes: "Outcomes", layer: int = 0) -> int:
        """Count ``layer``'s decisions of checked :class:`~pipeline.outcomes.Outcomes`; returns the
        rows used as evidence."""
        d = outcomes.layers[layer]
        self._audited(layer, outcomes.tokens, d.audit_results, d.table_versions)
        return self._accumulate(outcomes.tokens, outcomes.prevs, d.tiers, d.experts, d.weights, d.confidence,
                                d.entropy, d.table_versions)

    def observe_result(self, result: RouteResult) -> int:
        """Count an engine result directly (the in-process loop)."""
        d = result.decisions
        versions = np.full(len(d.tiers), d.table_version, np.int64)
        self._audited(d.layer, result.events.tokens, d.audit_results(), versions)
        return self._accumulate(result.events.tokens, previous_tokens(result.contexts), d.tiers, d.experts,
                                d.weights, d.confidence, d.entropy, versions)

    def _accumulate(self, tokens: np.ndarray, prev: np.ndarray | None, tiers: np.ndarray, experts: np.ndarray,
                    weights: np.ndarray, confidence: np.ndarray, entropy: np.ndarray, versions: np.ndarray) -> int:
        learned = tiers == Tier.LEARNED
        self.stats.observe(tokens, prev, learned, experts, weights, confidence, entropy)
        self._count_tiers(tiers, versions)
        n, used = len(tokens), int(learned.sum())
        self.counters.outcomes += n
        self.counters.learned += used
        self.counters.since_refresh += n
        return used

    def _audited(self, layer: int, tokens: np.ndarray, audits: np.ndarray, versions: np.ndarray) -> None:
        self.audits.observe(tokens, audits, versions)
        self.audit_ledger.observe(layer, versions, audits)

    def _count_tiers(self, tiers: np.ndarray, versions: np.ndarray) -> None:
        for version in np.unique(versions).tolist():
            counts = np.bincount(tiers[versions == version].astype(np.int64), minlength=len(TIER_LABELS))
            self.observed[version] = self.observed.get(version, 0) + counts
        for old in sorted(self.observed)[:-KEEP_VERSIONS]:
            del self.observed[old]

    def advance(self, offsets: Mapping[int, int]) -> None:
        """Record the next offset to read per partition (everything before it is counted)."""
        self.offsets.update({int(p): int(o) for p, o in offsets.items()})

    # --- refresh -------------------------------------------------------------------------
    def due(self) -> bool:
        now = self.clock()
        since = self.counters.since_refresh
        if now < self._not_before or since == 0:
            return False
        return since >= self.policy.every or now - self._last_refresh >= self.policy.interval_s

    def build(self) -> Refresh:
        """The next table from the current statistics (pure; nothing changes until published)."""
        c = self.counters
        return refresh_table(self.stats, self.policy, self.top_k, self.router_id, c.last_version + 1,
                             {"source": "stats refresher", "outcomes": c.outcomes, "learned_outcomes": c.learned},
                             self.audits.banned(self.policy.audit_min_agreement))

    def published(self, refresh: Refresh, version: int) -> None:
        """The table went out as ``version``: remember the prediction, clear the evidence of the tokens
        it dropped for their audits, decay, restart the timer."""
        c = self.counters
        c.refreshes += 1
        c.last_version = max(c.last_version, version)
        c.since_refresh = 0
        self.predicted[version] = refresh.prediction.learned_share
        for old in sorted(self.predicted)[:-KEEP_VERSIONS]:
            del self.predicted[old]
        if refresh.banned is not None:
            self.stats.forget_routing(refresh.banned)
            self.audits.reset(refresh.banned, version)
        if self.policy.decay < 1.0:
            self.stats.decay(self.policy.decay)
            self.audits.decay(self.policy.decay)
        self._last_refresh = self.clock()

    def postpone(self) -> None:
        """Publishing failed: try again after ``interval_s``."""
        self._not_before = self.clock() + self.policy.interval_s

    def report(self) -> list[dict[str, Any]]:
        """Per table version: predicted learned share vs the tier mix observed under it."""
        return version_report(self.observed, self.predicted)

    # --- persistence ---------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Statistics + offsets + counters as bytes (inverse of :meth:`restore`)."""
        return encode_snapshot({
            "router_id": self.router_id, "vocab_size": self.stats.vocab_size,
            "num_experts": self.stats.num_experts, "offsets": {str(p): o for p, o in self.offsets.items()},
            "counters": asdict(self.counters), "observed": {str(v): c.tolist() for v, c in self.observed.items()},
            "predicted": {str(v): s for v, s in self.predicted.items()},
            "audits": self.audits.to_dict(), "audit_ledger": self.audit_ledger.to_dict(),
        }, self.stats)

    def restore(self, raw: bytes) -> None:
        """Continue from a snapshot of the same router and shape; raises :class:`SnapshotError`."""
        header, stats = read_snapshot(raw)
        if header["router_id"] != self.router_id:
            raise SnapshotError(f"snapshot is for router {header['router_id']}, not {self.router_id}")
        if (stats.vocab_size, stats.num_experts) != (self.stats.vocab_size, self.stats.num_experts):
            raise SnapshotError(f"snapshot has vocab {stats.vocab_size} x {stats.num_experts} experts, "
                                f"expected {self.stats.vocab_size} x {self.stats.num_experts}")
        self.stats = stats
        self.offsets = {int(p): int(o) for p, o in header["offsets"].items()}
        self.counters = RefreshCounters(**header["counters"])
        self.observed = {int(v): np.asarray(c, np.int64) for v, c in header["observed"].items()}
        self.predicted = {int(v): float(s) for v, s in header["predicted"].items()}
        self.audits = TokenAudits(stats.vocab_size)
        if "audits" in header:  # snapshots before live audits have none
            self.audits.restore(header["audits"])
        self.audit_ledger = AuditLedger.from_dict(header.get("audit_ledger", []))


def embedded_hook(refresher: StatsRefresher) -> Callable[[RouteResult], RoutingTable | None]:
    """An ``on_batch`` hook for :func:`pipeline.replay.run_replay` / a bare engine loop: observe
    every result and, when due, return the next table (version = last + 1)."""
    def on_batch(result: RouteResult) -> RoutingTable | None:
        refresher.observe_result(result)
        if not refresher.due():
            return None
        refresh = refresher.build()
        refresher.published(refresh, refresh.table.version)
        return refresh.table
    return on_batch
