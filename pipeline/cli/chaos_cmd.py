"""``var chaos``: fault scenarios on real Kafka, Redis and worker processes; ``--repeat`` = stress."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import UserError, add_progress_flag, add_settings, print_json, settings_from, show_progress


def register(sub: argparse._SubParsersAction) -> None:
    from pipeline.chaos.scenarios import SCENARIOS

    names = ", ".join(SCENARIOS)
    p = sub.add_parser("chaos", help="fault scenarios through the real pipeline (stress with --repeat)",
                       description=f"Scenarios: {names}. Each runs on a private Kafka and Redis with worker "
                                   "processes and checks: 0 events missing, duplicates counted, every context hash "
                                   "right, every poison message dead-lettered with its reason, no unexpected "
                                   "worker death, the run ends by itself. Exit status 1 if any run fails.")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="scenarios to run (default: all)")
    p.add_argument("--ci", action="store_true", help="the CI subset (each fault once, sizes mixed)")
    p.add_argument("--message-size", default="1,64", help="tokens per message, comma-separated (default 1,64)")
    p.add_argument("--repeat", type=int, default=1, help="run every scenario this many times (stress; default 1)")
    p.add_argument("--corpus", help="recorded corpus (default: the bundled plays, --streams interleaved)")
    p.add_argument("--events", type=int, help="at most this many held-out events (default: all)")
    p.add_argument("--streams", type=int, default=64, help="streams open at once in the default corpus (64)")
    p.add_argument("--chaos-partitions", type=int, default=8, help="token-topic partitions per run (default 8)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take (default 900)")
    p.add_argument("--work-dir", type=Path, default=Path(".var/chaos"), help="corpus cache and worker logs")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    add_progress_flag(p)
    add_settings(p, ("session_timeout_s", "log_level"), groups=("routing", "engine"))
    p.set_defaults(handler=run)
    _register_soak(sub)


def _register_soak(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="millions of tokens through router workers; RSS and windows must stay flat")
    p.add_argument("--tokens", type=int, default=10_000_000, help="tokens to route (default 10M)")
    p.add_argument("--workers", type=int, default=2, help="router worker processes (default 2)")
    p.add_argument("--message-size", type=int, default=64, help="tokens per message (default 64)")
    p.add_argument("--session-tokens", type=int, default=4096, help="tokens per stream before it ends (4096)")
    p.add_argument("--open-streams", type=int, default=64, help="streams open at any time (default 64)")
    p.add_argument("--stream-idle", type=float, default=20.0, help="VAR_STREAM_IDLE_S for the run (default 20)")
    p.add_argument("--work-dir", type=Path, default=Path(".var/chaos"), help="worker logs")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=run_soak_cmd)


def run_soak_cmd(args: argparse.Namespace) -> int:
    import tempfile

    from pipeline.chaos.services import ChaosServices
    from pipeline.chaos.soak import SoakOptions, run_soak

    if min(args.tokens, args.workers, args.message_size, args.session_tokens, args.open_streams) < 1:
        raise UserError("--tokens, --workers, --message-size, --session-tokens and --open-streams must be >= 1")
    opts = SoakOptions(tokens=args.tokens, workers=args.workers, message_size=args.message_size,
                       session_tokens=args.session_tokens, open_streams=args.open_streams,
                       stream_idle_s=args.stream_idle, work_dir=args.work_dir)
    _log_to_file(args.work_dir / "soak.log")
    with tempfile.TemporaryDirectory(prefix="var-soak-") as tmp, ChaosServices(Path(tmp)) as services:
        result = run_soak(settings_from(args).with_(log_level="info"), opts, services)
    rss, windows = result.growth_after_warmup("rss_mb"), result.growth_after_warmup("windows")
    if args.json:
        print_json({**result.__dict__, "rss_growth_after_warmup": rss, "windows_growth_after_warmup": windows})
    else:
        for s in result.samples:
            print(f"t={s['t']:7.1f}s outcomes={s['outcomes']:>10,}  rss MB {s['rss_mb']}  windows {s['windows']}")
        print(f"{result.outcomes:,} of {result.tokens:,} tokens routed in {result.seconds:.0f} s "
              f"({result.outcomes / max(result.seconds, 1e-9):,.0f} tokens/s); {result.duplicates:,} duplicates, "
              f"{result.missing:,} missing; after warm-up RSS {rss:+.1%}, windows {windows:+.1%}")
    return 0 if result.missing == 0 else 1


def _runs(args: argparse.Namespace) -> list[tuple[str, int]]:
    from pipeline.chaos.scenarios import CI_RUNS, SCENARIOS

    if args.ci:
        return list(CI_RUNS)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        raise UserError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    try:
        sizes = [int(s) for s in args.message_size.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--message-size must be comma-separated integers, got {args.message_size!r}") from None
    if not sizes or min(sizes) < 1:
        raise UserError("--message-size needs sizes >= 1")
    default = [name for name, s in SCENARIOS.items() if not s.stress_only]
    return [(name, size) for name in (args.scenarios or default) for size in sizes]


def _log_to_file(path: Path) -> None:
    """Client and step logs go to a file (a broker restart makes aiokafka log every retry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    from pipeline.chaos.runner import ChaosOptions
    from pipeline.chaos.suite import as_json, render, run_suite, stderr_say

    if args.repeat < 1 or (args.events is not None and args.events < 1) or args.streams < 1:
        raise UserError("--repeat, --events and --streams must be >= 1")
    settings = settings_from(args)
    if args.session_timeout_s is None:
        settings = settings.with_(session_timeout_s=6.0)
    if args.log_level is None:
        settings = settings.with_(log_level="info")
    opts = ChaosOptions(corpus=args.corpus, events=args.events, streams=args.streams,
                        partitions=args.chaos_partitions, timeout_s=args.timeout, work_dir=args.work_dir,
                        progress=show_progress(args))
    _log_to_file(args.work_dir / "chaos.log")
    results = run_suite(_runs(args), args.repeat, settings, opts, (lambda m: None) if args.json else stderr_say)
    if args.json:
        print_json(as_json(results))
    else:
        print(render(results))
    return 0 if all(r.ok for r in results) else 1
