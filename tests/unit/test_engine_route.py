"""VAREngine end to end: tiers, the exact-cache property, the budget, cache writes, determinism,
provenance, table swaps and TTL."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.cache import CachePolicy, MemoryDecisionCache, decode_decisions
from pipeline.engine.context import REDELIVERED, ContextWindow
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import TIER_LABELS, PAD_TOKEN, EventBatch, EventChunk, Tier
from pipeline.engine.hashing import cache_key, context_hash
from pipeline.engine.offline import collect_statistics
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import RoutingTable, Thresholds, build_table



class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SpyCache(MemoryDecisionCache):
    """A MemoryDecisionCache that records every batched call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.puts: list[tuple[list[int], list[bytes]]] = []
        self.gets: list[list[int]] = []

    def get_many(self, keys):
        self.gets.append(list(keys))
        return super().get_many(keys)

    def put_many(self, keys, values):
        self.puts.append((list(keys), list(values)))
        super().put_many(keys, values)


def make_spec(window=4, vocab=8, kind="context", seed=0):
    return RouterSpec(kind=kind, vocab_size=vocab, hidden=16, num_experts=4, top_k=2, window=window, seed=seed)


class Traffic:
    """Interleaved random single-token events of several streams, consecutive seqs and offsets."""

    def __init__(self, seed: int, vocab: int, streams: int = 6, prefix: str = "s") -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.names = [f"{prefix}{i}" for i in range(streams)]
        self.next_seq = {s: 0 for s in self.names}
        self.offset = 0

    def batch(self, n: int) -> EventBatch:
        chunks = []
        for _ in range(n):
            s = self.names[int(self.rng.integers(len(self.names)))]
            chunks.append(EventChunk(s, self.next_seq[s], (int(self.rng.integers(self.vocab)),), self.offset))
            self.next_seq[s] += 1
            self.offset += 1
        return EventBatch.from_chunks(chunks)

    def batches(self, sizes) -> list[EventBatch]:
        return [self.batch(n) for n in sizes]


def offline_table(router, window, vocab, thresholds, version=1):
    train = Traffic(1234, vocab, streams=4, prefix="train").batches([500] * 4)
    stats = collect_statistics(router, train, window)
    return build_table(stats, thresholds, router.spec.top_k, router.router_id, version)


def reference_prev_tokens(batches, window):
    """Naive per-stream deques: the W-1 previous tokens of every event (all accepted)."""
    state: dict[str, deque] = {}
    out = []
    for batch in batches:
        rows = []
        for stream, token in zip(batch.streams, batch.tokens.tolist()):
            buf = state.setdefault(stream, deque([PAD_TOKEN] * (window - 1), maxlen=max(window - 1, 0)))
            rows.append(list(buf))
            if window > 1:
                buf.append(token)
        out.append(np.array(rows, dtype=np.int64).reshape(len(rows), window - 1))
    return out


def run(engine, batches):
    windows: dict[str, ContextWindow] = {}
    return [engine.route_batch(b, windows) for b in batches]


def concat(results, name):
    return np.concatenate([getattr(r.decisions, name) for r in results])


# --- (a) every tier occurs and is correct ------------------------------------------------------


def test_every_tier_occurs_and_is_correct():
    window, vocab = 3, 8
    spec = make_spec(window, vocab)
    router, reference = build_router(spec), build_router(spec)
    table = offline_table(reference, window, vocab, Thresholds(min_frequency=1e9, max_entropy=0.0, static_below=2))
    assert table.eligible[:2].all() and not table.eligible[2:].any()
    config = EngineConfig(context_window=window, cache=CachePolicy(ttl_s=1e6, max_entries=10_000, min_confidence=0.3),
                          budget=BudgetPolicy(budget=0.2, window=50))
    cache = SpyCache(config.cache, FakeClock())
    engine = VAREngine(router, table, config, cache)
    batches = Traffic(0, vocab).batches([40, 200, 7, 300, 150, 300])
    stored: dict[int, tuple] = {}  # model of the store: key -> last confident learned decision
    seen = np.zeros(len(Tier), dtype=np.int64)
    from_store = 0
    windows: dict[str, ContextWindow] = {}
    for batch in batches:
        result = engine.route_batch(batch, windows)
        d, ctx, tokens = result.decisions, result.contexts, result.events.tokens
        assert len(d) == len(batch) and not result.rejections
        keys = cache_key(context_hash(ctx[:, :-1]), tokens, 0)
        tiers = d.tiers
        seen += np.bincount(tiers, minlength=len(Tier))

        fast = tiers == Tier.FAST
        assert table.eligible[tokens[fast]].all() and not table.eligible[tokens[~fast]].any()
        np.testing.assert_array_equal(d.experts[fast], table.experts[tokens[fast]])
        np.testing.assert_array_equal(d.weights[fast], table.weights[tokens[fast]])
        np.testing.assert_array_equal(d.confidence[fast], table.confidence[tokens[fast]])
        np.testing.assert_array_equal(d.entropy[fast], table.entropy[tokens[fast]])

        learned = tiers == Tier.LEARNED
        if learned.any():
            ref = reference.route(ctx[learned])
            np.testing.assert_array_equal(d.experts[learned], ref.experts)
            np.testing.assert_allclose(d.weights[learned], ref.weights, atol=1e-6)
            np.testing.assert_allclose(d.confidence[learned], ref.confidence, atol=1e-6)
            np.testing.assert_allclose(d.entropy[learned], ref.entropy, atol=1e-5)
        assert len(set(keys[learned].tolist())) == int(learned.sum())  # a key is routed at most once a batch

        fb = tiers == Tier.BUDGET_FALLBACK
        for got, want in zip((d.experts[fb], d.weights[fb], d.confidence[fb], d.entropy[fb]),
                             table.fallback_routes(tokens[fb])):
            np.testing.assert_array_equal(got, want)

        in_batch = {k: i for i, k in reversed(list(enumerate(keys.tolist()))) if learned[i]}
        for i in np.flatnonzero(tiers == Tier.CACHE).tolist():
            k = int(keys[i])
            if k in in_batch:  # repeat of a key learned earlier in this batch
                j = in_batch[k]
                assert j < i
                src = (d.experts[j], d.weights[j], d.confidence[j], d.entropy[j])
            else:  # from the store: an earlier batch's learned decision
                assert k in stored, "a cache hit must come from an earlier learned decision"
                src = stored[k]
                from_store += 1
            np.testing.assert_array_equal(d.experts[i], src[0])
            np.testing.assert_array_equal(d.weights[i], src[1])
            np.testing.assert_array_equal(d.confidence[i], src[2])
        for k, i in in_batch.items():
            if d.confidence[i] >= config.cache.min_confidence:
                stored[k] = (d.experts[i].copy(), d.weights[i].copy(), d.confidence[i], d.entropy[i])
    # every tier but the prior (every token of this traffic has an entry; see test_pairs.py)
    assert (seen[:Tier.PRIOR] > 0).all() and seen[Tier.PRIOR] == 0, dict(zip(TIER_LABELS, seen.tolist()))
    assert from_store > 0  # hits served by the store, not only in-batch repeats
    np.testing.assert_array_equal(engine.counters.tiers, seen)
    assert engine.counters.decisions == sum(len(b) for b in batches)
    assert engine.counters.router_calls == router.calls
    assert engine.counters.cache_hits == seen[Tier.CACHE]


def test_one_store_lookup_and_at_most_one_write_per_batch():
    spec = make_spec(4, 8)
    engine = VAREngine(build_router(spec), RoutingTable.empty(8, 4, 2, spec.router_id),
                       EngineConfig(context_window=4, cache=CachePolicy(min_confidence=0.0)),
                       cache := SpyCache(CachePolicy(min_confidence=0.0), FakeClock()))
    batches = Traffic(5, 8).batches([100, 100, 100])
    run(engine, batches)
    assert len(cache.gets) == 3 and len(cache.puts) <= 3
    assert all(len(g) == len(set(g)) for g in cache.gets)  # unique keys only


# --- (b) the exact-cache property --------------------------------------------------------------


@pytest.mark.parametrize("window", [2, 3, 4])
def test_cached_and_learned_decisions_equal_the_router_exactly(window):
    vocab = 6  # tiny vocabulary: contexts repeat, so the cache serves many decisions
    spec = make_spec(window, vocab)
    router, reference = build_router(spec), build_router(spec)
    table = offline_table(reference, window, vocab, Thresholds(min_frequency=1e9, max_entropy=0.0, static_below=1))
    config = EngineConfig(context_window=window, cache=CachePolicy(ttl_s=1e6, max_entries=100_000, min_confidence=0.0),
                          budget=BudgetPolicy(budget=0.5, window=100))
    engine = VAREngine(router, table, config)
    batches = Traffic(42, vocab, streams=8).batches([250] * 16)  # 4000 events
    results = run(engine, batches)
    tiers = concat(results, "tiers")
    checked = np.isin(tiers, [Tier.CACHE, Tier.LEARNED])
    assert (tiers == Tier.CACHE).sum() > 1000 and (tiers == Tier.LEARNED).sum() > 30
    ctx = np.concatenate([r.contexts for r in results])[checked]
    ref = reference.route(ctx)
    experts, weights = concat(results, "experts")[checked], concat(results, "weights")[checked]
    confidence = concat(results, "confidence")[checked]
    wrong = np.flatnonzero((experts != ref.experts).any(axis=1)
                           | (np.abs(weights - ref.weights).max(axis=1) > 1e-6)
                           | (np.abs(confidence - ref.confidence) > 1e-6))
    assert len(wrong) == 0, f"{len(wrong)} of {checked.sum()} cache/learned decisions differ from the router"


def test_contexts_seen_by_the_engine_are_the_stream_windows():
    window, vocab = 4, 8
    spec = make_spec(window, vocab)
    batches = Traffic(3, vocab).batches([50, 1, 120, 33])
    results = run(VAREngine(build_router(spec), RoutingTable.empty(vocab, 4, 2, spec.router_id),
                            EngineConfig(context_window=window)), batches)
    for r, batch, prev in zip(results, batches, reference_prev_tokens(batches, window)):
        np.testing.assert_array_equal(r.contexts[:, :-1], prev)
        np.testing.assert_array_equal(r.contexts[:, -1], batch.tokens)


# --- (c) the budget --------------------------------------------------------------------------------


def window_counts(flags: np.ndarray, window: int) -> np.ndarray:
    sums = np.concatenate(([0], np.cumsum(flags.astype(np.int64))))
    if len(flags) <= window:
        return np.array([sums[-1]])
    return sums[window:] - sums[:-window]


@pytest.mark.parametrize("budget,bwindow,sizes", [
    (0.1, 100, [150, 300, 80, 500, 170]),
    (0.25, 40, [64] * 20),
    (0.05, 200, [1000, 200]),
])
def test_governor_caps_learned_calls_in_every_window(budget, bwindow, sizes):
    window, vocab = 4, 30
    spec = make_spec(window, vocab)
    policy = BudgetPolicy(budget=budget, window=bwindow)
    engine = VAREngine(build_router(spec), RoutingTable.empty(vocab, 4, 2, spec.router_id),
                       EngineConfig(context_window=window, budget=policy))
    results = run(engine, Traffic(8, vocab).batches(sizes))
    tiers = concat(results, "tiers")
    learned = tiers == Tier.LEARNED
    counts = window_counts(learned, bwindow)
    assert counts.max() <= policy.cap
    assert (counts / bwindow <= budget + 1e-12).all()
    assert (tiers == Tier.PRIOR).any()  # the cap really bound (an empty table: every token takes the prior)
    assert engine.ledger.max_sliding <= policy.cap
    assert engine.ledger.decisions == len(tiers)
    assert engine.ledger.block_learned == [int(learned[i:i + bwindow].sum()) for i in range(0, len(tiers), bwindow)]


def test_ledger_matches_the_decisions_with_batches_at_least_the_window():
    window, vocab, bwindow = 4, 30, 50
    spec = make_spec(window, vocab)
    engine = VAREngine(build_router(spec), RoutingTable.empty(vocab, 4, 2, spec.router_id),
                       EngineConfig(context_window=window, budget=BudgetPolicy(budget=0.3, window=bwindow, enabled=False)))
    results = run(engine, Traffic(9, vocab).batches([60, 49, 200, 75]))
    learned = concat(results, "tiers") == Tier.LEARNED
    assert engine.ledger.max_sliding == window_counts(learned, bwindow).max()


def test_ledger_matches_the_decisions_with_small_batches():
    window, vocab, bwindow = 4, 30, 50
    spec = make_spec(window, vocab)
    engine = VAREngine(build_router(spec), RoutingTable.empty(vocab, 4, 2, spec.router_id),
                       EngineConfig(context_window=window, budget=BudgetPolicy(budget=0.3, window=bwindow, enabled=False)))
    results = run(engine, Traffic(9, vocab).batches([20] * 15))
    learned = concat(results, "tiers") == Tier.LEARNED
    assert engine.ledger.max_sliding == window_counts(learned, bwindow).max()


def test_without_governor_nothing_is_budget_fallback():
    window, vocab = 4, 30
    spec = make_spec(window, vocab)
    engine = VAREngine(build_router(spec), RoutingTable.empty(vocab, 4, 2, spec.router_id),
                       EngineConfig(context_window=window, budget=BudgetPolicy(budget=0.0, window=10, enabled=False)))
    results = run(engine, Traffic(10, vocab).batches([200, 300]))
    tiers = concat(results, "tiers")
    assert not (tiers == Tier.BUDGET_FALLBACK).any()
    assert (tiers == Tier.LEARNED).sum() > 100
    assert engine.governor.denied == 0


# --- (d) cache writes ----------------------------------------------------------------------------


def test_only_confident_learned_decisions_are_written():
    window, vocab = 4, 12
    spec = make_spec(window, vocab)
    reference = build_router(spec)
    min_conf = 0.9
    policy = CachePolicy(ttl_s=1e6, max_entries=100_000, min_confidence=min_conf)
    cache = SpyCache(policy, FakeClock())
    engine = VAREngine(build_router(spec), RoutingTable.empty(vocab, 4, 2, spec.router_id),
                       EngineConfig(context_window=window, cache=policy, budget=BudgetPolicy(enabled=False)), cache)
    batches = Traffic(11, vocab).batches([300, 300, 300])
    windows: dict[str, ContextWindow] = {}
    below = 0
    for batch in batches:
        before = len(cache.puts)
        r = engine.route_batch(batch, windows)
        d = r.decisions
        learned = np.flatnonzero(d.tiers == Tier.LEARNED)
        keys = cache_key(d.ctx_hash, r.events.tokens, 0)
        confident = learned[d.confidence[learned] >= min_conf]
        below += len(learned) - len(confident)
        assert r.cache_keys == keys[confident].tolist()
        written = cache.puts[before:]
        if len(confident) == 0:
            assert written == []
            continue
        (wkeys, wvalues), = written
        assert wkeys == r.cache_keys and wvalues == r.cache_values
        back = decode_decisions(wvalues, 2)
        assert (back.confidence >= min_conf).all()
        np.testing.assert_array_equal(back.experts, d.experts[confident])
        np.testing.assert_array_equal(back.weights, d.weights[confident])
        np.testing.assert_array_equal(back.confidence, d.confidence[confident])
        np.testing.assert_array_equal(back.entropy, d.entropy[confident])
        exact = reference.route(r.contexts[confident])  # what was written is the router's own decision
        np.testing.assert_array_equal(back.experts, exact.experts)
        np.testing.assert_array_equal(back.weights, exact.weights)
        # nothing but learned decisions is ever written
        assert set(wkeys) <= set(keys[learned].tolist())
    assert below > 0  # the threshold really filtered something


def test_nothing_is_written_when_no_learned_decision_is_confident():
    spec = make_spec(4, 8)
    cache = SpyCache(CachePolicy(min_confidence=1.0), FakeClock())
    engine = VAREngine(build_router(spec), RoutingTable.empty(8, 4, 2, spec.router_id),
                       EngineConfig(context_window=4, cache=CachePolicy(min_confidence=1.0),
                                    budget=BudgetPolicy(enabled=False)), cache)
    results = run(engine, Traffic(12, 8).batches([100, 100]))
    assert cache.puts == [] and len(cache) == 0
    assert all(r.cache_keys == [] for r in results)


# --- (e) in-batch repeats --------------------------------------------------------------------------


def test_same_key_twice_in_one_batch_is_routed_once():
    spec = make_spec(4, 8)
    router = build_router(spec)
    engine = VAREngine(router, RoutingTable.empty(8, 4, 2, spec.router_id),
                       EngineConfig(context_window=4, cache=CachePolicy(min_confidence=1.0),
                                    budget=BudgetPolicy(enabled=False)))
    # streams a and b start identically -> same context (PAD, PAD, PAD | 5) and then (PAD, PAD, 5 | 3)
    batch = EventBatch.from_events([("a", 0, 5), ("b", 0, 5), ("a", 1, 3), ("c", 0, 7), ("b", 1, 3)])
    result = engine.route_batch(batch, {})
    tiers = result.decisions.tiers.tolist()
    assert tiers == [Tier.LEARNED, Tier.CACHE, Tier.LEARNED, Tier.LEARNED, Tier.CACHE]
    assert (router.calls, router.routed) == (1, 3)
    d = result.decisions
    np.testing.assert_array_equal(d.experts[1], d.experts[0])
    np.testing.assert_array_equal(d.weights[4], d.weights[2])
    assert engine.counters.cache_hits == 2 and engine.counters.router_calls == 1


def test_repeat_of_a_denied_key_takes_the_fallback_too():
    spec = make_spec(4, 8)
    router = build_router(spec)
    table = RoutingTable.empty(8, 4, 2, spec.router_id)
    engine = VAREngine(router, table, EngineConfig(context_window=4, budget=BudgetPolicy(budget=0.1, window=10)))
    batch = EventBatch.from_events([("a", 0, 1), ("b", 0, 2), ("c", 0, 2)])  # cap 1: only the first is learned
    tiers = engine.route_batch(batch, {}).decisions.tiers.tolist()
    assert tiers == [Tier.LEARNED, Tier.PRIOR, Tier.PRIOR]  # the table is empty: no entry but the prior
    assert router.routed == 1


# --- (f) determinism -----------------------------------------------------------------------------


def test_two_fresh_engines_give_identical_decisions():
    window, vocab = 4, 10

    def one_run():
        spec = make_spec(window, vocab)
        router = build_router(spec)
        table = offline_table(router, window, vocab, Thresholds(min_frequency=100, max_entropy=0.5, static_below=2))
        engine = VAREngine(router, table, EngineConfig(context_window=window, cache=CachePolicy(min_confidence=0.5),
                                                       budget=BudgetPolicy(budget=0.2, window=60)),
                           MemoryDecisionCache(CachePolicy(min_confidence=0.5), FakeClock()))
        return run(engine, Traffic(21, vocab).batches([90, 300, 5, 400]))

    a, b = one_run(), one_run()
    for ra, rb in zip(a, b):
        for name in ("experts", "weights", "confidence", "entropy", "tiers", "ctx_hash"):
            np.testing.assert_array_equal(getattr(ra.decisions, name), getattr(rb.decisions, name), err_msg=name)
        assert ra.cache_keys == rb.cache_keys and ra.cache_values == rb.cache_values
        assert ra.windows == rb.windows
    assert len(set(np.concatenate([r.decisions.tiers for r in a]).tolist())) >= 3


# --- (g) provenance ------------------------------------------------------------------------------


def test_decisions_carry_provenance():
    window, vocab = 4, 10
    spec = make_spec(window, vocab, seed=3)
    router = build_router(spec)
    table = offline_table(router, window, vocab, Thresholds(min_frequency=1e9, max_entropy=0.0, static_below=3),
                          version=5)
    engine = VAREngine(router, table, EngineConfig(context_window=window, layer=2,
                                                   cache=CachePolicy(min_confidence=0.5)))
    batches = Traffic(31, vocab).batches([70, 130])
    results = run(engine, batches)
    for r, prev in zip(results, reference_prev_tokens(batches, window)):
        d = r.decisions
        assert d.table_version == 5 and d.router_id == spec.router_id == "context-v10-h16-e4-k2-w4-s3-a0.05-c1-l1"
        assert d.layer == 2
        assert d.ctx_hash.dtype == np.uint64
        np.testing.assert_array_equal(d.ctx_hash, context_hash(prev))
        # cache writes use layer-2 keys
        assert set(r.cache_keys) <= set(cache_key(d.ctx_hash, r.events.tokens, 2).tolist())
        assert not set(r.cache_keys) & set(cache_key(d.ctx_hash, r.events.tokens, 0).tolist())
    assert any(r.cache_keys for r in results)


def test_layer_scopes_the_cache():
    spec = make_spec(4, 8)
    shared = MemoryDecisionCache(CachePolicy(min_confidence=0.0), FakeClock())
    table = RoutingTable.empty(8, 4, 2, spec.router_id)
    e0 = VAREngine(build_router(spec), table, EngineConfig(context_window=4, layer=0, cache=CachePolicy(min_confidence=0.0),
                                                          budget=BudgetPolicy(enabled=False)), shared)
    e1 = VAREngine(build_router(spec), table, EngineConfig(context_window=4, layer=1, cache=CachePolicy(min_confidence=0.0),
                                                          budget=BudgetPolicy(enabled=False)), shared)
    batch = EventBatch.from_events([("a", 0, 1), ("a", 1, 2)])
    e0.route_batch(batch, {})
    assert (e1.route_batch(batch, {}).decisions.tiers == Tier.LEARNED).all()
    assert (e0.route_batch(batch, {}).decisions.tiers == Tier.CACHE).all()


# --- (h) table swaps -----------------------------------------------------------------------------


def test_set_table_rejects_a_table_for_another_router():
    window, vocab = 4, 10
    spec = make_spec(window, vocab)
    router = build_router(spec)
    engine = VAREngine(router, RoutingTable.empty(vocab, 4, 2, spec.router_id), EngineConfig(context_window=window))
    other = build_router(make_spec(window, vocab, seed=1))
    foreign = offline_table(other, window, vocab, Thresholds(), version=2)
    with pytest.raises(ValueError, match="built for router"):
        engine.set_table(foreign)
    with pytest.raises(ValueError):
        VAREngine(router, foreign, EngineConfig(context_window=window))
    wrong_vocab = RoutingTable.empty(vocab + 1, 4, 2, spec.router_id)
    with pytest.raises(ValueError, match="vocab"):
        engine.set_table(wrong_vocab)
    # a matching table is accepted and used from the next batch on
    own = offline_table(router, window, vocab, Thresholds(min_frequency=0, max_entropy=10, static_below=0),
                        version=3)
    engine.set_table(own)
    d = engine.route_batch(Traffic(1, vocab).batch(20), {}).decisions
    assert d.table_version == 3 and (d.tiers == Tier.FAST).all()


# --- (i) TTL through the engine ------------------------------------------------------------------


def test_cached_key_is_routed_again_after_the_ttl():
    spec = make_spec(4, 8)
    router = build_router(spec)
    clock = FakeClock(100.0)
    policy = CachePolicy(ttl_s=10.0, max_entries=100, min_confidence=0.0)
    engine = VAREngine(router, RoutingTable.empty(8, 4, 2, spec.router_id),
                       EngineConfig(context_window=4, cache=policy, budget=BudgetPolicy(enabled=False)),
                       MemoryDecisionCache(policy, clock))

    def route(stream):  # a new stream: context (PAD, PAD, PAD | 5), the same key every time
        return engine.route_batch(EventBatch.from_events([(stream, 0, 5)]), {}).decisions

    first = route("a")
    assert first.tiers.tolist() == [Tier.LEARNED] and router.routed == 1
    clock.now = 109.999
    hit = route("b")
    assert hit.tiers.tolist() == [Tier.CACHE] and router.routed == 1
    np.testing.assert_array_equal(hit.experts, first.experts)
    clock.now = 110.0
    assert route("c").tiers.tolist() == [Tier.LEARNED] and router.routed == 2
    clock.now = 115.0
    assert route("d").tiers.tolist() == [Tier.CACHE] and router.routed == 2


# --- rejections through the engine -----------------------------------------------------------------


def test_redelivered_events_are_rejected_and_not_routed():
    spec = make_spec(4, 8)
    router = build_router(spec)
    engine = VAREngine(router, RoutingTable.empty(8, 4, 2, spec.router_id),
                       EngineConfig(context_window=4, budget=BudgetPolicy(enabled=False)))
    traffic = Traffic(2, 8)
    batch = traffic.batch(30)
    windows: dict[str, ContextWindow] = {}
    engine.route_batch(batch, windows)
    saved = dict(windows)
    again = engine.route_batch(batch, windows)
    assert len(again.decisions) == 0 and len(again.rejections) == 30
    assert {r.kind for r in again.rejections} == {REDELIVERED}
    assert windows == saved and engine.counters.rejected == 30 and engine.counters.decisions == 30
