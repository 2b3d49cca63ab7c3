"""Replay reports: the numbers, the PASS/FAIL of VAR's constraints, and their renderings.

The same :class:`ReplayReport` is produced by the embedded replay and by the replay through
Kafka (which adds a completeness section), so the two can be compared field by field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from pipeline.engine.events import TIER_LABELS
from pipeline.quality import QualityResult

QUALITY_BOUND_PCT = 5.0
TIMING_FIELDS = ("tokens_per_s", "routing_s", "wall_s")


def full_window_share(block_learned: list[int], block_sizes: list[int], window: int) -> float:
    """Learned share over the complete budget windows (all blocks if none is complete)."""
    full = [learned for learned, size in zip(block_learned, block_sizes) if size == window]
    if not full:
        return sum(block_learned) / window
    return sum(full) / (window * len(full))


@dataclass
class ReplayReport:
    """Everything a replay measured. ``tiers`` maps tier label -> decisions."""

    source: str
    mode: str
    router: dict[str, Any]
    table: dict[str, Any]
    tokens: int
    train_tokens: int
    tiers: dict[str, int]
    cache_lookups: int
    learned_calls: int
    budget: float
    budget_window: int
    governor: bool
    max_window_learned: int
    window_learned: list[int]
    window_sizes: list[int]
    quality: QualityResult
    routing_s: float
    wall_s: float
    timeline: list[dict[str, int]] = field(default_factory=list)
    completeness: dict[str, Any] | None = None

    @property
    def learned_fraction(self) -> float:
        return self.tiers.get("learned", 0) / self.tokens if self.tokens else 0.0

    @property
    def budgeted_learned_fraction(self) -> float:
        """Learned share over the complete budget windows (the whole run if there is none).

        The governor caps every window of ``budget_window`` consecutive decisions, so this share
        is at most the budget; the overall share can exceed it by up to cap/decisions because
        of the run's last, partial window.
        """
        return full_window_share(self.window_learned, self.window_sizes, self.budget_window)

    @property
    def cache_hit_rate(self) -> float:
        return self.tiers.get("cache", 0) / self.cache_lookups if self.cache_lookups else 0.0

    @property
    def max_window_learned_fraction(self) -> float:
        return self.max_window_learned / self.budget_window

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.routing_s if self.routing_s > 0 else 0.0

    def constraints(self) -> dict[str, bool]:
        checks = {
            "learned_under_budget": self.budgeted_learned_fraction <= self.budget + 1e-12,
            "window_cap_held": self.max_window_learned_fraction <= self.budget + 1e-12,
            "quality_preserved": self.quality.task_loss_diff_pct <= QUALITY_BOUND_PCT,
        }
        if self.completeness is not None:
            checks["complete"] = bool(self.completeness.get("complete", False))
        return checks

    def to_dict(self, with_timeline: bool = False) -> dict[str, Any]:
        constraints = self.constraints()
        data: dict[str, Any] = {
            "mode": self.mode,
            "source": self.source,
            "tokens": self.tokens,
            "train_tokens": self.train_tokens,
            "tiers": {label: int(self.tiers.get(label, 0)) for label in TIER_LABELS},
            "learned_fraction": self.learned_fraction,
            "learned_fraction_full_windows": self.budgeted_learned_fraction,
            "max_window_learned_fraction": self.max_window_learned_fraction,
            "window_learned_fractions": [c / self.budget_window for c in self.window_learned],
            "budget": self.budget,
            "budget_window": self.budget_window,
            "governor": self.governor,
            "cache_hit_rate": self.cache_hit_rate,
            "learned_router_calls": self.learned_calls,
            "agreement_top1": self.quality.agreement_top1,
            "topk_overlap": self.quality.topk_overlap,
            "quality": self.quality.to_dict(),
            "router": self.router,
            "table": self.table,
            "tokens_per_s": self.tokens_per_s,
            "routing_s": self.routing_s,
            "wall_s": self.wall_s,
            "constraints": constraints,
            "constraints_ok": all(constraints.values()),
        }
        if self.completeness is not None:
            data["completeness"] = self.completeness
        if with_timeline:
            data["timeline"] = self.timeline
        return data


def pct(x: float) -> str:
    """A share as a percentage with one decimal (``0.123`` -> ``"12.3%"``)."""
    return f"{100 * x:.1f}%"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def render_text(report: ReplayReport) -> str:
    """A human-readable summary table."""
    q, t = report.quality, report.table
    lines = [
        f"VAR {report.mode} replay of {report.source}",
        f"  router   {report.router['id']} on {report.router.get('device', 'cpu')}",
        f"  table    v{t['version']}: {t['size']} fast-path tokens ({t['source']})",
        f"  tokens   {report.tokens:,} routed in {report.routing_s:.2f} s = {report.tokens_per_s:,.0f} tokens/s"
        f" (training split: {report.train_tokens:,} tokens)",
        "",
        f"  {'tier':<16}{'decisions':>12}{'share':>9}",
    ]
    for label in TIER_LABELS:
        count = report.tiers.get(label, 0)
        share = count / report.tokens if report.tokens else 0.0
        lines.append(f"  {label:<16}{count:>12,}{pct(share):>9}")
    lines += [
        "",
        f"  cache hit rate     {pct(report.cache_hit_rate)}",
        f"  learned share      {pct(report.learned_fraction)} overall, {pct(report.budgeted_learned_fraction)}"
        f" over complete windows (budget {pct(report.budget)}, governor {'on' if report.governor else 'off'})",
        f"  max per window     {pct(report.max_window_learned_fraction)} of any {report.budget_window:,}"
        f" consecutive decisions ({len(report.window_learned)} blocks)",
        f"  agreement          top-1 {pct(q.agreement_top1)}, top-k overlap {pct(q.topk_overlap)}",
        f"  MoE layer          relative output error {pct(q.moe_rel_error)} on {q.sample_events:,} events",
        f"  task loss          {q.task_loss_var:.4f} VAR vs {q.task_loss_exact:.4f} exact"
        f" ({q.task_loss_diff_pct:+.2f}%, bound +{QUALITY_BOUND_PCT:g}%)",
    ]
    if report.completeness is not None:
        c = report.completeness
        lines.append(f"  completeness       {c['events_in']:,} in, {c['outcomes_out']:,} out, "
                     f"{c['duplicates']:,} duplicates, {c['missing']:,} missing, "
                     f"{c.get('context_mismatches', 0):,} wrong contexts, {c['deadletters']:,} dead letters, "
                     f"{len(c.get('worker_exits', [])):,} workers exited unexpectedly")
    checks = report.constraints()
    lines.append("  constraints        " + ", ".join(f"{name} {_verdict(ok)}" for name, ok in checks.items())
                 + f" => {_verdict(all(checks.values()))}")
    return "\n".join(lines)
