"""The engine's array decision cache: the same LRU/TTL behaviour as MemoryDecisionCache (the
reference) on random traffic, through both of its interfaces, and the same routing when an
engine uses either."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.array_cache import ArrayDecisionCache, BytesColumns, columns_of, hits_of
from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.cache import CachePolicy, DecisionArrays, MemoryDecisionCache, decode_decisions, \
    encode_decisions
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import EventBatch
from pipeline.engine.offline import collect_statistics
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import Thresholds, build_table


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decisions(rng: np.random.Generator, n: int, k: int = 2) -> DecisionArrays:
    return DecisionArrays(rng.integers(0, 64, (n, k)), rng.random((n, k)).astype(np.float32),
                          rng.random(n).astype(np.float32), rng.random(n).astype(np.float32))


def pair(size: int, ttl: float) -> tuple[ArrayDecisionCache, MemoryDecisionCache, FakeClock]:
    clock = FakeClock()
    policy = CachePolicy(ttl_s=ttl, max_entries=size, min_confidence=0.5)
    return ArrayDecisionCache(policy, 2, clock), MemoryDecisionCache(policy, clock), clock


@pytest.mark.parametrize("size,ttl", [(1, 1e9), (3, 0.3), (50, 0.4), (300, 0.4), (1000, 5.0)])
def test_random_traffic_matches_the_reference(size, ttl):
    rng = np.random.default_rng(size)
    cache, reference, clock = pair(size, ttl)
    for _ in range(1500):
        clock.now += rng.random() * 0.05
        keys = rng.integers(0, 3 * size + 5, int(rng.integers(0, 40))).astype(np.uint64)
        if rng.random() < 0.5:  # writes may repeat a key: the last row wins
            d = decisions(rng, len(keys))
            values = encode_decisions(d.experts, d.weights, d.confidence, d.entropy) if len(keys) else []
            cache.put_many(keys.tolist(), values)
            reference.put_many(keys.tolist(), values)
        else:
            assert cache.get_many(keys.tolist()) == reference.get_many(keys.tolist())
        assert (len(cache), cache.evictions, cache.expirations) == \
            (len(reference), reference.evictions, reference.expirations)
    assert cache.evictions > 0


def test_columns_round_trip_bit_exact_and_in_key_order():
    rng = np.random.default_rng(1)
    cache, _, _ = pair(100, 10.0)
    keys = np.array([2**64 - 1, 2**63, 0, 7], np.uint64)
    written = decisions(rng, 4)
    cache.store(keys, written)
    slot, (experts, weights, confidence, entropy) = cache.lookup(np.array([7, 5, 2**64 - 1, 7], np.uint64))
    assert slot.tolist() == [0, -1, 1, 2]
    assert experts.dtype == np.int64 and weights.dtype == confidence.dtype == entropy.dtype == np.float32
    np.testing.assert_array_equal(experts, written.experts[[3, 0, 3]])
    assert weights.tobytes() == written.weights[[3, 0, 3]].tobytes()
    assert confidence.tobytes() == written.confidence[[3, 0, 3]].tobytes()
    assert entropy.tobytes() == written.entropy[[3, 0, 3]].tobytes()


def test_hit_refreshes_recency_in_lookup_order_but_not_expiry():
    cache, _, clock = pair(3, 10.0)
    cache.store(np.array([1, 2, 3], np.uint64), decisions(np.random.default_rng(0), 3))
    clock.now += 5
    cache.lookup(np.array([2, 1], np.uint64))  # recency now 3, 2, 1
    cache.store(np.array([4], np.uint64), decisions(np.random.default_rng(1), 1))  # evicts 3
    assert cache.lookup(np.array([3, 2, 1, 4], np.uint64))[0].tolist() == [-1, 0, 1, 2]
    clock.now += 5  # 1 and 2 were written 10 s ago
    assert cache.lookup(np.array([1, 2, 4], np.uint64))[0].tolist() == [-1, -1, 0]
    assert cache.expirations == 2 and len(cache) == 1


def test_pool_grows_past_its_first_allocation_and_keeps_entries():
    rng = np.random.default_rng(2)
    cache, _, _ = pair(5000, 1e9)
    keys = rng.permutation(10**6)[:4000].astype(np.uint64)
    for start in range(0, 4000, 500):
        cache.store(keys[start:start + 500], decisions(rng, 500))
    assert len(cache) == 4000 and cache.evictions == 0
    assert (cache.lookup(keys)[0] == np.arange(4000)).all()


def test_hits_of_matches_lookup_and_adapter_uses_the_byte_interface():
    rng = np.random.default_rng(3)
    written = decisions(rng, 3)
    bytes_cache = MemoryDecisionCache(CachePolicy(min_confidence=0.0))
    adapter = columns_of(bytes_cache, 2)
    assert isinstance(adapter, BytesColumns)
    adapter.store(np.array([10, 11, 12], np.uint64), written)
    slot, cols = adapter.lookup(np.array([12, 9, 10], np.uint64))
    assert slot.tolist() == [0, -1, 1]
    back = decode_decisions(bytes_cache.get_many([12, 10]), 2)
    np.testing.assert_array_equal(cols[0], back.experts)
    assert cols[1].tobytes() == back.weights.tobytes()
    assert hits_of([None, None], 2)[0].tolist() == [-1, -1]
    array_cache = ArrayDecisionCache(CachePolicy(), 2)
    assert columns_of(array_cache, 2) is array_cache


def _batches(n_batches: int, size: int, vocab: int) -> list[EventBatch]:
    rng, seqs, batches = np.random.default_rng(4), np.zeros(4, np.int64), []
    for _ in range(n_batches):
        streams = rng.integers(0, 4, size)
        seq = np.empty(size, np.int64)
        for s in range(4):
            rows = np.flatnonzero(streams == s)
            seq[rows] = seqs[s] + np.arange(len(rows))
            seqs[s] += len(rows)
        batches.append(EventBatch([f"s{s}" for s in range(4)], streams, seq, rng.integers(0, vocab, size),
                                  np.full(size, -1)))
    return batches


def test_an_engine_routes_the_same_with_either_cache():
    """The default (array) cache and a byte cache give identical decisions and counters."""
    router = build_router(RouterSpec.preset("seed", vocab_size=12, window=2))
    batches = _batches(12, 200, 12)
    table = build_table(collect_statistics(router, batches[:4], 2), Thresholds(), 2, router.router_id, 1)
    table.eligible[6:] = False  # half the vocabulary asks the cache, then the router
    config = EngineConfig(context_window=2, cache=CachePolicy(max_entries=50, min_confidence=0.3),
                          budget=BudgetPolicy(0.5, 100), audit_rate=0.1)
    engines = [VAREngine(router, table, config), VAREngine(router, table, config, MemoryDecisionCache(config.cache))]
    assert isinstance(engines[0].cache, ArrayDecisionCache)
    windows: list[dict] = [{}, {}]
    for batch in batches[4:]:
        a, b = (e.route_batch(batch, w) for e, w in zip(engines, windows))
        for name in ("experts", "weights", "confidence", "entropy", "tiers", "keys", "audits"):
            np.testing.assert_array_equal(getattr(a.decisions, name), getattr(b.decisions, name))
        assert a.cache_keys == b.cache_keys and a.cache_values == b.cache_values
    ca, cb = engines[0].counters, engines[1].counters
    assert ca.cache_hits == cb.cache_hits > 0 and (ca.tiers == cb.tiers).all()
    assert len(engines[0].cache) == len(engines[1].cache) == 50
