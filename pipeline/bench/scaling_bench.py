"""``var bench scaling``: how VAR's cost grows with workers and with streams.

* **Workers** -- chunked seed-size VAR through Kafka with 1, 2 and 4 router worker processes on
  an 8-partition token topic (the measurement of ``var bench pipeline``: the same producer and
  measuring consumer, which share the machine with the workers).
* **Streams** -- the same number of per-token messages spread over 10, 1k and 100k streams,
  routed by one worker's batch path (:class:`RouterProcessor`) against the real Redis store:
  µs per token, the context windows held and the Redis keys written, against what the README
  documents -- one window per live stream, and a decision-cache key per confident learned
  decision (so at most one per learned call, whatever the number of streams), plus the table
  set's constant few keys.
"""
from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import redis.asyncio as aioredis

from pipeline.assembly import build_engine, engine_config, router_spec
from pipeline.engine.context import ContextWindow
from pipeline.engine.events import EventBatch, EventChunk, Tier
from pipeline.engine.routers import PRESETS, build_router
from pipeline.engine.table import RoutingTable
from pipeline.settings import Settings
from pipeline.stores.keys import RedisKeys
from pipeline.stores.namespace import drop_namespace
from pipeline.stores.redis_access import RedisAccess
from pipeline.stores.redis_store import RedisRoutingStore
from pipeline.stream.processor import RouterProcessor

from .engine_profile import batch_messages
from .pipeline_bench import BenchConfig, Case, _corpus, build_tables, run_case

WORKERS = (1, 2, 4)
STREAMS = (10, 1_000, 100_000)


@dataclass(frozen=True)
class ScalingConfig:
    worker_tokens: int = 300_000  # chunked tokens per worker-count run
    stream_tokens: int = 200_000  # per-token messages per stream-count run
    partitions: int = 8
    workers: tuple[int, ...] = WORKERS
    streams: tuple[int, ...] = STREAMS


def scale_workers(base: Settings, cfg: ScalingConfig, progress: Callable[[str], None]) -> list[dict[str, object]]:
    """Chunked seed VAR throughput with each worker count (one run each)."""
    bench = BenchConfig(chunked_tokens=cfg.worker_tokens, latency_s=1.0)
    train, corpus = _corpus(bench, base.vocab_size or 1000, base.seed)
    tables = build_tables(base, train)
    rows = []
    for workers in cfg.workers:
        progress(f"workers: {workers} on {cfg.partitions} partitions")
        r = run_case(Case("chunked", "seed", "var"), base.with_(partitions=cfg.partitions), bench, tables, corpus,
                     workers=workers)
        rows.append({"workers": workers, "partitions": cfg.partitions, "tokens_per_s": r["tokens_per_s"],
                     "latency_p50_ms": r["latency_p50_ms"], "latency_p99_ms": r["latency_p99_ms"]})
    base_rate = float(rows[0]["tokens_per_s"])  # type: ignore[arg-type]
    for row in rows:
        row["speedup"] = float(row["tokens_per_s"]) / base_rate  # type: ignore[arg-type]
    return rows


def spread(tokens: list[int], streams: int) -> list[EventBatch]:
    """``tokens`` (one corpus order) as per-token events of ``streams`` streams -- each stream a
    consecutive slice -- arriving interleaved round-robin, in batches of 1,024."""
    per = max(1, len(tokens) // streams)
    slices = [tokens[i * per:(i + 1) * per] for i in range(streams)]
    events = (EventChunk(f"s{sid:06d}", seq, (tok,)) for seq, row in
              enumerate(itertools.zip_longest(*slices)) for sid, tok in enumerate(row) if tok is not None)
    batches, chunk = [], list(itertools.islice(events, 1024))
    while chunk:
        batches.append(EventBatch.from_chunks(chunk))
        chunk = list(itertools.islice(events, 1024))
    return batches


async def _route_streams(settings: Settings, table: RoutingTable, batches: list[EventBatch]) -> dict[str, float]:
    router = build_router(router_spec(settings, settings.vocab_size or 1000), settings.device)
    engine = build_engine(settings, [router], [table])
    namespace = f"scaling-{uuid.uuid4().hex[:8]}"
    keys = RedisKeys(namespace, router.router_id)
    store = RedisRoutingStore(RedisAccess.from_settings(settings), keys, engine_config(settings).cache.ttl_s)
    await store.publish_table(table)  # as a stats worker would: the table set's keys count too
    processor = RouterProcessor(engine, store, "bench/scaling")
    windows: dict[str, ContextWindow] = {}
    messages, offset = [], 0
    for batch in batches:
        messages.append(batch_messages(batch, 1, offset))
        offset += len(messages[-1])
    t0 = time.perf_counter()
    routed = 0
    for batch_msgs in messages:
        out = await processor.process(batch_msgs, windows.get)
        windows.update(out.windows)
        routed += out.routed
    seconds = time.perf_counter() - t0
    counted = await _count_keys(store.client, namespace)
    await store.close()
    await drop_namespace(RedisAccess.from_settings(settings), namespace)  # counted: the bench leaves none
    c = engine.layers[0].counters
    return {"tokens": routed, "us_per_token": 1e6 * seconds / max(1, routed), "windows": len(windows),
            "learned_calls": int(c.tiers[Tier.LEARNED]), **counted}


async def _count_keys(client: aioredis.Redis, namespace: str) -> dict[str, float]:
    """The namespace's decision-cache and other keys, and the cache's memory (Redis' own figure)."""
    cache = other = 0
    memory = 0
    async for key in client.scan_iter(match=f"var:{namespace}:*", count=10_000):
        if b":dc:" in key:
            cache += 1
            memory += int(await client.memory_usage(key) or 0) if cache <= 200 else 0
        else:
            other += 1
    return {"redis_cache_keys": cache, "redis_other_keys": other,
            "redis_bytes_per_cache_key": memory / min(cache, 200) if cache else 0.0}


def scale_streams(base: Settings, cfg: ScalingConfig, progress: Callable[[str], None]) -> list[dict[str, object]]:
    """Per-token routing cost, windows and Redis keys for each stream count (same tokens)."""
    s = base.with_(hidden=PRESETS["seed"]["hidden"], experts=PRESETS["seed"]["num_experts"])
    bench = BenchConfig(chunked_tokens=cfg.stream_tokens)
    train, corpus = _corpus(bench, s.vocab_size or 1000, s.seed)
    table = build_tables(s, train)["seed"]
    tokens = [t for c in corpus for t in c.tokens][:cfg.stream_tokens]
    rows: list[dict[str, Any]] = []
    for streams in cfg.streams:
        progress(f"streams: {streams:,}")
        got = asyncio.run(_route_streams(s, table, spread(tokens, streams)))
        got["streams"] = streams
        got["windows_per_stream"] = got["windows"] / streams
        got["cache_keys_per_learned_call"] = got["redis_cache_keys"] / max(1, got["learned_calls"])
        rows.append(got)
    return rows


def render_scaling(result: dict[str, list[dict[str, object]]]) -> str:
    lines = [f"{'workers':>8}{'partitions':>12}{'tokens/s':>12}{'speedup':>9}{'p50 ms':>9}{'p99 ms':>9}", "-" * 59]
    for r in result.get("workers", []):
        lines.append(f"{r['workers']:>8}{r['partitions']:>12}{r['tokens_per_s']:>12,.0f}{r['speedup']:>8.2f}x"
                     f"{r['latency_p50_ms']:>9.1f}{r['latency_p99_ms']:>9.1f}")
    lines += ["", f"{'streams':>9}{'µs/token':>10}{'windows':>10}{'/stream':>8}{'learned':>9}{'dc keys':>9}"
                  f"{'/learned':>9}{'other keys':>11}{'B/dc key':>9}", "-" * 84]
    for r in result.get("streams", []):
        lines.append(f"{r['streams']:>9,}{r['us_per_token']:>10.2f}{r['windows']:>10,}{r['windows_per_stream']:>8.2f}"
                     f"{r['learned_calls']:>9,}{r['redis_cache_keys']:>9,}{r['cache_keys_per_learned_call']:>9.2f}"
                     f"{r['redis_other_keys']:>11,}{r['redis_bytes_per_cache_key']:>9.0f}")
    lines.append("documented: one window per live stream; decision-cache keys <= learned calls (confident "
                 "ones only), independent of streams; a constant few table keys")
    return "\n".join(lines)


def plot_scaling(result: dict[str, list[dict[str, object]]], path: str) -> None:
    """Two panels: tokens/s by worker count; µs/token, windows and cache keys by stream count."""
    from pipeline.plot import require_matplotlib

    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    workers = result.get("workers", [])
    if workers:
        left.plot([r["workers"] for r in workers], [r["tokens_per_s"] for r in workers], "o-")
        left.set_xticks([r["workers"] for r in workers])
    left.set(xlabel="router workers (8 partitions)", ylabel="tokens/s", title="chunked seed VAR through Kafka")
    streams = result.get("streams", [])
    if streams:
        xs = [r["streams"] for r in streams]
        right.plot(xs, [r["us_per_token"] for r in streams], "o-", label="µs/token")
        right.set(xscale="log", xlabel="streams", ylabel="µs/token", title="per-token messages, one worker")
        keys = right.twinx()
        keys.plot(xs, [r["windows"] for r in streams], "s--", color="tab:green", label="windows")
        keys.plot(xs, [r["redis_cache_keys"] for r in streams], "^--", color="tab:red", label="Redis cache keys")
        keys.set(yscale="log", ylabel="count")
        keys.legend(loc="upper left")
    fig.savefig(path, dpi=110)


def run_scaling(cfg: ScalingConfig, settings: Settings, only: str | None,
                say: Callable[[str], None]) -> dict[str, list[dict[str, object]]]:
    """Both parts, or ``only`` one (synthetic vocabulary of 1000, 6 s session timeout); ``var bench
    scaling`` (pipeline/cli/bench_cmd.py) prints them with :func:`render_scaling`."""
    base = settings.with_(vocab_size=1000, session_timeout_s=6.0)
    result: dict[str, list[dict[str, object]]] = {}
    if only != "streams":
        result["workers"] = scale_workers(base, cfg, say)
    if only != "workers":
        result["streams"] = scale_streams(base, cfg, say)
    return result
