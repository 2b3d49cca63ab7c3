"""``var bench engine --router model``: VAR against the always-learned model path, side by side.

On the same online events of the held-out works (after the same offline phase):

* ``always_learned`` -- every token's decision at every layer from the layer's gate, recomputed
  from the token's receptive field (the learned tier for every token), one batched call per
  layer per micro-batch;
* ``var``            -- the layered engine: cache -> fast path -> learned (budget) per layer;
* ``streamed_pass``  -- for reference, one exact forward pass of the LM over whole streams
  (contiguous tokens, prefixes reused) -- the cost of serving the model itself.

Each candidate runs ``repeats`` times, interleaved; the median is reported. Also the cost of a
learned call per layer, in µs/token, for a batch of 1024 contexts.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable



from pipeline.assembly import build_engine
from pipeline.corpus.jsonl import iter_batches
from pipeline.engine.context import build_contexts
from pipeline.engine.events import EventBatch, Tier
from pipeline.model.router import exact_gate_logits, model_routers
from pipeline.model_replay import ModelPrepared, group_streams, prepare
from pipeline.settings import Settings
from pipeline.sources import TextSource

COST_BATCH = 1024


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _always_learned(prepared: ModelPrepared, settings: Settings, batches: list[EventBatch]) -> None:
    engine = build_engine(settings, model_routers(prepared.checkpoint, settings.device), prepared.tables)
    windows: dict = {}
    for batch in batches:
        plan = engine.prepare(batch, windows)
        engine.complete_learned(plan)
        windows.update(plan.windows)


def _var(prepared: ModelPrepared, settings: Settings, batches: list[EventBatch]) -> list[float]:
    engine = build_engine(settings, model_routers(prepared.checkpoint, settings.device), prepared.tables)
    windows: dict = {}
    for batch in batches:
        engine.route_batch(batch, windows)
    return [int(e.counters.tiers[Tier.LEARNED]) / max(1, e.counters.decisions) for e in engine.layers]


def learned_call_cost(prepared: ModelPrepared, settings: Settings, batch: EventBatch) -> list[float]:
    """µs per token of one learned call per layer, on ``COST_BATCH`` real contexts."""
    routers = model_routers(prepared.checkpoint, settings.device)
    contexts = build_contexts(batch, {}, max(r.spec.window for r in routers)).contexts[:COST_BATCH]
    costs = []
    for r in routers:
        r.route(contexts[:8])  # warm-up
        costs.append(1e6 * min(_time(lambda: r.route(contexts)) for _ in range(3)) / len(contexts))
    return costs


def bench_model(settings: Settings, tokens: int, repeats: int, say: Callable[[str], None]) -> dict[str, Any]:
    say("offline phase")
    prepared = prepare(TextSource(), settings)
    online = prepared.online
    kept, count = [], 0
    for chunk in online:
        if count >= tokens:
            break
        kept.append(chunk)
        count += len(chunk)
    batches = list(iter_batches(kept, settings.batch_size))
    streams = group_streams(kept)
    model = prepared.checkpoint.model
    times: dict[str, list[float]] = {"always_learned": [], "var": [], "streamed_pass": []}
    shares: list[float] = []
    for rep in range(repeats):
        say(f"repeat {rep + 1}/{repeats}")
        times["always_learned"].append(_time(lambda: _always_learned(prepared, settings, batches)))
        t0 = time.perf_counter()
        shares = _var(prepared, settings, batches)
        times["var"].append(time.perf_counter() - t0)
        times["streamed_pass"].append(_time(lambda: exact_gate_logits(model, streams)))
    rates = {name: count / statistics.median(t) for name, t in times.items()}
    say("learned-call cost per layer")
    costs = learned_call_cost(prepared, settings, EventBatch.from_chunks(kept[:COST_BATCH * 2]))
    return {"benchmark": "engine", "router": "model", "checkpoint": prepared.checkpoint.digest, "tokens": count,
            "tokens_per_s": rates, "ratio_var_vs_always_learned": rates["var"] / rates["always_learned"],
            "ratio_var_vs_streamed_pass": rates["var"] / rates["streamed_pass"],
            "learned_share": shares, "learned_us_per_token": costs, "budget": settings.budget}


def render_model(result: dict[str, Any]) -> str:
    r = result["tokens_per_s"]
    lines = [f"VAR engine on the MoE LM (checkpoint {result['checkpoint']}), {result['tokens']:,} held-out tokens, "
             f"budget {100 * result['budget']:g}% per layer",
             f"  {'always learned':<16}{r['always_learned']:>10,.0f} tokens/s  (every layer's gate, recomputed)",
             f"  {'VAR':<16}{r['var']:>10,.0f} tokens/s  = {result['ratio_var_vs_always_learned']:.2f}x always "
             f"learned (goal >= 5x)",
             f"  {'streamed pass':<16}{r['streamed_pass']:>10,.0f} tokens/s  (one exact LM pass over whole streams;"
             f" VAR = {result['ratio_var_vs_streamed_pass']:.2f}x)",
             "  learned share per layer: " + ", ".join(f"L{l} {100 * s:.1f}%" for l, s in enumerate(result["learned_share"])),
             "  learned call per layer:  " + ", ".join(f"L{l} {c:.1f} µs/token" for l, c in
                                                      enumerate(result["learned_us_per_token"]))
             + f" (batch of {COST_BATCH})"]
    return "\n".join(lines)



