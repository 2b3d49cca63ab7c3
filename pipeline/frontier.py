"""The budget frontier (``var frontier``): quality and learned share against the budget.

The offline statistics are collected once; then, for each fast-path key and each budget, the
per-layer tables are calibrated to that budget, the online phase is routed with fresh engines
and VAR's routing is scored by the LM (perplexity change against exact routing, per layer top-k
set match) -- with the learned share per layer that the budget allowed. The keys: ``pair``
(the (previous token, token) entry, backing off to the token's) and ``token`` (the token's entry
only, ``pair_cap = 0``). The result comes as a table, JSON and a PNG plot.
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
KEYS = ("pair", "token")


@dataclass
class FrontierPoint:
    key: str
    budget: float
    perplexity_change_pct: float
    kl: float
    learned_share: list[float]  # per layer, over complete budget windows
    set_match: list[float]  # per layer
    tokens_per_s: float


def run_frontier(source: CorpusSource, settings: Settings, budgets: Sequence[float] = DEFAULT_BUDGETS,
                 progress: bool = False, keys: Sequence[str] = KEYS) -> dict[str, Any]:
    """One point per key and budget (see module docstring); returns a JSON-able dict."""
    prepared = prepare(source, settings)
    points, exact_ppl, tokens = [], 0.0, 0
    blank = LayerDeterminism(0.0, 0.0, 0.0, 0.0)
    for key, budget in [(k, b) for k in keys for b in budgets]:
        if progress:
            print(f"frontier: {key} key, budget {100 * budget:g}%", file=sys.stderr)
        run_settings = dataclasses.replace(settings, budget=budget,
                                           pair_cap=settings.pair_cap if key == "pair" else 0)
        tables = layer_tables(run_settings, prepared.stats, router_ids(prepared.checkpoint),
                              prepared.checkpoint.config.top_k)
        point = dataclasses.replace(prepared, tables=tables)  # thresholds calibrated to this budget
        engine, routers, routed, routing_s, _ = route_prepared(point, run_settings, progress)
        quality = compare_routings(prepared.checkpoint.model, routed.streams,
                                   {"var": list(zip(routed.experts, routed.weights))})
        var = quality.variants["var"]
        layers = [layer_report(e, r, blank) for e, r in zip(engine.layers, routers)]
        exact_ppl, tokens = quality.exact_perplexity, quality.tokens
        points.append(FrontierPoint(key, budget, var.perplexity_change_pct, var.kl,
                                    [l.learned_fraction_full_windows for l in layers],
                                    [a.set_match for a in var.layers],
                                    sum(len(s) for s in routed.streams) / routing_s if routing_s else 0.0))
    return {"source": source.name, "checkpoint": prepared.checkpoint.digest, "tokens": tokens,
            "exact_perplexity": exact_ppl, "points": [dataclasses.asdict(p) for p in points]}


def render_frontier(result: dict[str, Any]) -> str:
    pts = result["points"]
    layers = len(pts[0]["learned_share"]) if pts else 0
    head = f"  {'key':<6}{'budget':>7}{'ppl change':>12}{'KL nats':>9}" + "".join(
        f"{f'L{l} learned':>12}{f'L{l} set':>8}" for l in range(layers))
    rows = [f"VAR budget frontier on {result['source']} ({result['tokens']:,} tokens, exact perplexity "
            f"{result['exact_perplexity']:.2f}, checkpoint {result['checkpoint']})", head]
    for p in pts:
        cells = "".join(f"{100 * s:>11.1f}%{100 * m:>7.1f}%" for s, m in zip(p["learned_share"], p["set_match"]))
        rows.append(f"  {p.get('key', 'token'):<6}{100 * p['budget']:>6g}%{p['perplexity_change_pct']:>+11.2f}%{p['kl']:>9.4f}{cells}")
    return "\n".join(rows)


def plot_frontier(result: dict[str, Any], path: str) -> None:
    """Perplexity change and per-layer learned share against the budget (PNG)."""
    from pipeline.plot import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in zip(KEYS, ("-", "--")):
        pts = [p for p in result["points"] if p.get("key", "token") == key]
        if not pts:
            continue
        budgets = [100 * p["budget"] for p in pts]
        left.plot(budgets, [p["perplexity_change_pct"] for p in pts], marker="o", ls=style, label=f"{key} key")
        for layer in range(len(pts[0]["learned_share"])):
            right.plot(budgets, [100 * p["learned_share"][layer] for p in pts], marker="o", ls=style,
                       color=f"C{layer}", label=f"layer {layer}" if key == KEYS[0] else None)
    left.axhline(0, color="grey", lw=0.5)
    left.axhline(1, color="grey", ls=":", lw=0.8, label="+1% goal")
    left.set(xlabel="learned-router budget per layer (%)", ylabel="perplexity change vs exact (%)",
             title="Quality: pair key (solid) vs token key (dashed)")
    left.legend()
    top = max([100 * p["budget"] for p in result["points"]] or [1.0])
    right.plot([0, top], [0, top], color="grey", ls=":", lw=0.8, label="budget")
    right.set(xlabel="learned-router budget per layer (%)", ylabel="learned share (%)", title="Learned calls")
    right.legend()
    fig.suptitle(f"VAR budget frontier ({result['tokens']:,} held-out tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
