"""A router worker and the stats worker with ``VAR_ROUTER=model``: every MoE layer of the bundled LM
(in-memory store twin, a held-out play as input)."""
from __future__ import annotations

import asyncio
import itertools

from pipeline.assembly import build_engine, build_routers, engine_config
from pipeline.corpus.realtext import text_chunks
from pipeline.corpus.works import work_path
from pipeline.engine.context import corpus_context_hashes
from pipeline.engine.records import encode_chunk
from pipeline.outcomes import Outcomes, decode_outcome
from pipeline.settings import Settings
from pipeline.stores.memory_store import MemoryRoutingStore
from pipeline.stores.keys import table_set_id
from pipeline.table_sets import require_vocab
from pipeline.stream.processor import InMessage, RouterProcessor
from pipeline.table_sets import build_refresher


def test_a_model_worker_routes_every_layer_and_the_stats_worker_learns_each():
    settings = Settings.load(env={"VAR_ROUTER": "model"}, cli={})
    vocab = require_vocab(settings)
    routers = build_routers(settings, vocab)
    engine = build_engine(settings, routers)
    windows = [r.spec.window for r in routers]
    assert len(engine) == 4 and windows == [8, 15, 22, 29] and engine.context_window == 29
    processor = RouterProcessor(engine, MemoryRoutingStore(engine_config(settings).cache, layers=4), "w")
    chunks = list(itertools.islice(text_chunks([work_path("macbeth")], chunk_size=16), 40))
    state: dict = {}
    out = asyncio.run(processor.process([InMessage(c.stream.encode(), encode_chunk(c), 0, i)
                                         for i, c in enumerate(chunks)], state.get))
    got = Outcomes.concat([decode_outcome(v) for _, v in out.outcomes])
    assert len(got) == sum(len(c) for c in chunks) and not out.deadletters
    keys = list(zip(got.streams, got.seqs.tolist()))
    for layer, (window, router) in enumerate(zip(windows, routers)):
        ref = corpus_context_hashes(chunks, window)
        assert got.layers[layer].ctx.tolist() == [ref[k] for k in keys]
        assert set(got.layers[layer].router_ids) == {router.router_id}
        assert router.router_id.endswith(f"-l{layer}")
    assert table_set_id([r.router_id for r in routers]) == routers[0].router_id[:-len("-l0")]
    refresher = build_refresher(settings)
    assert refresher.router_ids == [r.router_id for r in routers]
    assert refresher.check(got) is None
    learned = refresher.observe(got)
    assert learned == [int(layer.learned().sum()) for layer in got.layers] and all(learned)


def test_model_tables_are_calibrated_to_the_budget_synthetic_ones_follow_the_settings():
    from pipeline.table_sets import refresh_policy

    assert refresh_policy(Settings(router="model", budget=0.12)).adaptive_target == 0.12
    assert refresh_policy(Settings(router="context")).adaptive_target is None
    assert refresh_policy(Settings(router="context", adaptive=True, adaptive_target=0.2)).adaptive_target == 0.2
