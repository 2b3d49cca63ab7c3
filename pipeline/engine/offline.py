"""The offline phase ("precompute statistics"): route a training corpus with the learned router.

Every training event is routed by the learned router (batched), its occurrence is counted and
its decision is added as routing evidence. The resulting :class:`TokenStats` feed
:func:`~pipeline.engine.table.build_table`. The stats worker uses the same accumulation on
live outcomes.
"""
from __future__ import annotations

from typing import Iterable, MutableMapping

from .context import StreamWindow, build_contexts
from .events import EventBatch
from .routers import Router
from .stats import TokenStats


def collect_statistics(
    router: Router,
    batches: Iterable[EventBatch],
    window: int,
    stats: TokenStats | None = None,
    windows: MutableMapping[str, StreamWindow] | None = None,
) -> TokenStats:
    """Route ``batches`` with ``router`` and accumulate statistics (events out of order are skipped)."""
    spec = router.spec
    stats = stats if stats is not None else TokenStats(spec.vocab_size, spec.num_experts)
    windows = windows if windows is not None else {}
    for batch in batches:
        ctx = build_contexts(batch, windows, window)
        windows.update(ctx.windows)
        if len(ctx.contexts) == 0:
            continue
        tokens = ctx.contexts[:, -1]
        out = router.route(ctx.contexts)
        stats.observe_tokens(tokens)
        stats.observe_routing(tokens, out.experts, out.weights, out.confidence, out.entropy)
    return stats
