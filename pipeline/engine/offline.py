"""The exact reference and the offline phase: events routed by the learned router alone.

:func:`exact_routes` is the one loop "batches -> contexts -> learned router": the offline
phase, the exact reference of a Kafka replay and the benchmarks' always-learned baseline all
call it, so they agree on contexts by construction. (The engine's own always-learned mode,
:meth:`~pipeline.engine.engine.VAREngine.complete_learned`, routes the contexts its plan
already built.)

The offline phase ("precompute statistics", :func:`collect_statistics`): every training event
is routed, its occurrence is counted and its decision is added as routing evidence. The
resulting :class:`TokenStats` feed :func:`~pipeline.engine.table.build_table`. The stats worker
uses the same accumulation on live outcomes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, MutableMapping

import numpy as np

from .context import ContextWindow, build_contexts
from .events import EventBatch
from .pairs import previous_tokens
from .profile import StageClock, lap
from .routers import Router, RouterOutput
from .stats import TokenStats


@dataclass(frozen=True)
class ExactRoute:
    """One batch routed by the learned router: its events, their contexts, the router's output.

    ``contexts`` has one row per accepted event (``int64 [n, context_window]``, the token last);
    ``events`` are those events (out-of-order ones are left out, as the engine does)."""

    events: EventBatch
    contexts: np.ndarray
    output: RouterOutput


def exact_routes(router: Router, batches: Iterable[EventBatch], context_window: int,
                 windows: MutableMapping[str, ContextWindow] | None = None,
                 clock: StageClock | None = None) -> Iterator[ExactRoute]:
    """Route every batch with ``router`` alone, in order, keeping each stream's context window in
    ``windows`` (updated in place; a fresh dict when omitted). With a ``clock``, building the
    contexts is charged to "contexts" and the router call to "router"."""
    windows = windows if windows is not None else {}
    for batch in batches:
        if clock is not None:
            clock.start()
        ctx = build_contexts(batch, windows, context_window)
        windows.update(ctx.windows)
        lap(clock, "contexts")
        output = router.route(ctx.contexts)
        lap(clock, "router")
        yield ExactRoute(batch.select(ctx.accepted) if ctx.rejections else batch, ctx.contexts, output)


def collect_statistics(
    router: Router,
    batches: Iterable[EventBatch],
    window: int,
    stats: TokenStats | None = None,
    windows: MutableMapping[str, ContextWindow] | None = None,
    pair_cap: int = 0,
) -> TokenStats:
    """Route ``batches`` with ``router`` (:func:`exact_routes`) and accumulate statistics (events
    out of order are skipped), with (previous token, token) pair statistics for at most
    ``pair_cap`` pairs."""
    spec = router.spec
    stats = stats if stats is not None else TokenStats(spec.vocab_size, spec.num_experts, pair_cap)
    for route in exact_routes(router, batches, window, windows):
        if len(route.contexts) == 0:
            continue
        tokens, out = route.contexts[:, -1], route.output
        stats.observe(tokens, previous_tokens(route.contexts), np.ones(len(tokens), bool), out.experts, out.weights,
                      out.confidence, out.entropy)
    return stats
