"""cache_scope=misses: fast-path tokens skip the cache lookup; decisions are unchanged while the table is."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.corpus.jsonl import iter_batches
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.offline import collect_statistics
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import Thresholds, build_table


def run(scope: str):
    router = build_router(RouterSpec(vocab_size=60, hidden=16, num_experts=4, window=3))
    chunks = list(generate(SyntheticSpec(vocab_size=60, num_streams=3, tokens_per_stream=3000, seed=2)))
    stats = collect_statistics(router, iter_batches(chunks[:3000], 512), 3)
    table = build_table(stats, Thresholds(min_frequency=20), 2, router.router_id, 1)
    engine = VAREngine(router, table, EngineConfig(context_window=3, cache_scope=scope))
    windows: dict = {}
    results = [engine.route_batch(b, windows) for b in iter_batches(chunks[3000:], 256)]
    return engine, results


def test_same_decisions_fewer_lookups():
    full, a = run("all")
    lean, b = run("misses")
    for ra, rb in zip(a, b):
        assert np.array_equal(ra.decisions.tiers, rb.decisions.tiers)
        assert np.array_equal(ra.decisions.experts, rb.decisions.experts)
    fast = int(full.counters.tiers[1])
    assert fast > 0
    assert lean.counters.cache_lookups == full.counters.cache_lookups - fast


def test_unknown_scope_is_rejected():
    with pytest.raises(ValueError, match="cache scope"):
        EngineConfig(cache_scope="some")
