"""The streaming pipeline with several MoE layers, on the in-memory twins: the router worker's batch
processing on a LayeredEngine, the version-2 outcome format, table sets, the per-layer refresher."""
from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from pipeline.corpus.jsonl import iter_batches
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.budget import BudgetPolicy, BudgetLedger
from pipeline.engine.context import corpus_context_hashes
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import Tier
from pipeline.engine.layered import LayeredEngine
from pipeline.engine.layered_refresher import LayeredRefresher, read_layer_snapshots
from pipeline.engine.offline import collect_statistics
from pipeline.engine.records import encode_chunk
from pipeline.engine.refresher import RefreshPolicy, StatsRefresher
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import RoutingTable, Thresholds, build_table
from pipeline.outcomes import OutcomeError, Outcomes, decode_outcome, tokens_per_record
from pipeline.stores.memory_store import MemoryRoutingStore
from pipeline.stores.keys import RedisKeys, table_set_id
from pipeline.stream.processor import InMessage, RouterProcessor

WINDOWS = (3, 5, 7)  # three layers with growing receptive fields, like a model's
BUDGET = BudgetPolicy(budget=0.2, window=100)


def routers():
    return [build_router(RouterSpec(vocab_size=200, hidden=16, num_experts=4, top_k=2, window=w, seed=l))
            for l, w in enumerate(WINDOWS)]


def make(budget: BudgetPolicy = BUDGET):
    rs = routers()
    engine = LayeredEngine([VAREngine(r, RoutingTable.empty(200, 4, 2, r.router_id),
                                      EngineConfig(context_window=r.spec.window, layer=l, budget=budget))
                            for l, r in enumerate(rs)])
    store = MemoryRoutingStore(layers=len(rs))
    return RouterProcessor(engine, store, "w-test"), store, {}


def corpus(n: int = 400, chunk: int = 1, seed: int = 1):
    return list(generate(SyntheticSpec(vocab_size=200, num_streams=3, tokens_per_stream=n, chunk_size=chunk,
                                       seed=seed)))


def messages_for(chunks, start: int = 0) -> list[InMessage]:
    return [InMessage(c.stream.encode(), encode_chunk(c), 0, start + i) for i, c in enumerate(chunks)]


def route_all(processor, chunks, windows, batch: int = 100):
    outs = []
    for i in range(0, len(chunks), batch):
        out = asyncio.run(processor.process(messages_for(chunks[i:i + batch], i), windows.get))
        windows.update(out.windows)
        outs.append(out)
    return outs


def decoded(outs) -> Outcomes:
    return Outcomes.concat([decode_outcome(v) for out in outs for _, v in out.outcomes])


def test_every_layer_routed_with_one_fetch_and_one_write_per_batch():
    processor, store, windows = make()
    chunks = corpus(300)
    trips = []
    for i in range(0, len(chunks), 150):
        before = store.round_trips
        out = asyncio.run(processor.process(messages_for(chunks[i:i + 150], i), windows.get))
        windows.update(out.windows)
        trips.append(store.round_trips - before)
        assert out.result is not None and len(out.result.layers) == len(WINDOWS)
    assert all(t <= 2 for t in trips)  # one fetch (+ at most one write) for all layers together
    assert processor.engine.layers[2].counters.router_calls <= len(trips)  # one router call per layer and batch


def test_outcomes_carry_every_layer_with_its_own_context_and_provenance():
    processor, _, windows = make()
    chunks = corpus(200, chunk=4)
    got = decoded(route_all(processor, chunks, windows))
    assert len(got) == sum(len(c) for c in chunks) == len(set(zip(got.streams, got.seqs.tolist())))
    assert [layer.layer for layer in got.layers] == [0, 1, 2]
    for layer, (window, router) in enumerate(zip(WINDOWS, routers())):
        ref = corpus_context_hashes(chunks, window)
        assert [ref[k] for k in zip(got.streams, got.seqs.tolist())] == got.layers[layer].ctx.tolist()
        assert set(got.layers[layer].router_ids) == {router.router_id}
    assert len({tuple(layer.ctx[:50].tolist()) for layer in got.layers}) == 3  # different receptive fields


def test_each_layer_holds_its_own_budget_and_its_exact_decisions_are_its_routers():
    processor, _, windows = make()
    chunks = corpus(700)
    outs = route_all(processor, chunks, windows)
    got = decoded(outs)
    for layer in got.layers:
        flags = np.zeros(int(layer.positions.max()) + 1, bool)
        flags[layer.positions] = layer.learned()
        ledger = BudgetLedger(BUDGET.window)
        ledger.record(flags)
        assert ledger.max_sliding <= int(BUDGET.budget * BUDGET.window)
        assert layer.learned().any()
    for out in outs:  # learned and cached decisions are the layer's own router's, bit for bit
        for engine, result in zip(processor.engine.layers, out.result.layers):
            exact = engine.router.route(result.contexts)
            d = result.decisions
            rows = (d.tiers == Tier.LEARNED) | (d.tiers == Tier.CACHE)
            assert (d.experts[rows] == exact.experts[rows]).all()


def layer_tables(processor, chunks, version: int = 1):
    tables = []
    for engine in processor.engine.layers:
        stats = collect_statistics(engine.router, iter_batches(chunks, 256), engine.context_window)
        tables.append(build_table(stats, Thresholds(min_frequency=5), 2, engine.router.router_id, version))
    return tables


def test_a_published_table_set_switches_every_layer_and_a_bad_one_none():
    processor, store, windows = make()
    chunks = corpus(400)
    tables = layer_tables(processor, chunks)
    route_all(processor, chunks[:60], windows)
    version = asyncio.run(store.publish_tables(tables))
    out = route_all(processor, chunks[60:120], windows)[-1]
    assert [e.table.version for e in processor.engine.layers] == [version] * 3 and processor.table_reloads == 1
    assert all((r.decisions.tiers == Tier.FAST).any() for r in out.result.layers)
    wrong = [tables[0], tables[1], tables[0]]  # layer 2 would get layer 0's table
    bad = asyncio.run(store.publish_tables(wrong))
    route_all(processor, chunks[120:180], windows)
    assert [e.table.version for e in processor.engine.layers] == [version] * 3  # never mixed versions
    assert processor._unusable_version == bad


def test_a_store_of_another_layer_count_is_refused():
    processor, _, _ = make()
    with pytest.raises(ValueError, match="layers"):
        RouterProcessor(processor.engine, MemoryRoutingStore(layers=1), "w")


def test_long_chunks_are_split_by_decisions_not_tokens():
    processor, _, windows = make()
    n = 2 * tokens_per_record(3) + 5
    chunk = corpus(n, chunk=n)[:1]
    out = asyncio.run(processor.process(messages_for(chunk), windows.get))
    records = [orjson.loads(v) for _, v in out.outcomes]
    assert [len(r["tokens"]) for r in records] == [341, 341, 5] and tokens_per_record(1) == 1024
    assert [r["layers"][1]["pos"] for r in records] == [0, 341, 682]
    assert all(len(r["layers"]) == 3 and len(r["layers"][2]["tier"]) == len(r["tokens"]) for r in records)


GOOD = {"v": 2, "stream": "s", "seq": 4, "tokens": [7, 8], "worker": "w",
        "layers": [{"layer": l, "router_id": f"r-l{l}", "table_version": 3, "pos": 10, "experts": [[1, 2], [0, 3]],
                    "weights": [[0.6, 0.4], [0.5, 0.5]], "confidence": [0.6, 0.5], "entropy": [0.7, 0.7],
                    "tier": ["learned", "fast"], "ctx": [11, 12]} for l in range(2)]}


def with_layer(layer: int, **fields):
    record = orjson.loads(orjson.dumps(GOOD))
    record["layers"][layer].update(fields)
    return record


def test_version_2_outcomes_decode_into_per_layer_columns():
    o = decode_outcome(orjson.dumps(GOOD))
    assert o.seqs.tolist() == [4, 5] and o.tokens.tolist() == [7, 8] and o.num_layers == 2
    assert o.layers[1].positions.tolist() == [10, 11] and o.layers[1].router_ids == ["r-l1", "r-l1"]
    assert o.layers[0].tiers.tolist() == [Tier.LEARNED, Tier.FAST] and o.layers[0].experts.shape == (2, 2)
    assert o.select(np.array([1])).layers[1].ctx.tolist() == [12]
    legacy = {"v": 1, "stream": "s", "seq": 0, "token": 7, "experts": [1, 2], "weights": [0.6, 0.4],
              "confidence": 0.6, "entropy": 0.5, "tier": "learned", "ctx": 1, "pos": 9, "table_version": 2,
              "router_id": "r", "layer": 0, "worker": "w"}
    old = decode_outcome(orjson.dumps(legacy))
    assert old.num_layers == 1 and old.layers[0].positions.tolist() == [9]
    with pytest.raises(ValueError, match="different layers"):
        Outcomes.concat([o, old])


@pytest.mark.parametrize("record, reason", [
    ({k: v for k, v in GOOD.items() if k != "layers"}, "'layers' missing"),
    (dict(GOOD, layers=[]), "'layers' missing, empty"),
    (dict(GOOD, layers=[GOOD["layers"][1], GOOD["layers"][0]]), "in order 0, 1"),
    (dict(GOOD, layers=[GOOD["layers"][0], 5]), "layer 1 is not an object"),
    (with_layer(1, tier=["learned"]), "'layers[1].tier' does not have one entry per token"),
    (with_layer(0, tier=["learned", "warp"]), "bad per-token values"),
    (with_layer(1, experts=[[1], [2]]), "experts/weights must be [tokens, k]"),
    (with_layer(1, router_id=None), "'layers[1].router_id' missing"),
    (dict(GOOD, v=3), "not a version-2"),
    (dict(GOOD, tokens=[7, -1]), "tokens must be integers >= 0"),
    ({**GOOD, "layers": [{k: v for k, v in GOOD["layers"][0].items() if k != "confidence"}, GOOD["layers"][1]]},
     "missing field 'layers[0].confidence'"),
    (with_layer(1, entropy=[0.1, None]), "'layers[1].entropy' must hold numbers"),
    (with_layer(0, weights=[["0.5", "0.5"], [0.5, 0.5]]), "'layers[0].weights' must hold numbers"),
    (with_layer(0, ctx=[1, 2.5]), "'layers[0].ctx' must hold integers"),
    (with_layer(1, experts=[[1.5, 2], [0, 1]]), "'layers[1].experts' must hold integers"),
    (with_layer(1, confidence=[True, False]), "'layers[1].confidence' must hold numbers"),
])
def test_the_decoder_is_strict_with_one_line_reasons(record, reason):
    with pytest.raises(OutcomeError) as err:
        decode_outcome(orjson.dumps(record))
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_table_set_ids_keep_one_router_and_strip_a_models_layer_suffix():
    assert table_set_id(["context-v200-w3"]) == "context-v200-w3"
    assert table_set_id([f"model-abc123def456-l{i}" for i in range(4)]) == "model-abc123def456"
    assert table_set_id(["a-l1", "a-l0"]).startswith("layers-")  # out of order: not a model's stem
    keys = RedisKeys("ns", "model-abc123def456")
    assert keys.table(3, 2) == "var:ns:fp:model-abc123def456:v3:l2"
    assert keys.decision(1, 2).startswith("var:ns:dc:model-abc123def456:2:")


def layered_refresher():
    return LayeredRefresher([StatsRefresher(200, 4, 2, r.router_id, RefreshPolicy(every=50)) for r in routers()])


def test_each_layer_learns_only_from_its_own_learned_decisions():
    processor, _, windows = make(BudgetPolicy(budget=0.5, window=100))
    got = decoded(route_all(processor, corpus(300), windows))
    refresher = layered_refresher()
    assert refresher.check(got) is None
    refresher.observe(got)
    for layer, r in zip(got.layers, refresher.layers):
        assert r.stats.total_frequency == len(got)  # every tier counts as traffic
        assert r.stats.total_routed == int(layer.learned().sum())  # only learned decisions are evidence
    assert refresher.due()
    refreshes = refresher.build()
    assert [r.table.version for r in refreshes] == [1, 1, 1]
    assert [r.table.router_id for r in refreshes] == [r.router_id for r in routers()]
    refresher.published(refreshes, 7)
    assert [r.counters.last_version for r in refresher.layers] == [7, 7, 7] and not refresher.due()


def test_outcomes_of_other_layers_or_routers_are_rejected_whole():
    processor, _, windows = make()
    got = decoded(route_all(processor, corpus(50), windows))
    r = layered_refresher()
    one_layer = Outcomes(got.streams, got.seqs, got.tokens, got.workers, got.layers[:1])
    assert "outcome has 1 layer(s), this worker learns 3" in r.check(one_layer)
    got.layers[2].router_ids[0] = "someone-else"
    assert r.check(got).startswith("layer 2: router id")


def test_a_table_set_snapshot_round_trips_and_a_one_layer_one_is_unchanged():
    processor, _, windows = make()
    got = decoded(route_all(processor, corpus(100), windows))
    r = layered_refresher()
    r.observe(got)
    r.advance({0: 17, 3: 4})
    again = layered_refresher()
    again.restore(r.snapshot())
    assert again.offsets == {0: 17, 3: 4} and len(read_layer_snapshots(r.snapshot())) == 3
    for a, b in zip(r.layers, again.layers):
        assert (a.stats.expert_weight == b.stats.expert_weight).all() and a.counters == b.counters
    single = LayeredRefresher(r.layers[:1])
    assert single.snapshot() == r.layers[0].snapshot()  # the one-layer format stays the old one
    with pytest.raises(Exception, match="layers|router"):
        layered_refresher().restore(single.snapshot())
