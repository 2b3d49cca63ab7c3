"""The in-memory decision cache (TTL on a fake clock, LRU), the value encoding and the policy."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.cache import CachePolicy, MemoryDecisionCache, decision_dtype, decode_decisions, \
    encode_decisions


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(ttl=10.0, size=100, clock=None):
    clock = clock or FakeClock()
    return MemoryDecisionCache(CachePolicy(ttl_s=ttl, max_entries=size, min_confidence=0.5), clock), clock


def test_get_of_missing_keys_is_none_in_order():
    cache, _ = make()
    cache.put_many([1, 3], [b"one", b"three"])
    assert cache.get_many([3, 2, 1, 1]) == [b"three", None, b"one", b"one"]
    assert cache.get_many([]) == []


def test_ttl_expires_exactly_at_write_time_plus_ttl():
    cache, clock = make(ttl=10.0)
    cache.put_many([1], [b"a"])  # written at t = 1000
    clock.now = 1009.999
    assert cache.get_many([1]) == [b"a"]
    clock.now = 1010.0
    assert cache.get_many([1]) == [None]
    assert cache.expirations == 1 and len(cache) == 0
    clock.now = 1011.0
    assert cache.get_many([1]) == [None]
    assert cache.expirations == 1  # counted once


def test_hit_does_not_extend_expiry_but_rewrite_does():
    cache, clock = make(ttl=10.0)
    cache.put_many([1, 2], [b"a", b"b"])
    clock.now = 1005.0
    assert cache.get_many([1]) == [b"a"]
    cache.put_many([2], [b"b2"])  # rewritten at 1005 -> expires at 1015
    clock.now = 1010.0
    assert cache.get_many([1, 2]) == [None, b"b2"]
    clock.now = 1015.0
    assert cache.get_many([2]) == [None]


def test_entries_written_at_different_times_expire_separately():
    cache, clock = make(ttl=5.0)
    for i in range(10):
        clock.now = 1000.0 + i
        cache.put_many([i], [bytes([i])])
    clock.now = 1007.0  # entries written at 1000..1002 have expired (t + 5 <= 1007)
    got = cache.get_many(list(range(10)))
    assert [g is not None for g in got] == [False] * 3 + [True] * 7


def test_lru_eviction_order_and_get_refreshes_recency():
    cache, _ = make(size=3)
    cache.put_many([1, 2, 3], [b"1", b"2", b"3"])
    assert cache.get_many([1]) == [b"1"]  # 1 is now most recent; 2 is least recent
    cache.put_many([4], [b"4"])
    assert cache.evictions == 1
    assert cache.get_many([2]) == [None]
    assert cache.get_many([1, 3, 4]) == [b"1", b"3", b"4"]  # order now 1, 3, 4 (4 most recent)
    cache.put_many([5], [b"5"])  # evicts 1
    assert cache.get_many([1]) == [None]
    assert len(cache) == 3


def test_put_refreshes_recency_of_existing_key():
    cache, _ = make(size=2)
    cache.put_many([1, 2], [b"1", b"2"])
    cache.put_many([1], [b"1b"])
    cache.put_many([3], [b"3"])
    assert cache.get_many([1, 2, 3]) == [b"1b", None, b"3"]


def test_a_miss_does_not_refresh_anything():
    cache, _ = make(size=2)
    cache.put_many([1, 2], [b"1", b"2"])
    cache.get_many([9])
    cache.put_many([3], [b"3"])
    assert cache.get_many([1, 2, 3]) == [None, b"2", b"3"]


@pytest.mark.parametrize("size", [1, 7, 50])
def test_capacity_bound_under_random_traffic(size):
    rng = np.random.default_rng(size)
    cache, clock = make(size=size, ttl=1e9)
    model: dict[int, bytes] = {}  # reference LRU: dict order = recency
    for _ in range(300):
        if rng.random() < 0.5:
            keys = rng.integers(0, 80, int(rng.integers(1, 12))).tolist()
            values = [bytes([k % 256, int(rng.integers(256))]) for k in keys]
            cache.put_many(keys, values)
            for k, v in zip(keys, values):
                model.pop(k, None)
                model[k] = v
            while len(model) > size:
                model.pop(next(iter(model)))
        else:
            keys = rng.integers(0, 80, int(rng.integers(1, 12))).tolist()
            got = cache.get_many(keys)
            assert got == [model.get(k) for k in keys]
            for k in keys:
                if k in model:
                    model[k] = model.pop(k)
        assert len(cache) <= size
        assert len(cache) == len(model)


def test_large_uint64_keys():
    cache, _ = make()
    keys = [2**64 - 1, 2**63, 0]
    cache.put_many(keys, [b"x", b"y", b"z"])
    assert cache.get_many(np.array(keys, dtype=np.uint64).tolist()) == [b"x", b"y", b"z"]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_encode_decode_round_trip_is_bit_exact(k):
    rng = np.random.default_rng(k)
    n = 50
    experts = np.stack([rng.permutation(64)[:k] for _ in range(n)]).astype(np.int64)
    weights = rng.random((n, k)).astype(np.float32)
    weights[0] = np.float32(1 / 3)
    confidence = rng.random(n).astype(np.float32)
    entropy = (rng.random(n) * 4).astype(np.float32)
    entropy[1] = np.nextafter(np.float32(0.5), np.float32(1))
    values = encode_decisions(experts, weights, confidence, entropy)
    assert len(values) == n
    assert all(isinstance(v, bytes) and len(v) == 6 * k + 8 == decision_dtype(k).itemsize for v in values)
    back = decode_decisions(values, k)
    assert back.experts.dtype == np.int64
    np.testing.assert_array_equal(back.experts, experts)
    for got, want in ((back.weights, weights), (back.confidence, confidence), (back.entropy, entropy)):
        assert got.dtype == np.float32
        assert got.tobytes() == want.tobytes()  # bit-exact, not merely close
    # any subset / order decodes row by row
    picked = [values[i] for i in (5, 0, 5)]
    np.testing.assert_array_equal(decode_decisions(picked, k).experts, experts[[5, 0, 5]])


def test_decoded_arrays_are_writable_copies():
    values = encode_decisions(np.array([[1, 2]]), np.array([[0.75, 0.25]], np.float32),
                              np.array([0.9], np.float32), np.array([0.3], np.float32))
    back = decode_decisions(values, 2)
    back.weights[0, 0] = 0.0
    back.confidence[0] = 0.0
    assert decode_decisions(values, 2).weights[0, 0] == np.float32(0.75)


def test_encoding_through_the_cache():
    cache, _ = make()
    experts = np.array([[3, 1], [0, 2]])
    weights = np.array([[0.6, 0.4], [0.9, 0.1]], np.float32)
    conf, ent = np.array([0.7, 0.95], np.float32), np.array([1.1, 0.2], np.float32)
    cache.put_many([10, 20], encode_decisions(experts, weights, conf, ent))
    back = decode_decisions(cache.get_many([20, 10]), 2)
    np.testing.assert_array_equal(back.experts, experts[::-1])
    np.testing.assert_array_equal(back.weights, weights[::-1])


@pytest.mark.parametrize("kwargs,match", [
    (dict(ttl_s=0), "TTL"),
    (dict(ttl_s=-1.0), "TTL"),
    (dict(max_entries=0), "size"),
    (dict(min_confidence=-0.01), "confidence"),
    (dict(min_confidence=1.01), "confidence"),
])
def test_cache_policy_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CachePolicy(**kwargs)


def test_cache_policy_boundaries_are_valid():
    CachePolicy(ttl_s=1e-6, max_entries=1, min_confidence=0.0)
    CachePolicy(min_confidence=1.0)
