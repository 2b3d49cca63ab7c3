"""The offline phase ("precompute statistics"): route a training corpus with the learned router.

Every training event is routed by the learned router (batched), its occurrence is counted and
its decision is added as routing evidence. The resulting :class:`TokenStats` feed
:func:`~pipeline.engine.table.build_table`. The stats worker uses the same accumulation on
live outcomes.
"""
from __future__ import annotations

from typing import Iterable, MutableMapping

import numpy as np

from .context import ContextWindow, build_contexts
from .pairs import previous_tokens
from .events import EventBatch
from .routers import Router
from .stats import TokenStats


def collect_statistics(
    router: Router,
    batches: Iterable[EventBatch],
    window: int,
    stats: TokenStats | None = None,
    windows: MutableMapping[str, ContextWindow] | None = None,
    pair_cap: int = 0,
) -> TokenStats:
    """Route ``batches`` with ``router`` and accumulate statistics (events out of order are skipped),
    with (previous token, token) pair statistics for at most ``pair_cap`` pairs."""
    spec = router.spec
    stats = stats if stats is not None else TokenStats(spec.vocab_size, spec.num_experts, pair_cap)
    windows = windows if windows is not None else {}
    for batch in batches:
        ctx = build_contexts(batch, windows, window)
        windows.update(ctx.windows)
        if len(ctx.contexts) == 0:
            continue
        tokens = ctx.contexts[:, -1]
        out = router.route(ctx.contexts)
        stats.observe(tokens, previous_tokens(ctx.contexts), np.ones(len(tokens), bool), out.experts, out.weights,
                      out.confidence, out.entropy)
    return stats
