"""``var frontier``: sweep the learned-router budget; perplexity change and learned share per layer."""
from __future__ import annotations

import argparse

from pipeline.sources import FileSource, TextSource

from .common import UserError, add_progress_flag, add_settings, print_json, settings_from, \
    show_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frontier", help="budget sweep through the MoE LM: perplexity and learned share (table, JSON, PNG)")
    p.add_argument("path", nargs="?", help="recorded corpus (default: the held-out works)")
    p.add_argument("--budgets", default="0.05,0.10,0.15,0.25,0.50", help="comma-separated budgets (shares, 0-1)")
    p.add_argument("--plot", metavar="PNG", help="draw the frontier to this PNG")
    p.add_argument("--json", action="store_true")
    # a model router (its checkpoint fixes the rest of the routing group); --budgets replaces --budget
    add_settings(p, ("router", "device", "train_fraction", "quality_bound_pct"), groups=("engine",),
                 without=("budget",))
    add_progress_flag(p)
    p.set_defaults(handler=run)


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--budgets must be comma-separated numbers, got {text!r}") from None
    if not budgets or any(not 0 <= b <= 1 for b in budgets):
        raise UserError("--budgets must be shares within [0, 1], e.g. 0.05,0.15,0.5")
    return sorted(budgets)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from pipeline.assembly import is_model
    from pipeline.frontier import plot_frontier, render_frontier, run_frontier
    from pipeline.plot import require_matplotlib

    budgets = parse_budgets(args.budgets)
    if args.plot:
        require_matplotlib()  # before the sweep (minutes), not after it
    settings = settings_from(args)
    if args.router is None:
        settings = dataclasses.replace(settings, router="model")
    if not is_model(settings):
        raise UserError("the frontier is measured on a model router (--router model or model:PATH)")
    source = FileSource(args.path) if args.path else TextSource()
    result = run_frontier(source, settings, budgets, progress=show_progress(args))
    if args.plot:
        plot_frontier(result, args.plot)
    if args.json:
        print_json(result)
    else:
        print(render_frontier(result))
    return 0
