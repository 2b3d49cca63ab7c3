"""``var stats``: the fast-path statistics -- offline (``build``), online (``worker``) and ``show``.

* ``var stats build CORPUS [--out FILE] [--publish] [--seed-stats]`` -- the offline phase: route the
  corpus with the learned router, build the table with the same code as the stats worker
  (:func:`pipeline.engine.refresher.refresh_table`, ``--adaptive`` included), write it to a file
  and/or publish it to Redis as a new version; ``--seed-stats`` also stores the statistics as the
  stats worker's starting point (only if it has none yet).
* ``var stats worker`` -- the stats refresher (``workers/stats_worker.py``).
* ``var stats show [--file FILE] [--layer L]`` -- version, size, thresholds and top tokens of a table
  file, or of layer ``L``'s table in the table set currently published in Redis (plus the stats
  worker's snapshot of that layer there, and the live audits of every layer it counted: per table
  version and layer, the fast path's audited agreement with its Wilson interval).
"""
from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pipeline.corpus.jsonl import iter_batches
from pipeline.engine.audit import AuditLedger
from pipeline.engine.offline import collect_statistics
from pipeline.engine.pairs import stats_pair_cap
from pipeline.engine.layered_refresher import read_layer_snapshots
from pipeline.engine.refresher import SnapshotError, refresh_table, version_report
from pipeline.engine.routers import build_router
from pipeline.engine.table import RoutingTable
from pipeline.assembly import router_spec
from pipeline.replay import resolve_vocab
from pipeline.settings import Settings, redact_url
from pipeline.sources import FileSource
from pipeline.stream.kafka_access import KafkaAccess

from .common import STATS_WORKER, UserError, add_settings, print_json, settings_from

SHOW_VERSIONS = 5  # table versions whose predicted vs observed learned share `show` lists
BUILD_GROUPS = ("routing", "budgeting", "tables", "redis")  # the offline phase of the stats worker, and publishing

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="fast-path statistics: build a table offline, run the refresher, show tables")
    ssub = p.add_subparsers(dest="stats_command", metavar="ACTION", required=True)
    build = ssub.add_parser("build", help="route a corpus with the learned router; write and/or publish a table")
    build.add_argument("corpus", help="recorded corpus (JSON Lines)")
    build.add_argument("--out", help="table file to write (JSON)")
    build.add_argument("--publish", action="store_true", help="publish the table to Redis as a new version")
    build.add_argument("--seed-stats", action="store_true",
                       help="with --publish: store the statistics as the stats worker's start (if it has none)")
    build.add_argument("--version", type=int, default=1, help="version number in the file (default 1)")
    add_settings(build, ("batch_size",), groups=BUILD_GROUPS)
    build.set_defaults(handler=run_build)
    worker = ssub.add_parser("worker", help="run the stats refresher: outcomes topic -> new table versions")
    add_settings(worker, groups=STATS_WORKER)
    worker.set_defaults(handler=run_worker)
    show = ssub.add_parser("show", help="print a table's version, size, thresholds and top tokens")
    show.add_argument("--file", help="table file (default: the current table in Redis)")
    show.add_argument("--top", type=int, default=10, help="how many of the most frequent tokens to list")
    show.add_argument("--layer", type=int, default=0, help="MoE layer of the published table set (default 0)")
    show.add_argument("--json", action="store_true")
    add_settings(show, groups=("routing", "redis"))
    show.set_defaults(handler=run_show)


# --- build -------------------------------------------------------------------------------
def run_build(args: argparse.Namespace) -> int:
    if not args.out and not args.publish:
        raise UserError("give --out FILE and/or --publish")
    if args.seed_stats and not args.publish:
        raise UserError("--seed-stats needs --publish")
    from pipeline.table_sets import publish_table_and_stats, refresh_policy

    settings = settings_from(args)
    source = FileSource(args.corpus)
    vocab = settings.vocab_size or resolve_vocab(settings, source.info().max_token)
    settings = settings.with_(vocab_size=vocab)
    router = build_router(router_spec(settings, vocab), settings.device)
    stats = collect_statistics(router, iter_batches(source.chunks(vocab), settings.batch_size), settings.context_window,
                               pair_cap=stats_pair_cap(settings.pair_cap))
    refresh = refresh_table(stats, refresh_policy(settings), settings.top_k, router.router_id, args.version,
                            {"source": args.corpus})
    table = refresh.table
    summary = (f"{table.size} fast-path tokens of {int(table.known.sum())} seen, from {int(stats.total_frequency):,} "
               f"tokens (router {router.router_id}); predicted learned share "
               f"{100 * refresh.prediction.learned_share:.1f}%")
    if args.out:
        table.save(args.out)
        print(f"wrote table v{table.version} to {args.out}: {summary}")
    if args.publish:
        version, seeded = _run_redis(publish_table_and_stats(settings, table, stats if args.seed_stats else None))
        print(f"published table v{version} to {redact_url(settings.redis_url)} (namespace {settings.namespace}): {summary}")
        if args.seed_stats:
            print("seeded the stats worker's statistics" if seeded else
                  "kept the stats worker's existing statistics (not seeded)")
    return 0


def _run_redis(coro: Any) -> Any:
    from redis.exceptions import RedisError

    try:
        return asyncio.run(coro)
    except (RedisError, OSError) as exc:
        raise UserError(f"redis: {exc}") from None


# --- worker ------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> int:
    from pipeline.stream.faust_config import worker_name
    from pipeline.stream.topics import ensure_topics, pipeline_topics
    from pipeline.table_sets import TableSetError, build_refresher
    from workers.stats_worker import StatsWorkerError, run_stats_worker

    settings = settings_from(args)
    try:
        build_refresher(settings)  # fails early without a vocabulary size
    except TableSetError as exc:
        raise UserError(str(exc)) from None
    asyncio.run(ensure_topics(KafkaAccess.from_settings(settings), pipeline_topics(settings), settings.replication_factor))
    try:
        run_stats_worker(settings, worker_name(settings))
    except (StatsWorkerError, TableSetError) as exc:
        raise UserError(str(exc)) from None
    return 0


# --- show --------------------------------------------------------------------------------
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


async def _router_ids(settings: Settings, client: Any) -> list[str]:
    """The table set the settings name, or every table set in the namespace."""
    from pipeline.assembly import build_routers, is_model, model_vocab
    from pipeline.stores.keys import table_set_id

    if is_model(settings):
        return [table_set_id([r.router_id for r in build_routers(settings, model_vocab(settings) or 0)])]
    if settings.vocab_size is not None:
        return [router_spec(settings, settings.vocab_size).router_id]
    prefix = f"var:{settings.namespace}:fp:"
    names = [k.decode() async for k in client.scan_iter(match=f"{prefix}*:current")]
    return sorted(n[len(prefix):-len(":current")] for n in names)


async def _layers(client: Any, keys: Any, version: int) -> int:
    """How many layers the published table set ``version`` has (its consecutive layer keys)."""
    layers = 0
    while await client.exists(keys.table(version, layers)):
        layers += 1
    return layers


async def _load_current(settings: Settings, layer: int = 0) -> tuple[RoutingTable, dict[str, Any] | None]:
    from pipeline.stores.base import StoreUnavailable
    from pipeline.stores.keys import RedisKeys
    from pipeline.stores.redis_access import RedisAccess
    from pipeline.stores.redis_store import RedisRoutingStore

    access = RedisAccess.from_settings(settings)
    client = access.client(5.0)
    try:
        ids = await _router_ids(settings, client)
        if len(ids) != 1:
            raise UserError(f"no table published in namespace {settings.namespace}" if not ids else
                            f"tables of {len(ids)} routers in namespace {settings.namespace}; "
                            "give the router settings (--vocab-size ...) to pick one")
        keys = RedisKeys(settings.namespace, ids[0])
        version: Any = await client.get(keys.table_pointer)  # bytes | None (the client does not decode)
        layers = await _layers(client, keys, int(version)) if version is not None else 0
        if layers and not 0 <= layer < layers:
            raise UserError(f"--layer {layer}: the table set of {ids[0]} has layers 0-{layers - 1}")
        store = RedisRoutingStore(access, keys, 1.0, max(1, layers), client=client)
        try:
            tables = await store.load_tables(int(version)) if layers else None
        except StoreUnavailable as exc:
            raise UserError(f"cannot read the table from {access.display}: {exc}") from None
        if tables is None:
            raise UserError(f"no table published for router {ids[0]} in namespace {settings.namespace}")
        snapshot: Any = await client.get(keys.stats_snapshot)  # bytes | None
        return tables[layer], _snapshot_summary(snapshot, layer)
    finally:
        await client.aclose()


def _snapshot_summary(raw: bytes | None, layer: int = 0) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        layers = read_layer_snapshots(raw)
    except SnapshotError as exc:
        return {"error": str(exc)}
    if layer >= len(layers):
        return {"error": f"the snapshot has no layer {layer}"}
    header = layers[layer][0]
    rows = version_report({int(v): c for v, c in header["observed"].items()},
                          {int(v): p for v, p in header["predicted"].items()})
    return {"counters": header["counters"], "offsets": header["offsets"], "bytes": len(raw),
            "versions": rows[-SHOW_VERSIONS:], "audits": audit_rows([h for h, _ in layers])}


def audit_rows(headers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live audits of every layer's snapshot header: per table version (the last
    ``SHOW_VERSIONS``) and layer, audited and agreeing decisions with the Wilson interval."""
    ledger = AuditLedger()
    for layer, header in enumerate(headers):  # each layer's refresher counts its own layer
        ledger.counts.update({key: counts for key, counts in AuditLedger.from_dict(header.get("audit_ledger", []))
                              .counts.items() if key[1] == layer})
    versions = sorted({v for v, _ in ledger.counts})[-SHOW_VERSIONS:]
    return [row for row in ledger.rows() if row["table_version"] in versions]


def run_show(args: argparse.Namespace) -> int:
    snapshot = None
    if args.file:
        table = RoutingTable.load(args.file)
    else:
        settings = settings_from(args)
        table, snapshot = _run_redis(_load_current(settings, args.layer))
    summary = table_summary(table, args.top)
    if snapshot is not None:
        summary["stats_snapshot"] = snapshot
    if args.json:
        print_json(summary)
        return 0
    print(render_summary(summary))
    return 0


def render_summary(summary: dict[str, Any]) -> str:
    t, meta = summary["thresholds"], summary["meta"]
    lines = [f"table v{summary['version']} for {summary['router_id']}: {summary['size']} fast-path tokens, "
             f"{summary['known_tokens']} seen, vocab {summary['vocab_size']}",
             f"thresholds: frequency > {t['min_frequency']:g} and entropy < {t['max_entropy']:.4g}, "
             f"or id < {t['static_below']}" + (" (adaptive)" if "adaptive" in meta else "")]
    if "predicted_learned_share" in meta:
        adaptive = meta.get("adaptive", {})
        lines.append(f"predicted learned share {100 * meta['predicted_learned_share']:.1f}%, expected top-1 "
                     f"agreement {100 * meta['expected_agreement']:.2f}%"
                     + (f" (target {100 * adaptive['target']:.1f}%{'' if adaptive['feasible'] else ', not met'})"
                        if adaptive else ""))
    if "stats_snapshot" in summary and "counters" in summary["stats_snapshot"]:
        c = summary["stats_snapshot"]["counters"]
        lines.append(f"stats worker: {c['outcomes']:,} outcomes counted ({c['learned']:,} learned), "
                     f"{c['refreshes']} tables published, last v{c['last_version']}")
        for row in summary["stats_snapshot"]["versions"]:
            predicted = row["predicted_learned_share"]
            lines.append(f"  v{row['version']}: predicted learned share "
                         f"{'-' if predicted is None else f'{100 * predicted:.1f}%'}, observed "
                         f"{100 * row['observed_learned_share']:.1f}% (not fast {100 * row['observed_non_fast_share']:.1f}%)"
                         f" over {row['outcomes']:,} outcomes")
        audits = summary["stats_snapshot"].get("audits") or []
        if audits:
            lines.append("live audits (fast-path top-k agreement with the learned router, 95% Wilson interval):")
        for row in audits:
            lines.append(f"  v{row['table_version']} layer {row['layer']}: {100 * row['agreement']:.1f}% "
                         f"[{100 * row['low']:.1f}%, {100 * row['high']:.1f}%] of {row['audited']:,} audited")
    lines.append(f"{'token':>7}{'frequency':>12}  fast  experts        entropy")
    for row in summary["top_tokens"]:
        lines.append(f"{row['token']:>7}{row['frequency']:>12,.0f}  {'yes ' if row['fast'] else 'no  '}  "
                     f"{str(row['experts']):<14} {row['entropy']:.3f}")
    return "\n".join(lines)
