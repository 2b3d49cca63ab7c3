"""Live audits in the engine and the outcome format: selection, the governor's cap over learned
calls + audits, the route served stays the fast path's, the Wilson interval, the ledger, and the
``audit`` field of outcomes."""
from __future__ import annotations

import numpy as np
import orjson
import pytest

from pipeline.engine.audit import (AGREED, DISAGREED, AuditLedger, audit_selected, router_calls, same_expert_sets,
                                   wilson)
from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.context import ContextWindow
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import EventBatch, EventChunk, Tier
from pipeline.engine.hashing import cache_key
from pipeline.engine.layered import LayeredEngine
from pipeline.engine.offline import collect_statistics
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import Thresholds, build_table
from pipeline.outcomes import OutcomeError, Outcomes, decode_outcome, encode_outcomes

VOCAB = 40
SPEC = RouterSpec(vocab_size=VOCAB, hidden=16, num_experts=4, top_k=2, window=3, seed=0)


def traffic(seed: int, batches: int, size: int = 200, streams: int = 5) -> list[EventBatch]:
    rng = np.random.default_rng(seed)
    seqs = [0] * streams
    out = []
    for _ in range(batches):
        chunks = []
        for _ in range(size):
            s = int(rng.integers(streams))
            chunks.append(EventChunk(f"s{seed}-{s}", seqs[s], (int(rng.integers(VOCAB)),)))
            seqs[s] += 1
        out.append(EventBatch.from_chunks(chunks))
    return out


def table_of(router, thresholds=Thresholds(min_frequency=5, max_entropy=1.2, static_below=0)):
    stats = collect_statistics(router, traffic(99, 10), SPEC.window)
    return build_table(stats, thresholds, SPEC.top_k, router.router_id, 1)


class CountingRouter:
    """A router that counts its (batched) calls."""

    def __init__(self, inner) -> None:
        self.inner, self.spec, self.router_id, self.calls = inner, inner.spec, inner.router_id, 0

    def route(self, contexts, with_logits=False):
        self.calls += 1
        return self.inner.route(contexts, with_logits)


def run(engine, batches):
    windows: dict[str, ContextWindow] = {}
    return [engine.route_batch(b, windows) for b in batches]


def column(results, name):
    return np.concatenate([getattr(r.decisions, name) if name != "audits" else r.decisions.audit_results()
                           for r in results])


# --- selection ---------------------------------------------------------------------------------
def test_audit_selection_is_deterministic_and_close_to_the_rate():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2 ** 63, 200_000, dtype=np.int64).astype(np.uint64)
    positions = np.arange(len(keys))
    chosen = audit_selected(keys, positions, 0.05)
    np.testing.assert_array_equal(chosen, audit_selected(keys.copy(), positions.copy(), 0.05))
    assert abs(chosen.mean() - 0.05) < 0.003
    # independent of the key's bits: one context seen at every position is audited at the rate too
    same_key = audit_selected(np.full(len(keys), keys[0]), positions, 0.05)
    assert abs(same_key.mean() - 0.05) < 0.003
    assert (chosen != same_key).any()
    assert not audit_selected(keys, positions, 0.0).any() and audit_selected(keys, positions, 1.0).all()


def test_same_expert_sets_ignores_order():
    a = np.array([[0, 1], [2, 3], [1, 2]])
    b = np.array([[1, 0], [2, 3], [1, 3]])
    assert same_expert_sets(a, b).tolist() == [True, True, False]


# --- the engine ----------------------------------------------------------------------------------
def test_audits_keep_the_fast_path_route_and_tier_and_score_it_against_the_router():
    router = build_router(SPEC)
    table = table_of(router)
    assert 0 < table.size < VOCAB
    off = BudgetPolicy(enabled=False)
    plain = run(VAREngine(router, table, EngineConfig(context_window=3, budget=off)), traffic(1, 6))
    audited_engine = VAREngine(router, table, EngineConfig(context_window=3, budget=off, audit_rate=0.3))
    audited = run(audited_engine, traffic(1, 6))
    for name in ("experts", "weights", "confidence", "entropy", "tiers"):
        np.testing.assert_array_equal(column(plain, name), column(audited, name))
    audits, tiers = column(audited, "audits"), column(audited, "tiers")
    assert (audits[tiers != Tier.FAST] == -1).all()
    done = audits >= 0
    assert abs(done.sum() / (tiers == Tier.FAST).sum() - 0.3) < 0.05
    contexts = np.concatenate([r.contexts for r in audited])
    expected = same_expert_sets(column(audited, "experts")[done], router.route(contexts[done]).experts)
    np.testing.assert_array_equal(audits[done], np.where(expected, AGREED, DISAGREED))
    assert (column(plain, "audits") == -1).all()
    c = audited_engine.counters
    assert c.audits == done.sum() and c.audit_agreed == (audits == AGREED).sum()


def test_learned_calls_plus_audits_never_exceed_the_cap_in_any_window_with_one_router_call_per_batch():
    router = CountingRouter(build_router(SPEC))
    table = table_of(router.inner)
    budget = BudgetPolicy(budget=0.1, window=50)
    engine = VAREngine(router, table, EngineConfig(context_window=3, budget=budget, audit_rate=0.5))
    batches = traffic(2, 12)
    results = run(engine, batches)
    assert router.calls <= len(batches)
    tiers, audits = column(results, "tiers"), column(results, "audits")
    calls = router_calls(tiers, audits).astype(np.int64)
    sums = np.convolve(calls, np.ones(budget.window, np.int64), mode="valid")
    assert sums.max() <= budget.cap and engine.ledger.max_sliding == sums.max()
    assert (audits >= 0).any() and (tiers == Tier.LEARNED).any()
    # the audits made are the selected fast-path decisions the governor admitted: some were denied
    keys = np.concatenate([cache_key(r.decisions.ctx_hash, r.events.tokens, 0) for r in results])
    selected = audit_selected(keys, np.arange(len(keys)), 0.5) & (tiers == Tier.FAST)
    assert not (audits[~selected] >= 0).any() and 0 < (audits >= 0).sum() < selected.sum()
    assert engine.governor.admitted == calls.sum()


def test_audits_cost_learned_calls_under_the_same_cap():
    router = build_router(SPEC)
    table = table_of(router)
    budget = BudgetPolicy(budget=0.1, window=50)
    learned = {}
    for rate in (0.0, 0.5):
        results = run(VAREngine(router, table, EngineConfig(context_window=3, budget=budget, audit_rate=rate)), traffic(3, 8))
        learned[rate] = int((column(results, "tiers") == Tier.LEARNED).sum())
    assert learned[0.5] < learned[0.0]


# --- Wilson and the ledger -------------------------------------------------------------------------
@pytest.mark.parametrize("agree, n, low, high", [
    (8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (50, 100, 0.4038, 0.5962),
])
def test_wilson_interval_known_values(agree, n, low, high):
    got = wilson(agree, n)
    assert got == pytest.approx((low, high), abs=5e-4)


def test_wilson_without_observations_is_uninformative():
    assert wilson(0, 0) == (0.0, 1.0)


def test_audit_ledger_counts_per_version_and_layer():
    ledger = AuditLedger(keep=2)
    ledger.observe(0, np.array([1, 1, 2, 2]), np.int8([1, 0, -1, 1]))
    ledger.observe(1, np.int64(2), np.int8([0, 0, -1]))
    rows = {(r["table_version"], r["layer"]): r for r in ledger.rows()}
    assert (rows[(1, 0)]["audited"], rows[(1, 0)]["agreed"]) == (2, 1)
    assert (rows[(2, 0)]["audited"], rows[(2, 0)]["agreed"]) == (1, 1)
    assert rows[(2, 1)]["agreement"] == 0.0 and rows[(2, 1)]["high"] == pytest.approx(wilson(0, 2)[1])
    assert AuditLedger.from_dict(orjson.loads(orjson.dumps(ledger.to_dict()))).rows() == ledger.rows()
    ledger.observe(0, np.int64(3), np.int8([1]))
    assert sorted(v for v, lay in ledger.counts if lay == 0) == [2, 3]  # keeps the 2 newest versions


# --- outcomes -------------------------------------------------------------------------------------
def layered_results(rate: float):
    router = build_router(SPEC)
    engine = LayeredEngine([VAREngine(router, table_of(router), EngineConfig(context_window=3, audit_rate=rate,
                                                                             budget=BudgetPolicy(0.3, 100)))])
    windows: dict[str, ContextWindow] = {}
    return [engine.route_batch(b, windows) for b in traffic(4, 3)]


def test_outcomes_round_trip_audit_results_and_omit_the_field_without_audits():
    for result in layered_results(0.2):
        n = len(result.events)
        audits = result.layers[0].decisions.audit_results()
        assert (audits >= 0).any()
        records = encode_outcomes(result, np.arange(n) // 4, "w")  # chunks of 4 tokens
        bodies = [orjson.loads(v) for _, v in records]
        for start, body in zip(range(0, n, 4), bodies):
            assert ("audit" in body["layers"][0]) == bool((audits[start:start + 4] >= 0).any())
        decoded = Outcomes.concat([decode_outcome(v) for _, v in records])
        np.testing.assert_array_equal(decoded.layers[0].audit_results, audits)
        np.testing.assert_array_equal(decoded.layers[0].router_calls(),
                                      router_calls(result.layers[0].decisions.tiers, audits))
        picked = np.flatnonzero(audits >= 0)[:3]
        np.testing.assert_array_equal(decoded.select(picked).layers[0].audit_results, audits[picked])
    for result in layered_results(0.0):
        for _, v in encode_outcomes(result, np.arange(len(result.events)), "w"):
            assert "audit" not in orjson.loads(v)["layers"][0]
            assert (decode_outcome(v).layers[0].audit_results == -1).all()


GOOD = {"v": 2, "stream": "s", "seq": 4, "tokens": [7, 8], "prev": 3, "worker": "w",
        "layers": [{"layer": 0, "router_id": "r", "table_version": 1, "pos": 10, "experts": [[1, 2], [0, 3]],
                    "weights": [[0.6, 0.4], [0.5, 0.5]], "confidence": [0.6, 0.5], "entropy": [0.5, 0.7],
                    "tier": ["learned", "fast"], "ctx": [11, 12], "audit": [-1, 0]}]}


def test_decoding_audit_values():
    assert decode_outcome(orjson.dumps(GOOD)).layers[0].audit_results.tolist() == [-1, 0]
    single = {**GOOD, "token": 7, "layers": [{**GOOD["layers"][0], "experts": [1, 2], "weights": [0.6, 0.4],
                                              "confidence": 0.6, "entropy": 0.5, "tier": "fast", "ctx": 11,
                                              "audit": 1}]}
    del single["tokens"]
    assert decode_outcome(orjson.dumps(single)).layers[0].audit_results.tolist() == [1]
    for bad in ([-1, 2], [True, 0], [0]):
        record = orjson.loads(orjson.dumps(GOOD))
        record["layers"][0]["audit"] = bad
        with pytest.raises(OutcomeError, match="audit"):
            decode_outcome(orjson.dumps(record))
