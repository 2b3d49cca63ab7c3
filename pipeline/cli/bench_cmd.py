"""``var bench``: benchmarks that run baseline and candidate side by side and print ratios."""
from __future__ import annotations

import argparse
import sys

from pipeline.bench.engine_bench import EngineBenchConfig, bench_size, render

from .common import UserError, add_settings, print_json, settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (baseline vs VAR, same run)")
    bsub = p.add_subparsers(dest="bench_command", metavar="TARGET", required=True)
    eng = bsub.add_parser("engine", help="per-token seed routing vs batched always-learned vs VAR "
                         "(--router model: the MoE LM's always-learned path vs VAR)")
    eng.add_argument("--tokens", type=int, default=200_000, help="online tokens per run (default 200000)")
    eng.add_argument("--train-tokens", type=int, default=300_000, help="offline-phase tokens (default 300000)")
    eng.add_argument("--per-token-sample", type=int, default=2_000, help="tokens timed for the per-token loop")
    eng.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    eng.add_argument("--sizes", default="seed,large", help="router sizes: seed, large (comma-separated)")
    eng.add_argument("--json", action="store_true", help="print a JSON object with the ratios")
    eng.add_argument("--profile", action="store_true",
                     help="instead: microseconds per token of each stage of the router worker's batch path")
    eng.add_argument("--message-size", type=int, default=16, help="--profile: tokens per token message (default 16)")
    add_settings(eng, ("router", "top_k", "context_window", "seed", "device", "budget", "budget_window", "governor",
                       "train_fraction",
                       "batch_size", "cache_size", "cache_scope", "min_frequency", "max_entropy", "static_below"))
    eng.set_defaults(handler=run_engine)
    _register_pipeline(bsub)


def _register_pipeline(bsub: argparse._SubParsersAction) -> None:
    try:
        from pipeline.bench import pipeline_bench
    except ImportError:  # only where the Kafka client is not installed (e.g. a GPU box running bench engine)
        return
    from pipeline.bench import scaling_bench

    pipeline_bench.register(bsub)
    scaling_bench.register(bsub)


def run_engine(args: argparse.Namespace) -> int:
    from pipeline.assembly import is_model

    settings = settings_from(args)
    if is_model(settings):
        return _run_model(args, settings)
    sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip())
    unknown = [s for s in sizes if s not in ("seed", "large")]
    if unknown or not sizes:
        raise UserError(f"unknown router size(s) {', '.join(unknown) or '(none)'}; choose from seed, large")
    if min(args.tokens, args.train_tokens, args.per_token_sample, args.repeats) < 1:
        raise UserError("--tokens, --train-tokens, --per-token-sample and --repeats must be >= 1")
    cfg = EngineBenchConfig(args.tokens, args.train_tokens, args.per_token_sample, args.repeats, sizes)
    say = (lambda msg: print(f"bench: {msg}", file=sys.stderr)) if not args.json else (lambda msg: None)
    if args.profile:
        return _run_profile(args, settings, cfg, say)
    results = [bench_size(size, settings, cfg, say) for size in sizes]
    if args.json:
        print_json({"benchmark": "engine", "results": results,
                    "ratios": {r["size"]: r["ratio_var_vs_batched"] for r in results}})
    else:
        print(render(results))
    return 0


def _run_profile(args: argparse.Namespace, settings, cfg: EngineBenchConfig, say) -> int:
    from pipeline.bench.engine_profile import profile_size, render_profile

    if args.message_size < 1:
        raise UserError("--message-size must be >= 1")
    results = [profile_size(size, settings, cfg, args.message_size, say) for size in cfg.sizes]
    if args.json:
        print_json({"benchmark": "engine profile", "results": results})
    else:
        print(render_profile(results))
    return 0


def _run_model(args: argparse.Namespace, settings) -> int:
    from pipeline.bench.model_bench import bench_model, render_model

    if min(args.tokens, args.repeats) < 1:
        raise UserError("--tokens and --repeats must be >= 1")
    say = (lambda msg: print(f"bench: {msg}", file=sys.stderr)) if not args.json else (lambda msg: None)
    result = bench_model(settings, args.tokens, args.repeats, say)
    if args.json:
        print_json(result)
    else:
        print(render_model(result))
    return 0
