"""The engine's fused batch (two compiled calls, :mod:`pipeline.engine.batch_kernels`) decides
exactly what its staged passes decide: the same traffic through both, batch by batch, with cache
hits, evictions and expiries, audits, a tight budget (and none), pair entries and rejected
events; every decision column, cache write, window and counter compared."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.engine.array_cache import ArrayDecisionCache
from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.cache import CachePolicy
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import EventBatch, Tier
from pipeline.engine.offline import collect_statistics
from pipeline.engine.profile import StageClock
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import Thresholds, build_table

STREAMS = 5
COLUMNS = ("experts", "weights", "confidence", "entropy", "tiers", "keys", "audits", "ctx_hash")


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def traffic(rng: np.random.Generator, batches: int, size: int, vocab: int, stale: float) -> list[EventBatch]:
    """Batches over STREAMS streams; a ``stale`` share of events repeats an old seq (rejected)."""
    seqs, out = np.zeros(STREAMS, np.int64), []
    for b in range(batches):
        streams = rng.integers(0, STREAMS, size)
        seq = np.empty(size, np.int64)
        for s in range(STREAMS):
            rows = np.flatnonzero(streams == s)
            seq[rows] = seqs[s] + 1 + np.arange(len(rows))
            seqs[s] += len(rows)
        old = rng.random(size) < stale
        seq[old] = np.maximum(seq[old] - 3, 0)  # not increasing: rejected (some as redeliveries)
        offsets = np.arange(b * size, (b + 1) * size) - np.where(old, 2 * size, 0)
        tokens = np.minimum(rng.zipf(1.6, size) - 1, vocab - 1)  # a few tokens dominate: repeats
        out.append(EventBatch([f"s{s}" for s in range(STREAMS)], streams, seq, tokens, offsets))
    return out


def engines(config: EngineConfig, vocab: int, window: int, seed: int) -> tuple[VAREngine, VAREngine, Clock]:
    router = build_router(RouterSpec.preset("seed", vocab_size=vocab, window=window, seed=seed))
    warm = traffic(np.random.default_rng(seed + 100), 4, 300, vocab, 0.0)
    table = build_table(collect_statistics(router, warm, window, pair_cap=1000),
                        Thresholds(min_frequency=2, max_entropy=0.6), router.spec.top_k, router.router_id, 1)
    clock = Clock()
    pair = tuple(VAREngine(router, table, config, ArrayDecisionCache(config.cache, router.spec.top_k, clock))
                 for _ in range(2))
    pair[1].profile = StageClock()  # a stage profiler: the staged passes, each timed
    return pair[0], pair[1], clock


def assert_same(a, b) -> None:
    for name in COLUMNS:
        x, y = getattr(a.decisions, name), getattr(b.decisions, name)
        assert x is not None and y is not None and x.tobytes() == y.tobytes(), name
    assert a.accepted.tobytes() == b.accepted.tobytes() and a.position == b.position
    assert a.contexts.tobytes() == b.contexts.tobytes()
    assert a.windows == b.windows and a.rejections == b.rejections
    assert a.write_keys.tobytes() == b.write_keys.tobytes()
    assert (a.writes is None) == (b.writes is None)
    if a.writes is not None and b.writes is not None:
        for x, y in zip(dataclasses.astuple(a.writes), dataclasses.astuple(b.writes)):
            assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("budget,audit,entries,ttl,window,stale", [
    (BudgetPolicy(0.15, 200), 0.05, 40, 0.35, 4, 0.0),
    (BudgetPolicy(0.05, 50), 0.3, 8, 1e9, 3, 0.05),
    (BudgetPolicy(0.5, 100, enabled=False), 0.0, 500, 0.2, 2, 0.02),
    (BudgetPolicy(1.0, 10), 1.0, 1, 5.0, 4, 0.0),
])
def test_fused_batches_decide_what_the_staged_passes_decide(budget, audit, entries, ttl, window, stale):
    vocab = 60
    config = EngineConfig(context_window=window, cache=CachePolicy(ttl_s=ttl, max_entries=entries,
                                                                   min_confidence=0.3),
                          budget=budget, audit_rate=audit)
    fused, staged, clock = engines(config, vocab, window, seed=entries)
    rng = np.random.default_rng(entries)
    windows: tuple[dict, dict] = ({}, {})
    for batch in traffic(rng, 40, int(rng.integers(50, 400)), vocab, stale):
        clock.now += rng.random() * 0.2
        assert_same(fused.route_batch(batch, windows[0]), staged.route_batch(batch, windows[1]))
        assert windows[0] == windows[1]
    assert staged.profile is not None and staged.profile.seconds["governor"] > 0  # it did run staged
    for field in dataclasses.fields(fused.counters):
        assert np.array_equal(getattr(fused.counters, field.name), getattr(staged.counters, field.name)), field.name
    c = fused.counters
    assert c.tiers[Tier.LEARNED] > 0 and c.tiers[Tier.FAST] > 0 and (c.cache_hits > 0 or entries == 1)
    assert (c.rejected > 0) == (stale > 0) and (c.audits > 0) == (audit > 0)
    assert (fused.governor.admitted, fused.governor.denied) == (staged.governor.admitted, staged.governor.denied)
    if budget.budget <= 0.05 or not budget.enabled:  # a tight budget denies some; none denies nothing
        assert (fused.governor.denied > 0) == budget.enabled
    assert fused.ledger.block_learned == staged.ledger.block_learned
    assert fused.ledger.max_window_fraction == staged.ledger.max_window_fraction
    a, b = fused.cache, staged.cache
    assert isinstance(a, ArrayDecisionCache) and isinstance(b, ArrayDecisionCache)
    assert (len(a), a.evictions, a.expirations) == (len(b), b.evictions, b.expirations)
    seen = sorted(set(a.kernel_state()[0][2].tolist()) | set(b.kernel_state()[0][2].tolist()))  # keys ever held
    found = a.get_many(seen)
    assert found == b.get_many(seen) and any(v is not None for v in found)  # the same entries and values ...
    clock.now += min(ttl, 10.0) * 0.6
    assert a.get_many(seen) == b.get_many(seen)  # ... and expiries
