"""The compiled kernels against the numpy definitions they implement (pipeline.engine.kernels)."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from pipeline.engine import kernels, table_kernels
from pipeline.engine.audit import AGREED, DISAGREED, audit_selected
from pipeline.engine.budget import BudgetGovernor, BudgetPolicy
from pipeline.engine.engine import audit_threshold, key_salt
from pipeline.engine.events import KeyKind, Tier
from pipeline.engine.hashing import cache_key, context_hash, mix64
from pipeline.engine.pairs import PairRoutes, pair_ids
from pipeline.engine.stats import TokenStats
from pipeline.engine.table import Thresholds, build_table

RNG = np.random.default_rng(7)


def test_constants_are_the_enums():
    assert (kernels.CACHE, kernels.FAST, kernels.LEARNED, kernels.BUDGET_FALLBACK, kernels.PRIOR) == tuple(Tier)
    assert (kernels.EXACT, kernels.PAIR, kernels.TOKEN, kernels.PRIOR_KEY) == tuple(KeyKind)
    assert (kernels.DISAGREED, kernels.AGREED) == (DISAGREED, AGREED)
    assert (table_kernels.PAIR, table_kernels.TOKEN, table_kernels.PRIOR_KEY) == tuple(KeyKind)[1:]


def _splitmix_finaliser(x: int) -> int:
    """Reference in Python integers (Steele, Lea & Flood's splitmix64 output step)."""
    m = (1 << 64) - 1
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & m
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_mix64_is_the_splitmix64_finaliser():
    values = np.concatenate((np.array([0, 1, 2 ** 64 - 1], np.uint64),
                             RNG.integers(0, 2 ** 63, 200).astype(np.uint64) * np.uint64(3)))
    assert mix64(values).tolist() == [_splitmix_finaliser(int(v)) for v in values]
    assert mix64(values.reshape(-1, 7)).shape == (29, 7)


@pytest.mark.parametrize("window", [1, 2, 4, 7])
@pytest.mark.parametrize("layer", [0, 3])
def test_context_keys_are_the_hashing_definitions(window, layer):
    contexts = RNG.integers(-1, 5000, (300, window))
    contexts[:5, :-1] = -1  # stream starts (PAD)
    hashes, keys = kernels.context_keys(contexts, key_salt(layer))
    expected = context_hash(contexts[:, :-1])
    np.testing.assert_array_equal(hashes, expected)
    np.testing.assert_array_equal(keys, cache_key(expected, contexts[:, -1], layer))
    assert hashes.dtype == keys.dtype == np.uint64


def test_context_keys_of_a_column_slice_match_a_copy():
    wide = RNG.integers(0, 100, (50, 6))
    narrow = wide[:, 2:]  # the layered engine passes a window's columns of wider contexts
    assert not narrow.flags.c_contiguous
    for a, b in zip(kernels.context_keys(narrow, key_salt(0)), kernels.context_keys(narrow.copy(), key_salt(0))):
        np.testing.assert_array_equal(a, b)


def test_first_occurrences_dedupes_in_arrival_order():
    keys = RNG.integers(0, 40, 500).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    looked = RNG.random(500) < 0.7
    unique, inverse = kernels.first_occurrences(keys, looked)
    assert len(set(unique.tolist())) == len(unique) == len(set(keys[looked].tolist()))
    np.testing.assert_array_equal(inverse[~looked], -1)
    np.testing.assert_array_equal(unique[inverse[looked]], keys[looked])
    firsts = [i for i in np.flatnonzero(looked) if keys[i] not in set(keys[np.flatnonzero(looked)[np.flatnonzero(looked) < i]].tolist())]
    np.testing.assert_array_equal(unique, keys[firsts])


def test_keyed_is_keys_then_first_occurrences_of_every_row():
    contexts = RNG.integers(-1, 3, (400, 4))  # at most 4 ** 4 distinct contexts: repeats
    hashes, keys, unique, inverse = kernels.keyed(contexts, key_salt(2))
    want_hashes, want_keys = kernels.context_keys(contexts, key_salt(2))
    want_unique, want_inverse = kernels.first_occurrences(want_keys, np.ones(len(contexts), bool))
    for got, want in ((hashes, want_hashes), (keys, want_keys), (unique, want_unique), (inverse, want_inverse)):
        np.testing.assert_array_equal(got, want)
    assert len(unique) < len(contexts)


def test_first_occurrences_of_nothing():
    unique, inverse = kernels.first_occurrences(np.zeros(0, np.uint64), np.zeros(0, bool))
    assert unique.shape == inverse.shape == (0,)


def _table(vocab=50, experts=6, k=2, pairs=40):
    stats = TokenStats(vocab, experts)
    tokens = RNG.integers(0, vocab - 10, 4000)  # the last 10 tokens are never seen: the prior
    gate = RNG.dirichlet(np.ones(experts) * 0.3, len(tokens)).astype(np.float32)
    top = np.argsort(-gate, axis=1)[:, :k]
    entropy = -(gate * np.log(gate + 1e-9)).sum(axis=1).astype(np.float32)
    stats.observe_tokens(tokens)
    stats.observe_routing(tokens, top, np.take_along_axis(gate, top, 1), gate.max(axis=1), entropy)
    table = build_table(stats, Thresholds(min_frequency=20, max_entropy=1.2, static_below=3), k, "r", 1)
    ids = np.unique(RNG.integers(0, vocab * vocab, pairs))
    table.pairs = PairRoutes(ids, RNG.random(len(ids)) < 0.5, RNG.integers(0, experts, (len(ids), k)).astype(np.int16),
                             RNG.random((len(ids), k)).astype(np.float32), RNG.random(len(ids)).astype(np.float32),
                             RNG.random(len(ids)).astype(np.float32), np.ones(len(ids)))
    return table


def _numpy_resolve(table, prev, tokens):
    """The fast-path resolution as table.py defines it, in numpy."""
    keys, ids = table.pair_entries.keys, pair_ids(prev, tokens, table.vocab_size)
    pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    row = np.where((keys[pos] == ids) & (ids >= 0), pos, -1)
    has_pair, known = row >= 0, table.known[tokens]
    kind = np.where(has_pair, KeyKind.PAIR, np.where(known, KeyKind.TOKEN, KeyKind.PRIOR))
    static = known & table.thresholds.static(table.vocab_size)[tokens]
    eligible = np.where(has_pair, table.pair_entries.eligible[np.maximum(row, 0)] | static, table.eligible[tokens])
    return kind, eligible, row


def test_resolve_and_routes_match_numpy():
    table = _table()
    pair = table.pair_entries.keys[RNG.integers(0, len(table.pair_entries), 200)]
    prev = np.concatenate((pair // table.vocab_size, RNG.integers(-1, table.vocab_size, 300)))
    tokens = np.concatenate((pair % table.vocab_size, RNG.integers(0, table.vocab_size, 300)))
    look = table.resolve(prev, tokens)
    kind, eligible, row = _numpy_resolve(table, prev, tokens)
    np.testing.assert_array_equal(look.kind, kind)
    np.testing.assert_array_equal(look.eligible, eligible)
    np.testing.assert_array_equal(look.pair_row, row)
    assert {KeyKind.PAIR, KeyKind.TOKEN, KeyKind.PRIOR} <= set(look.kind.tolist())
    rows = np.arange(len(tokens))
    experts, weights, conf, ent = table.routes(look, rows, tokens)
    by_token = table.fallback_routes(tokens)
    p, use = table.pair_entries, row >= 0
    for got, want, pair_values in zip((experts, weights, conf, ent), by_token,
                                      (p.experts, p.weights, p.confidence, p.entropy)):
        want = want.copy()
        want[use] = pair_values[row[use]]
        np.testing.assert_array_equal(got, want)


def test_resolve_rejects_tokens_outside_the_vocabulary():
    table = _table()
    with pytest.raises(IndexError):
        table.resolve(np.array([-1]), np.array([table.vocab_size]))


def _deque_admit(positions_batches, window, cap):
    recent, out = deque(), []
    for positions in positions_batches:
        for p in positions:
            while recent and recent[0] <= p - window:
                recent.popleft()
            out.append(len(recent) < cap)
            if out[-1]:
                recent.append(p)
    return np.array(out)


@pytest.mark.parametrize("budget,window", [(0.15, 100), (0.0, 50), (0.5, 7), (1.0, 10)])
def test_admit_is_the_greedy_sliding_window(budget, window):
    policy = BudgetPolicy(budget, window)
    positions = np.cumsum(RNG.integers(1, 4, 2000))
    batches = np.array_split(positions, 37)
    governor = BudgetGovernor(policy)
    got = np.concatenate([governor.admit(b) for b in batches])
    np.testing.assert_array_equal(got, _deque_admit(batches, window, policy.cap))
    assert governor.admitted == got.sum() and governor.denied == len(got) - got.sum()


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.5, 1.0])
def test_audit_selection_is_audit_selected(rate):
    keys = RNG.integers(0, 2 ** 63, 3000).astype(np.uint64)
    mode, threshold = audit_threshold(rate)
    got = np.array([kernels._audited(k, p, mode, threshold) for p, k in enumerate(keys)]) if mode == 2 else None
    want = audit_selected(keys, np.arange(len(keys)), rate)
    if got is not None:
        np.testing.assert_array_equal(got, want)
    else:
        assert want.all() == (mode == 1) and want.any() == (mode == 1)


def test_tally_counts_tiers_keys_and_router_calls():
    tiers = RNG.integers(0, len(Tier), 500).astype(np.int8)
    kinds = RNG.integers(0, len(KeyKind), 500).astype(np.int8)
    audits = RNG.integers(-1, 2, 500).astype(np.int8)
    per_tier, counts = np.full(len(Tier), 3, np.int64), np.full((len(Tier), len(KeyKind)), 2, np.int64)
    hits, audited, agreed, calls = kernels.tally(tiers, kinds, audits, per_tier, counts)  # added to the counts
    for t in range(len(Tier)):
        assert per_tier[t] == 3 + (tiers == t).sum()
        for k in range(len(KeyKind)):
            assert counts[t, k] == 2 + ((tiers == t) & (kinds == k)).sum()
    assert hits == (tiers == Tier.CACHE).sum()
    assert audited == (audits >= 0).sum() and agreed == (audits == AGREED).sum()
    np.testing.assert_array_equal(calls, (tiers == Tier.LEARNED) | (audits >= 0))


WARM_UP_COVERS_ROUTING = """
import numpy as np
from pipeline.engine import batch_kernels, budget_kernels, cache_kernels, context_kernels, kernels
from pipeline.engine.warm_up import warm_up
from pipeline.engine.cache import CachePolicy, MemoryDecisionCache
from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import EventBatch
from pipeline.engine.offline import collect_statistics
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import Thresholds, build_table
warm_up()
compiled = [getattr(m, n) for m in (kernels, cache_kernels, budget_kernels, context_kernels, batch_kernels)
            for n in dir(m)]
compiled = {f.__name__: f for f in compiled if hasattr(f, "signatures")}
before = {n: set(f.signatures) for n, f in compiled.items()}
V = 12
router = build_router(RouterSpec.preset("seed", vocab_size=V))
rng = np.random.default_rng(0)
def batch_of(n, windows):
    streams = rng.integers(0, 3, n)
    seqs = np.zeros(n, np.int64)
    for s in range(3):
        rows = np.flatnonzero(streams == s)
        start = windows[f"s{s}"].last_seq + 1 if f"s{s}" in windows else 0
        seqs[rows] = start + np.arange(len(rows))
    return EventBatch(["s0", "s1", "s2"], streams, seqs, rng.integers(0, 3, n), np.full(n, -1))
stats = collect_statistics(router, [batch_of(200, {})], 4)
table = build_table(stats, Thresholds(min_frequency=0, max_entropy=0.9, static_below=0), router.spec.top_k,
                    router.router_id, 1)
table.eligible[:], table.eligible[0], table.known[2] = False, True, False  # 0 fast, 1 learned, 2 has no entry
config = EngineConfig(budget=BudgetPolicy(0.5, 100), audit_rate=0.5)
byte_cache = MemoryDecisionCache(CachePolicy(max_entries=50))  # a byte store, as a worker's Redis
for engine in (VAREngine(router, table, config), VAREngine(router, table, config, byte_cache)):
    windows = {}
    for _ in range(6):
        engine.route_batch(batch_of(64, windows), windows)
    c = engine.counters
    assert c.cache_hits > 0 and c.audits > 0 and c.tiers.min() > 0, c  # every tier, hits and audits
assert len(engine.cache) == 50 and engine.cache.evictions > 0  # the array cache grew, evicted: see above
added = {n: set(f.signatures) - before[n] for n, f in compiled.items()}
assert not any(added.values()), added
print("ok")
"""


def test_warm_up_compiles_the_signatures_routing_uses():
    """A fresh process: after warm_up, routing batches (cache hits, audits) compiles nothing new."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", WARM_UP_COVERS_ROUTING], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
