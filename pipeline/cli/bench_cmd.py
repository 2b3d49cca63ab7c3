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
    # --sizes sets the router's hidden size and experts; the bench builds its own tables
    add_settings(eng, ("train_fraction",), groups=("routing", "engine"), without=("hidden", "experts", "table_file"))
    eng.set_defaults(handler=run_engine)
    _register_pipeline(bsub)


def _register_pipeline(bsub: argparse._SubParsersAction) -> None:
    try:
        from pipeline.bench.pipeline_bench import BenchConfig
        from pipeline.bench.scaling_bench import ScalingConfig
    except ImportError:  # only where the Kafka client is not installed (e.g. a GPU box running bench engine)
        return
    p = bsub.add_parser("pipeline", help="passthrough ceiling vs always-learned vs VAR through Kafka (1 worker)")
    p.add_argument("--per-token-tokens", type=int, default=BenchConfig.per_token_tokens)
    p.add_argument("--chunked-tokens", type=int, default=BenchConfig.chunked_tokens)
    p.add_argument("--chunk-size", type=int, default=BenchConfig.chunk_size)
    p.add_argument("--latency-seconds", type=float, default=BenchConfig.latency_s)
    p.add_argument("--json", action="store_true")
    add_settings(p, ("seed", "partitions", "take_max"), groups=("services",))
    p.set_defaults(handler=run_pipeline)
    s = bsub.add_parser("scaling", help="throughput by worker count (Kafka) and cost, windows and Redis keys "
                        "by stream count")
    s.add_argument("--workers", default="1,2,4", help="router worker counts (default 1,2,4)")
    s.add_argument("--streams", default="10,1000,100000", help="stream counts (default 10,1000,100000)")
    s.add_argument("--worker-tokens", type=int, default=ScalingConfig.worker_tokens,
                   help="chunked tokens per worker-count run")
    s.add_argument("--stream-tokens", type=int, default=ScalingConfig.stream_tokens,
                   help="per-token messages per stream-count run")
    s.add_argument("--only", choices=("workers", "streams"), help="run one of the two parts")
    s.add_argument("--plot", metavar="PNG", help="also write a two-panel plot")
    s.add_argument("--json", action="store_true")
    add_settings(s, ("seed",), groups=("services",))
    s.set_defaults(handler=run_scaling)


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


def run_pipeline(args: argparse.Namespace) -> int:
    from pipeline.bench.pipeline_bench import BenchConfig, run_bench
    from pipeline.bench.pipeline_report import ratios, render

    if min(args.per_token_tokens, args.chunked_tokens, args.chunk_size) < 1 or args.latency_seconds <= 0:
        raise UserError("token counts and --chunk-size must be >= 1, --latency-seconds > 0")
    cfg = BenchConfig(args.per_token_tokens, args.chunked_tokens, args.chunk_size, args.latency_seconds)
    results = run_bench(cfg, settings_from(args), lambda msg: print(f"bench: {msg}", file=sys.stderr))
    if args.json:
        print_json({"benchmark": "pipeline", "results": results, "ratios": ratios(results)})
    else:
        print(render(results))
    return 0


def _counts(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} needs at least one count, each >= 1")
    return values


def run_scaling(args: argparse.Namespace) -> int:
    from pipeline.bench.scaling_bench import ScalingConfig, plot_scaling, render_scaling, run_scaling as scale

    if min(args.worker_tokens, args.stream_tokens) < 1:
        raise UserError("--worker-tokens and --stream-tokens must be >= 1")
    if args.plot:
        from pipeline.plot import require_matplotlib

        require_matplotlib()  # before the runs, not after them
    cfg = ScalingConfig(args.worker_tokens, args.stream_tokens, workers=_counts(args.workers, "--workers"),
                        streams=_counts(args.streams, "--streams"))
    say = (lambda msg: print(f"bench: {msg}", file=sys.stderr)) if not args.json else (lambda msg: None)
    result = scale(cfg, settings_from(args), args.only, say)
    if args.plot:
        plot_scaling(result, args.plot)
    if args.json:
        print_json({"benchmark": "scaling", **result})
    else:
        print(render_scaling(result))
    return 0
