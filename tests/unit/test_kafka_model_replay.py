"""The model replay via Kafka, without Kafka: rebuilding the routed streams from outcomes (in any
arrival order) gives exactly the embedded replay's layout, and the per-layer budget figures come
from each worker's governor clock."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.corpus.jsonl import iter_batches
from pipeline.engine.events import EventBatch, EventChunk, Tier
from pipeline.model_replay import _Collector
from pipeline.outcomes import LayerOutcomes, Outcomes
from pipeline.settings import Settings
from pipeline.stream.kafka_model_replay import layer_reports, routed_from_outcomes

LAYERS, K = 3, 2


def _chunks(rng: np.random.Generator) -> list[EventChunk]:
    """Interleaved chunks of 5 streams with seq gaps between some chunks."""
    seqs, chunks = dict.fromkeys(range(5), 0), []
    for _ in range(60):
        s = int(rng.integers(5))
        n = int(rng.integers(1, 6))
        chunks.append(EventChunk(f"s{s}", seqs[s], tuple(int(t) for t in rng.integers(0, 100, n))))
        seqs[s] += n + int(rng.integers(0, 2))
    return chunks


def _decisions(batch: EventBatch, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Experts/weights that identify the event (stream, seq) and the layer."""
    code = np.asarray([int(s[1:]) for s in batch.streams], np.int64)
    experts = np.stack([code * 1000 + batch.seqs, np.full(len(batch), layer)], axis=1)
    weights = np.stack([batch.seqs / 7.0, np.full(len(batch), layer / 10)], axis=1).astype(np.float32)
    return experts, weights


def _layer(layer: int, experts: np.ndarray, weights: np.ndarray, tiers: np.ndarray, pos: np.ndarray) -> LayerOutcomes:
    n = len(experts)
    return LayerOutcomes(layer, experts, weights, np.zeros(n, np.float32), np.zeros(n, np.float32), tiers.astype(np.int8),
                         np.zeros(n, np.uint64), pos.astype(np.int64), np.ones(n, np.int64), [f"r-l{layer}"] * n)


def test_outcomes_in_any_order_rebuild_the_embedded_layout():
    rng = np.random.default_rng(3)
    chunks = _chunks(rng)
    embedded = _Collector(LAYERS)
    for batch in iter_batches(chunks, 16):
        layers = [SimpleNamespace(decisions=SimpleNamespace(experts=e, weights=w))
                  for e, w in (_decisions(batch, l) for l in range(LAYERS))]
        embedded.add(SimpleNamespace(events=batch, layers=layers))
    want = embedded.routed()

    everything = EventBatch.from_chunks(chunks)
    shuffled = everything.select(rng.permutation(len(everything)))  # arrival order through Kafka
    n = len(shuffled)
    outcomes = Outcomes(shuffled.streams, shuffled.seqs, shuffled.tokens, ["w"] * n,
                        [_layer(l, *_decisions(shuffled, l), np.zeros(n), np.arange(n)) for l in range(LAYERS)])
    got = routed_from_outcomes(outcomes, list(dict.fromkeys(c.stream for c in chunks)))

    assert len(got.streams) == len(want.streams) == 5
    for a, b in zip(got.streams, want.streams):
        np.testing.assert_array_equal(a, b)
    for layer in range(LAYERS):
        np.testing.assert_array_equal(got.experts[layer], want.experts[layer])
        np.testing.assert_array_equal(got.weights[layer], want.weights[layer])
    assert not (got.experts[0][1:, 0] == got.experts[0][:-1, 0]).any(), "every event once"


def test_streams_without_outcomes_are_left_out_and_nothing_is_an_error():
    outcomes = Outcomes(["b", "b"], np.asarray([4, 2]), np.asarray([9, 8]), ["w", "w"],
                        [_layer(0, np.asarray([[1, 2], [3, 4]]), np.ones((2, K), np.float32), np.zeros(2), np.arange(2))])
    got = routed_from_outcomes(outcomes, ["a", "b"])
    assert [s.tolist() for s in got.streams] == [[8, 9]] and got.experts[0].tolist() == [[3, 4], [1, 2]]
    with pytest.raises(ValueError):
        routed_from_outcomes(Outcomes.empty(), ["a"])


def test_layer_budget_figures_follow_each_workers_governor_clock():
    """Two workers, window 10: worker A is learned on positions 0-2 of its clock, B on 5-9; the
    rows arrive interleaved, so a count over arrival order would see other windows."""
    window, n = 10, 20
    workers = ["A", "B"] * n
    pos = np.repeat(np.arange(n), 2)
    learned_a, learned_b = pos < 3, (pos >= 5) & (pos < 10)
    tiers = np.where(np.where(np.asarray(workers) == "A", learned_a, learned_b), Tier.LEARNED, Tier.FAST)
    tiers[-4:] = Tier.CACHE  # the last two decisions of each worker
    m = len(workers)
    outcomes = Outcomes([f"s{i % 3}" for i in range(m)], np.arange(m), np.zeros(m, np.int64), workers,
                        [_layer(0, np.zeros((m, K), np.int64), np.ones((m, K), np.float32), tiers, pos)])
    routers = [SimpleNamespace(router_id="r-l0", spec=SimpleNamespace(window=8))]
    settings = Settings.load(env={}, cli={}).with_(budget_window=window, cache_scope="misses")
    [report] = layer_reports(outcomes, outcomes, routers, [SimpleNamespace(size=7, pair_entries=[1, 2], nbytes=99)],
                              ["det"], settings)
    assert report.tiers == {"cache": 4, "fast": 28, "learned": 8, "budget_fallback": 0, "prior": 0}
    assert report.max_window_learned_fraction == 0.5  # B: 5 learned in its window 0-9
    assert report.learned_fraction_full_windows == pytest.approx(8 / 40)  # 4 full windows, 8 learned
    assert report.learned_fraction == pytest.approx(8 / 40)
    assert report.cache_hit_rate == pytest.approx(4 / 12)  # scope "misses": every non-fast decision looked
    assert (report.receptive_field, report.table_size, report.learned_us_per_token) == (8, 7, 0.0)
