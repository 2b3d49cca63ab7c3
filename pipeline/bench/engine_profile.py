"""``var bench engine --profile``: microseconds per token for each stage of a routed batch.

The batches go through the router worker's own batch path -- :class:`RouterProcessor` with the
in-memory routing store, so parsing the token messages and encoding the outcome messages are
counted too -- with a :class:`~pipeline.engine.profile.StageClock` attached. Next to it, in the
same run, the batched always-learned baseline is timed on the same events (contexts + one router
call per batch): the floor VAR's bookkeeping is measured against.

The pipeline's Kafka receive/send and Redis round trips are not here; ``var bench pipeline``
measures those.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from pipeline.assembly import build_engine, engine_config
from pipeline.engine.context import ContextWindow
from pipeline.engine.events import EventBatch, EventChunk, Tier
from pipeline.engine.offline import exact_routes
from pipeline.engine.profile import ENGINE_STAGES, STORE_STAGES, StageClock
from pipeline.engine.records import encode_chunk
from pipeline.settings import Settings
from pipeline.stores.memory_store import MemoryRoutingStore
from pipeline.stream.processor import InMessage, RouterProcessor

from .engine_bench import EngineBenchConfig, TorchRouter, prepare_size


PROFILED = ENGINE_STAGES + STORE_STAGES  # the worker's Kafka stages are in ``var bench pipeline``


def batch_messages(batch: EventBatch, message_size: int, first_offset: int) -> list[InMessage]:
    """The batch as token messages of up to ``message_size`` tokens of one stream each (the
    documented token-message format), in the batch's order per stream, consecutive offsets."""
    rows_by_stream: dict[int, list[int]] = {}
    for row, sid in enumerate(batch.stream_ids.tolist()):
        rows_by_stream.setdefault(sid, []).append(row)
    messages: list[InMessage] = []
    for sid, rows in rows_by_stream.items():
        name = batch.stream_names[sid]
        for i in range(0, len(rows), message_size):
            part = rows[i:i + message_size]
            chunk = EventChunk(name, int(batch.seqs[part[0]]), tuple(int(t) for t in batch.tokens[part]), -1)
            messages.append(InMessage(name.encode(), encode_chunk(chunk), 0, first_offset + len(messages)))
    return messages


def _baseline_us(router: TorchRouter, batches: list[EventBatch], window: int) -> dict[str, float]:
    """Batched always-learned: seconds of contexts and of the router call over all batches."""
    clock = StageClock()
    for _ in exact_routes(router, batches, window, clock=clock):
        pass
    return {"contexts": clock.seconds["contexts"], "router": clock.seconds["router"]}


async def _route_all(processor: RouterProcessor, messages: list[list[InMessage]]) -> int:
    windows: dict[str, ContextWindow] = {}
    routed = 0
    for batch in messages:
        out = await processor.process(batch, windows.get)
        windows.update(out.windows)
        routed += out.routed
    return routed


def _warm_up(s: Settings, router: TorchRouter, table: Any, messages: list[list[InMessage]],
             batches: list[EventBatch]) -> None:
    """Both paths once on a throwaway engine, so that one-time start-up (loading the compiled
    kernels, torch's first calls) is not charged to a stage."""
    warm = RouterProcessor(build_engine(s, [router], [table]), MemoryRoutingStore(engine_config(s).cache), "warm-up")
    asyncio.run(_route_all(warm, messages))
    _baseline_us(router, batches, s.context_window)


def profile_size(size: str, settings: Settings, cfg: EngineBenchConfig, message_size: int,
                 progress: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    """Per-stage µs/token of VAR on one router size, and the batched baseline's, same events."""
    s, router, table, online = prepare_size(size, settings, cfg, progress)
    engine = build_engine(s, [router], [table])
    store = MemoryRoutingStore(engine_config(s).cache)
    processor = RouterProcessor(engine, store, "bench/profile")
    messages, offset = [], 0
    for batch in online:
        messages.append(batch_messages(batch, message_size, offset))
        offset += len(messages[-1])
    tokens = sum(len(b) for b in online)
    progress(f"{size}: profiling {tokens:,} tokens in {offset:,} messages")
    _warm_up(s, router, table, messages[:2], online[:2])
    clock = StageClock()
    engine.attach_profile(clock)
    routed = asyncio.run(_route_all(processor, messages))
    baseline = _baseline_us(router, online, s.context_window)
    c = engine.layers[0].counters
    return {
        "size": size, "router_id": router.router_id, "device": s.device, "tokens": routed,
        "message_size": message_size, "batches": clock.batches,
        "var_us_per_token": {k: v for k, v in clock.per_token_us(routed).items() if k in PROFILED},
        "var_total_us": 1e6 * clock.total_s / routed,
        "batched_us_per_token": {k: 1e6 * v / tokens for k, v in baseline.items()},
        "learned_fraction": int(c.tiers[Tier.LEARNED]) / max(1, c.decisions),
    }


def render_profile(results: list[dict[str, Any]]) -> str:
    """One column of µs/token per router size: VAR's stages, its total, and the baseline's."""
    head = "".join(f"{str(r['size']) + ' VAR':>14}{'batched':>10}" for r in results)
    lines = [f"{'stage (µs/token)':<20}{head}", "-" * (20 + 24 * len(results))]
    for stage in PROFILED:
        row = f"{stage:<20}"
        for r in results:
            var, base = r["var_us_per_token"], r["batched_us_per_token"]
            base_v = base.get(stage)
            row += f"{var[stage]:>14.3f}" + (f"{base_v:>10.3f}" if base_v is not None else f"{'':>10}")
        lines.append(row)
    total = f"{'total':<20}"
    for r in results:
        total += f"{r['var_total_us']:>14.3f}{sum(r['batched_us_per_token'].values()):>10.3f}"
    lines += ["-" * (20 + 24 * len(results)), total]
    shares = ", ".join(f"{r['size']}: {100 * float(r['learned_fraction']):.1f}% learned" for r in results)
    lines.append(f"VAR = the router worker's batch path (RouterProcessor, memory store, "
                 f"{results[0]['message_size']}-token messages); batched = contexts + one router call per batch; "
                 f"{shares}")
    return "\n".join(lines)
