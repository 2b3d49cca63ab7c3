"""The report of a replay through a real MoE LM: per-layer tiers and budget, LM quality, PASS/FAIL.

``quality_preserved`` is "VAR's perplexity is within ``quality_bound_pct`` percent of exact
routing" (default +1%); the budget checks hold per layer. A replay through Kafka (mode ``kafka``)
also carries ``completeness`` and the constraint ``complete``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.engine.audit import audit_summary
from pipeline.engine.engine import VAREngine
from pipeline.engine.events import TIER_LABELS, Tier, served_by_key
from pipeline.model.determinism import LayerDeterminism
from pipeline.model.evaluate import LMQuality, VariantQuality
from pipeline.model.router import ModelRouter
from pipeline.report import full_window_share, pct



@dataclass
class LayerReport:
    layer: int
    router_id: str
    receptive_field: int
    table_size: int
    tiers: dict[str, int]
    learned_fraction: float
    learned_fraction_full_windows: float
    max_window_learned_fraction: float
    cache_hit_rate: float
    learned_us_per_token: float
    determinism: LayerDeterminism
    budget: float  # this layer's governor cap (a share of each budget window)
    served: dict[str, dict[str, int]]  # fast / budget_fallback decisions by key kind (pair, token)
    pair_entries: int
    table_bytes: int
    audits: dict[str, Any] = field(default_factory=lambda: audit_summary(0, 0))  # live audits (engine.audit)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "determinism"}
        data["determinism"] = self.determinism.to_dict()
        return data


def layer_report(engine: VAREngine, router: ModelRouter, determinism: LayerDeterminism) -> LayerReport:
    c, ledger, window = engine.counters, engine.ledger, engine.config.budget.window
    decisions = max(1, c.decisions)
    return LayerReport(
        layer=engine.config.layer, router_id=router.router_id, receptive_field=router.spec.window,
        table_size=engine.table.size, tiers={label: int(c.tiers[t]) for t, label in enumerate(TIER_LABELS)},
        learned_fraction=int(c.tiers[Tier.LEARNED]) / decisions,
        learned_fraction_full_windows=full_window_share(ledger.block_learned, ledger.block_sizes(), window),
        max_window_learned_fraction=ledger.max_sliding / window,
        cache_hit_rate=c.cache_hits / c.cache_lookups if c.cache_lookups else 0.0,
        learned_us_per_token=1e6 * router.seconds / router.routed if router.routed else 0.0,
        determinism=determinism, budget=engine.config.budget.budget, served=served_by_key(c.tier_keys),
        pair_entries=len(engine.table.pair_entries), table_bytes=engine.table.nbytes,
        audits=audit_summary(c.audits, c.audit_agreed))


@dataclass
class ModelReplayReport:
    source: str
    checkpoint: dict[str, Any]
    tokens: int
    train_tokens: int
    budget: float
    budget_window: int
    governor: bool
    layers: list[LayerReport]
    quality: LMQuality
    quality_bound_pct: float
    routing_s: float
    wall_s: float
    timeline: list[dict[str, int]] = field(default_factory=list)
    mode: str = "embedded"
    completeness: dict[str, Any] | None = None  # --via kafka: events in, outcomes, duplicates, missing, ...

    @property
    def var(self) -> VariantQuality:
        return self.quality.variants["var"]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.routing_s if self.routing_s > 0 else 0.0

    def constraints(self) -> dict[str, bool]:
        eps = 1e-12
        checks = {
            "learned_under_budget": all(l.learned_fraction_full_windows <= l.budget + eps for l in self.layers)
            and sum(l.budget for l in self.layers) <= self.budget * len(self.layers) + eps,
            "window_cap_held": all(l.max_window_learned_fraction <= l.budget + eps for l in self.layers),
            "quality_preserved": self.var.perplexity_change_pct <= self.quality_bound_pct,
        }
        if self.completeness is not None:
            checks["complete"] = bool(self.completeness["complete"])
        return checks

    def to_dict(self, with_timeline: bool = False) -> dict[str, Any]:
        checks = self.constraints()
        data: dict[str, Any] = {
            "mode": self.mode, "router": "model", "source": self.source, "checkpoint": self.checkpoint,
            "tokens": self.tokens, "train_tokens": self.train_tokens, "budget": self.budget,
            "budget_window": self.budget_window, "governor": self.governor,
            "layers": [l.to_dict() for l in self.layers], "quality": self.quality.to_dict(),
            "quality_bound_pct": self.quality_bound_pct, "tokens_per_s": self.tokens_per_s,
            "routing_s": self.routing_s, "wall_s": self.wall_s, "constraints": checks,
            "constraints_ok": all(checks.values()),
        }
        if self.completeness is not None:
            data["completeness"] = self.completeness
        if with_timeline:
            data["timeline"] = self.timeline
        return data


_COLUMNS = ("cache", "fast pair", "fast tok", "learned", "fallback", "prior")


def _tier_shares(l: LayerReport, tokens: int) -> list[float]:
    fast = l.served["fast"]
    counts = [l.tiers["cache"], fast["pair"], fast["token"], l.tiers["learned"], l.tiers["budget_fallback"],
              l.tiers["prior"]]
    return [c / max(1, tokens) for c in counts]


def _layer_rows(report: ModelReplayReport) -> list[str]:
    head = (f"  {'layer':<6}{'field':>6}{'tokens':>7}{'pairs':>7}" + "".join(f"{c:>10}" for c in _COLUMNS)
            + f"{'budget':>8}{'learned':>9}{'max/win':>9}{'µs/tok':>8}{'top-1':>7}{'top-k set':>10}{'recall':>8}")
    rows = [head]
    for l, agree in zip(report.layers, report.var.layers):
        shares = "".join(f"{pct(s):>10}" for s in _tier_shares(l, report.tokens))
        rows.append(f"  {l.layer:<6}{l.receptive_field:>6}{l.table_size:>7}{l.pair_entries:>7}{shares}"
                    f"{pct(l.budget):>8}{pct(l.learned_fraction_full_windows):>9}{pct(l.max_window_learned_fraction):>9}"
                    f"{l.learned_us_per_token:>8.0f}{pct(agree.top1):>7}{pct(agree.set_match):>10}"
                    f"{pct(agree.recall):>8}")
    return rows


def learned_over_time(report: ModelReplayReport, parts: int = 8) -> list[list[float]]:
    """Per layer, the learned share of each of ``parts`` equal spans of the timeline."""
    points = report.timeline
    if not points:
        return []
    total = points[-1]["tokens"]
    bounds = [round(total * i / parts) for i in range(parts + 1)]
    out = []
    for layer in range(len(report.layers)):
        key = f"learned_l{layer}"
        cumulative = [(0, 0)] + [(p["tokens"], p[key]) for p in points]
        at = [max((c for c in cumulative if c[0] <= b), key=lambda c: c[0]) for b in bounds]
        out.append([(b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else 0.0 for a, b in zip(at, at[1:])])
    return out


def render_text(report: ModelReplayReport) -> str:
    q, ck = report.quality, report.checkpoint
    lines = [f"VAR {report.mode} replay of {report.source}",
             f"  model    {ck['n_layer']} MoE layers x {ck['n_experts']} experts, top-{ck['top_k']}, attention window "
             f"{ck['attn_window']} (checkpoint {ck['sha256']})",
             f"  tokens   {report.tokens:,} routed in {report.routing_s:.1f} s = {report.tokens_per_s:,.0f} tokens/s"
             f" (offline split: {report.train_tokens:,} tokens); budget {pct(report.budget)} per layer and per "
             f"{report.budget_window:,} decisions", ""]
    lines += _layer_rows(report)
    lines += ["", f"  {'routing':<22}{'perplexity':>11}{'change':>9}{'KL nats':>9}{'greedy':>8}"]
    lines.append(f"  {'exact':<22}{q.exact_perplexity:>11.2f}")
    for name, v in q.variants.items():
        lines.append(f"  {name:<22}{v.perplexity:>11.2f}{v.perplexity_change_pct:>+8.2f}%{v.kl:>9.4f}"
                     f"{pct(v.greedy_agreement):>8}")
    lines += ["", "  token-id determinism (top-1): " + "; ".join(
        f"L{l.layer} {pct(l.determinism.determined_share)} of traffic >=95%, H {l.determinism.h_expert_given_token:.2f}"
        f"/{l.determinism.h_expert:.2f} nats" for l in report.layers)]
    if any(l.audits["audited"] for l in report.layers):
        lines.append("  live audits (fast path vs learned router, top-k set, 95% Wilson): " + "; ".join(
            f"L{l.layer} {pct(l.audits['agreement'] or 0)} [{pct(l.audits['low'])}, {pct(l.audits['high'])}] of "
            f"{l.audits['audited']:,}" for l in report.layers))
    if report.timeline:
        spans = learned_over_time(report)
        versions = sorted({p.get("table_version", 1) for p in report.timeline})
        lines.append(f"  learned share over time ({len(spans[0])} equal spans; table sets v{versions[0]}.."
                     f"v{versions[-1]}): " + "; ".join(f"L{l} " + " ".join(f"{100 * v:.0f}%" for v in shares)
                                                         for l, shares in enumerate(spans)))
    if report.completeness is not None:
        c = report.completeness
        lines.append(f"  completeness {c['events_in']:,} events in, {c['outcomes_out']:,} distinct outcomes, "
                     f"{c['duplicates']} duplicates, {c['missing']} missing, {c['deadletters']} dead letters, "
                     f"{c['context_mismatches']} context mismatches, {len(c.get('worker_exits', []))} worker exits")
    checks = report.constraints()
    lines.append("  constraints  " + ", ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in checks.items())
                 + f" (perplexity bound +{report.quality_bound_pct:g}%) => {'PASS' if all(checks.values()) else 'FAIL'}")
    return "\n".join(lines)
