"""``var stats``: the offline phase as a command -- build, save and inspect fast-path tables."""
from __future__ import annotations

import argparse

from pipeline.corpus.jsonl import iter_batches
from pipeline.engine.offline import collect_statistics
from pipeline.engine.table import RoutingTable, build_table
from pipeline.replay import ReplayError, resolve_vocab, router_spec, thresholds
from pipeline.engine.routers import build_router

from .common import ROUTING_SETTINGS, UserError, add_settings, print_json, settings_from
from pipeline.sources import FileSource


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="build or show fast-path tables (the offline phase)")
    ssub = p.add_subparsers(dest="stats_command", metavar="ACTION", required=True)
    build = ssub.add_parser("build", help="route a corpus with the learned router and write a table file")
    build.add_argument("corpus", help="recorded corpus (JSON Lines)")
    build.add_argument("--out", required=True, help="table file to write (JSON)")
    build.add_argument("--version", type=int, default=1, help="version number of the table (default 1)")
    add_settings(build, ROUTING_SETTINGS + ("min_frequency", "max_entropy", "static_below", "batch_size"))
    build.set_defaults(handler=run_build)
    show = ssub.add_parser("show", help="print a table's version, size, thresholds and top tokens")
    show.add_argument("--file", required=True, help="table file")
    show.add_argument("--top", type=int, default=10, help="how many of the most frequent tokens to list")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)


def run_build(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    source = FileSource(args.corpus)
    vocab = resolve_vocab(settings, source.info().max_token)
    router = build_router(router_spec(settings, vocab), settings.device)
    stats = collect_statistics(router, iter_batches(source.chunks(vocab), settings.batch_size), settings.window)
    table = build_table(stats, thresholds(settings), settings.top_k, router.router_id, args.version,
                        {"source": args.corpus})
    table.save(args.out)
    print(f"wrote table v{table.version} to {args.out}: {table.size} fast-path tokens of {int(table.known.sum())} "
          f"seen, from {int(stats.total_frequency):,} tokens (router {router.router_id})")
    return 0


def table_summary(table: RoutingTable, top: int) -> dict[str, object]:
    order = table.frequency.argsort()[::-1][:top]
    return {
        "version": table.version, "router_id": table.router_id, "size": table.size,
        "known_tokens": int(table.known.sum()), "vocab_size": table.vocab_size,
        "thresholds": {"min_frequency": table.thresholds.min_frequency, "max_entropy": table.thresholds.max_entropy,
                       "static_below": table.thresholds.static_below},
        "meta": table.meta,
        "top_tokens": [{"token": int(t), "frequency": float(table.frequency[t]), "fast": bool(table.eligible[t]),
                        "experts": table.experts[t].tolist(), "weights": [round(w, 4) for w in table.weights[t].tolist()],
                        "entropy": round(float(table.entropy[t]), 4)} for t in order if table.known[t]],
    }


def run_show(args: argparse.Namespace) -> int:
    try:
        table = RoutingTable.load(args.file)
    except FileNotFoundError:
        raise UserError(f"no such table file: {args.file}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{args.file}: not a valid fast-path table ({exc})") from None
    summary = table_summary(table, args.top)
    if args.json:
        print_json(summary)
        return 0
    t = summary["thresholds"]
    print(f"table v{table.version} for {table.router_id}: {table.size} fast-path tokens, "
          f"{summary['known_tokens']} seen, vocab {table.vocab_size}")
    print(f"thresholds: frequency > {t['min_frequency']:g} and entropy < {t['max_entropy']:g}, or id < {t['static_below']}")
    print(f"{'token':>7}{'frequency':>12}  fast  experts        entropy")
    for row in summary["top_tokens"]:
        print(f"{row['token']:>7}{row['frequency']:>12,.0f}  {'yes ' if row['fast'] else 'no  '}  "
              f"{str(row['experts']):<14} {row['entropy']:.3f}")
    return 0
