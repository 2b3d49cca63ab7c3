"""The budget frontier (``var frontier``): quality and learned share against the budget.

The offline statistics are collected once; then, for each budget, the per-layer tables are
calibrated to that budget and the online phase is routed with fresh engines and VAR's routing is scored by the LM (perplexity change against exact routing, per
layer top-k set match) -- with the learned share per layer that the budget allowed. The result
comes as a table, JSON and a PNG plot.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from pipeline.model.evaluate import compare_routings
from pipeline.model_replay import layer_tables, prepare, route_prepared, router_ids
from pipeline.model_report import layer_report
from pipeline.model.determinism import LayerDeterminism
from pipeline.settings import Settings
from pipeline.sources import CorpusSource

DEFAULT_BUDGETS = (0.05, 0.10, 0.15, 0.25, 0.50)


@dataclass
class FrontierPoint:
    budget: float
    perplexity_change_pct: float
    kl: float
    learned_share: list[float]  # per layer, over complete budget windows
    set_match: list[float]  # per layer
    tokens_per_s: float


def run_frontier(source: CorpusSource, settings: Settings, budgets: Sequence[float] = DEFAULT_BUDGETS,
                 progress: bool = False) -> dict[str, Any]:
    """One point per budget (see module docstring); returns a JSON-able dict."""
    prepared = prepare(source, settings)
    points, exact_ppl, tokens = [], 0.0, 0
    blank = LayerDeterminism(0.0, 0.0, 0.0, 0.0)
    for budget in budgets:
        if progress:
            print(f"frontier: budget {100 * budget:g}%", file=sys.stderr)
        run_settings = dataclasses.replace(settings, budget=budget)
        tables = layer_tables(run_settings, prepared.stats, router_ids(prepared.checkpoint),
                              prepared.checkpoint.config.top_k)
        point = dataclasses.replace(prepared, tables=tables)  # thresholds calibrated to this budget
        engine, routers, routed, routing_s, _ = route_prepared(point, run_settings, progress)
        quality = compare_routings(prepared.checkpoint.model, routed.streams,
                                   {"var": list(zip(routed.experts, routed.weights))})
        var = quality.variants["var"]
        layers = [layer_report(e, r, blank) for e, r in zip(engine.layers, routers)]
        exact_ppl, tokens = quality.exact_perplexity, quality.tokens
        points.append(FrontierPoint(budget, var.perplexity_change_pct, var.kl,
                                    [l.learned_fraction_full_windows for l in layers],
                                    [a.set_match for a in var.layers],
                                    sum(len(s) for s in routed.streams) / routing_s if routing_s else 0.0))
    return {"source": source.name, "checkpoint": prepared.checkpoint.digest, "tokens": tokens,
            "exact_perplexity": exact_ppl, "points": [dataclasses.asdict(p) for p in points]}


def render_frontier(result: dict[str, Any]) -> str:
    pts = result["points"]
    layers = len(pts[0]["learned_share"]) if pts else 0
    head = f"  {'budget':>7}{'ppl change':>12}{'KL nats':>9}" + "".join(f"{f'L{l} learned':>12}{f'L{l} set':>8}" for l in range(layers))
    rows = [f"VAR budget frontier on {result['source']} ({result['tokens']:,} tokens, exact perplexity "
            f"{result['exact_perplexity']:.2f}, checkpoint {result['checkpoint']})", head]
    for p in pts:
        cells = "".join(f"{100 * s:>11.1f}%{100 * m:>7.1f}%" for s, m in zip(p["learned_share"], p["set_match"]))
        rows.append(f"  {100 * p['budget']:>6g}%{p['perplexity_change_pct']:>+11.2f}%{p['kl']:>9.4f}{cells}")
    return "\n".join(rows)


def plot_frontier(result: dict[str, Any], path: str) -> None:
    """Perplexity change and per-layer learned share against the budget (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    budgets = [100 * p["budget"] for p in pts]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(budgets, [p["perplexity_change_pct"] for p in pts], marker="o")
    left.axhline(0, color="grey", lw=0.5)
    left.set(xlabel="learned-router budget per layer (%)", ylabel="perplexity change vs exact (%)",
             title="Quality")
    for layer in range(len(pts[0]["learned_share"]) if pts else 0):
        right.plot(budgets, [100 * p["learned_share"][layer] for p in pts], marker="o", label=f"layer {layer}")
    right.plot(budgets, budgets, color="grey", ls="--", lw=0.8, label="budget")
    right.set(xlabel="learned-router budget per layer (%)", ylabel="learned share (%)", title="Learned calls")
    right.legend()
    fig.suptitle(f"VAR budget frontier ({result['tokens']:,} held-out tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
