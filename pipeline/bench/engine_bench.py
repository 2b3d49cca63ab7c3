"""``var bench engine``: the seed's per-token routing, the batched always-learned baseline and VAR,
side by side on the same events, for the seed-size and the large router.

All three start from the same events and maintain the same per-stream context windows; they
differ only in how decisions are made:

* ``per_token``  -- the proof of concept: one learned-router call per token (timed on a sample);
* ``batched``    -- always the learned router, one batched call per micro-batch;
* ``var``        -- the engine: cache -> fast path -> learned router (+ governor).

Each candidate runs ``repeats`` times, interleaved, and the median is reported, so that a noisy
neighbour on the machine affects all of them alike. A table is built by an offline phase on a
training split first (not timed).
"""
from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from pipeline.corpus.jsonl import iter_batches
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.context import ContextWindow
from pipeline.engine.engine import VAREngine
from pipeline.engine.events import EventBatch, Tier
from pipeline.engine.offline import collect_statistics, exact_routes
from pipeline.engine.pairs import stats_pair_cap
from pipeline.engine.routers import PRESETS, RouterOutput, TorchRouter, build_router
from pipeline.engine.table import RoutingTable, build_table
from pipeline.assembly import engine_config, router_spec, thresholds
from pipeline.settings import Settings


@dataclass(frozen=True)
class EngineBenchConfig:
    tokens: int = 200_000
    train_tokens: int = 300_000
    per_token_sample: int = 2_000
    repeats: int = 3
    sizes: tuple[str, ...] = ("seed", "large")


def _events(settings: Settings, cfg: EngineBenchConfig) -> tuple[list[EventBatch], list[EventBatch]]:
    streams = 16
    per_stream = -(-(cfg.tokens + cfg.train_tokens) // streams)
    spec = SyntheticSpec(vocab_size=settings.vocab_size or 1000, num_streams=streams,
                         tokens_per_stream=per_stream, seed=settings.seed)
    chunks = generate(spec)
    train = list(iter_batches(itertools.islice(chunks, cfg.train_tokens), settings.batch_size))
    online = list(iter_batches(itertools.islice(chunks, cfg.tokens), settings.batch_size))
    return train, online


def _sync(router: TorchRouter) -> None:
    if router.device.type == "cuda":
        torch.cuda.synchronize()


def run_batched(router: TorchRouter, batches: list[EventBatch], window: int) -> float:
    """Always-learned baseline; returns seconds."""
    t0 = time.perf_counter()
    for _ in exact_routes(router, batches, window):
        pass
    _sync(router)
    return time.perf_counter() - t0


def run_per_token(router: TorchRouter, batches: list[EventBatch], window: int, sample: int) -> tuple[float, int]:
    """The seed's loop: context window per token, one router call per token; (seconds, tokens)."""
    windows: dict[str, list[int]] = {}
    events = [(s, t) for b in batches for s, t in zip(b.streams, b.tokens.tolist())][:sample]
    t0 = time.perf_counter()
    for stream, token in events:
        history = windows.setdefault(stream, [-1] * (window - 1))
        router.route(np.asarray([history + [token]], dtype=np.int64))
        if window > 1:
            history.append(token)
            del history[0]
    _sync(router)
    return time.perf_counter() - t0, len(events)


class TimedRouter:
    """A router that adds up the seconds spent inside its ``route`` calls (synchronised on
    CUDA), so that VAR's time splits into the router's and VAR's own bookkeeping."""

    def __init__(self, router: TorchRouter) -> None:
        self.router, self.spec, self.seconds = router, router.spec, 0.0

    @property
    def router_id(self) -> str:
        return self.router.router_id

    def route(self, contexts: np.ndarray, with_logits: bool = False) -> RouterOutput:
        t0 = time.perf_counter()
        out = self.router.route(contexts, with_logits)
        _sync(self.router)
        self.seconds += time.perf_counter() - t0
        return out


def run_var(router: TorchRouter, table: RoutingTable, settings: Settings, batches: list[EventBatch]
            ) -> tuple[float, VAREngine, TimedRouter]:
    """VAR on ``batches``: (seconds, the engine, the timed router it called)."""
    timed = TimedRouter(router)
    engine = VAREngine(timed, table, engine_config(settings))
    windows: dict[str, ContextWindow] = {}
    t0 = time.perf_counter()
    for batch in batches:
        engine.route_batch(batch, windows)
    _sync(router)
    return time.perf_counter() - t0, engine, timed


def _median_rate(samples: list[float], tokens: int) -> float:
    return tokens / statistics.median(samples)


def prepare_size(size: str, settings: Settings, cfg: EngineBenchConfig,
                 progress: Callable[[str], None] = lambda _: None) -> tuple[Settings, TorchRouter, RoutingTable, list[EventBatch]]:
    """The settings, router and offline-built table of one router size, and the online batches."""
    s = settings.with_(hidden=PRESETS[size]["hidden"], experts=PRESETS[size]["num_experts"])
    train, online = _events(s, cfg)
    router = build_router(router_spec(s, s.vocab_size or 1000), s.device)
    progress(f"{size}: offline phase")
    stats = collect_statistics(router, train, s.context_window, pair_cap=stats_pair_cap(s.pair_cap))
    return s, router, build_table(stats, thresholds(s), s.top_k, router.router_id, 1), online


def bench_size(size: str, settings: Settings, cfg: EngineBenchConfig,
               progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Benchmark one router size; returns tokens/s per candidate, ratios and VAR's tier mix."""
    s, router, table, online = prepare_size(size, settings, cfg, progress)
    tokens = sum(len(b) for b in online)
    run_batched(router, online[:3], s.context_window)  # warm-up: torch's first calls ...
    run_var(router, table, s, online[:3])  # ... and loading the compiled kernels
    batched, var, inside = [], [], []
    engine = None
    for rep in range(cfg.repeats):
        progress(f"{size}: repeat {rep + 1}/{cfg.repeats}")
        batched.append(run_batched(router, online, s.context_window))
        seconds, engine, timed = run_var(router, table, s, online)
        var.append(seconds)
        inside.append(timed.seconds)
    per_token_s, per_token_n = run_per_token(router, online, s.context_window, cfg.per_token_sample)
    assert engine is not None
    c = engine.counters
    rates = {"per_token": per_token_n / per_token_s, "batched": _median_rate(batched, tokens),
             "var": _median_rate(var, tokens)}
    median = statistics.median(var)
    router_s = inside[min(range(len(var)), key=lambda i: abs(var[i] - median))]  # of the median VAR run
    result: dict[str, Any] = {
        "size": size, "router_id": router.router_id, "device": s.device, "tokens": tokens,
        "tokens_per_s": rates,
        "ratio_var_vs_batched": rates["var"] / rates["batched"],
        # VAR's time split: inside its router calls, and its own work (contexts, hashing, cache,
        # fast path, governor, decisions); the ceiling is the ratio with no work of its own
        "var_us_per_token": {"router": 1e6 * router_s / tokens,
                             "bookkeeping": 1e6 / rates["var"] - 1e6 * router_s / tokens},
        "batched_us_per_token": 1e6 / rates["batched"],
        "ratio_ceiling": tokens / rates["batched"] / max(router_s, 1e-12),
        "ratio_var_vs_per_token": rates["var"] / rates["per_token"],
        "learned_fraction": int(c.tiers[Tier.LEARNED]) / c.decisions,
        "tiers": {t.label: int(c.tiers[t]) for t in Tier},
        "max_window_learned_fraction": engine.ledger.max_window_fraction,
        "fast_path_tokens": table.size,
    }
    result["goal_ratio"] = goal(result)
    return result


def goal(result: dict[str, Any]) -> float:
    """The speed goal of one router size (issue 12): VAR at least as fast as the batched router
    on the seed-size router; on the large one, 0.8 of the ceiling 1 / learned share (the router
    dominates, so VAR's bookkeeping may cost at most a fifth of that ceiling)."""
    if result["size"] == "seed":
        return 1.0
    return 0.8 / max(float(result["learned_fraction"]), 1e-9)


def render(results: list[dict[str, Any]]) -> str:
    lines = [f"{'size':<7}{'per-token':>11}{'batched':>11}{'VAR':>11}{'VAR/batched':>13}{'goal':>7}"
             f"{'learned':>9}{'ceiling':>9}{'µs/token: batched':>19}{'VAR router':>12}{'VAR own':>9}", "-" * 118]
    for r in results:
        rates, us = r["tokens_per_s"], r["var_us_per_token"]
        target = goal(r)
        lines.append(
            f"{r['size']:<7}{rates['per_token']:>11,.0f}{rates['batched']:>11,.0f}{rates['var']:>11,.0f}"
            f"{r['ratio_var_vs_batched']:>12.2f}x{'>=' + format(target, '.2g') + 'x':>7}"
            f"{100 * r['learned_fraction']:>8.1f}%{r['ratio_ceiling']:>8.2f}x{r['batched_us_per_token']:>19.3f}"
            f"{us['router']:>12.3f}{us['bookkeeping']:>9.3f}")
    lines += ["routers: " + "; ".join(f"{r['size']} {r['router_id']} ({r['device']})" for r in results),
              "tokens/s; per-token = the seed's one router call per token (sampled); batched = always the learned "
              "router, one call per micro-batch;",
              "VAR router / own = µs per token inside VAR's router calls / in VAR's own work; ceiling = VAR/batched "
              "if VAR's own work cost nothing"]
    return "\n".join(lines)
