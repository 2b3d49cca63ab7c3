"""The streaming pipeline on a real Kafka broker and a real Redis server, with worker processes."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.replay import run_replay
from pipeline.settings import Settings
from pipeline.sources import SyntheticSource
from pipeline.stream.kafka_replay import KafkaReplayOptions, run_kafka_replay
from pipeline.stream.producer import produce_raw

from .harness import arrival_order_ok, check_contexts, check_exact, make_harness

pytestmark = pytest.mark.integration

SMALL = SyntheticSpec(vocab_size=1000, num_streams=12, tokens_per_stream=1500, seed=3)  # all 4 partitions used


@pytest.mark.parametrize("workers, message_size", [(1, 1), (2, 16)])
def test_every_event_routed_in_order_with_continuous_windows(kafka_bootstrap, redis_url, tmp_path, workers,
                                                               message_size):
    h = make_harness(kafka_bootstrap, redis_url, tmp_path, SMALL)
    h.start_routers(workers)
    try:
        async def run():
            collector = asyncio.create_task(h.collect(idle_timeout_s=60))
            await h.produce(message_size)
            return await collector
        got = asyncio.run(run())
    finally:
        h.pool.stop_all()
    outcomes = got.outcomes()
    assert got.distinct == h.tokens, h.worker_logs()
    assert got.invalid == 0 and not got.deadletters
    assert arrival_order_ok(outcomes)
    check_contexts(h, outcomes)
    check_exact(h, outcomes)
    if workers == 2:
        assert len(set(outcomes.workers)) == 2, "both workers should have routed partitions"


def test_kafka_replay_matches_embedded_replay(kafka_bootstrap, redis_url, tmp_path):
    """Same corpus, same table: the fast-path decisions are identical; the split of the other
    tokens between cache, learned and fallback may differ because the Kafka path shares a Redis
    cache (TTL only, no 1000-entry LRU) and forms different micro-batches (in-batch repeats and
    governor positions). Tolerance: 2 percentage points per tier, 1 point of top-1 agreement."""
    settings = Settings.load(env={}, cli={}).with_(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url,
                                                   session_timeout_s=6.0)
    source = SyntheticSource(SyntheticSpec(vocab_size=1000, num_streams=8, tokens_per_stream=6000, seed=5))
    embedded = run_replay(source, settings, progress=False).to_dict()
    report, got = run_kafka_replay(source, settings, KafkaReplayOptions(workers=1, message_size=8,
                                                                        log_dir=tmp_path / "logs"))
    kafka = report.to_dict()
    assert kafka["completeness"]["complete"], kafka["completeness"]
    assert kafka["tokens"] == embedded["tokens"]
    assert kafka["tiers"]["fast"] == embedded["tiers"]["fast"]
    for tier in ("cache", "learned", "budget_fallback"):
        assert abs(kafka["tiers"][tier] - embedded["tiers"][tier]) / embedded["tokens"] <= 0.02, tier
    assert abs(kafka["agreement_top1"] - embedded["agreement_top1"]) <= 0.01
    assert kafka["max_window_learned_fraction"] <= settings.budget
    assert kafka["constraints_ok"], kafka["constraints"]


def test_kill_one_of_two_workers_loses_nothing(kafka_bootstrap, redis_url, tmp_path):
    h = make_harness(kafka_bootstrap, redis_url, tmp_path,
                     SyntheticSpec(vocab_size=1000, num_streams=12, tokens_per_stream=1700, seed=11))
    victim, survivor = h.start_routers(2)
    try:
        async def run():
            from pipeline.stream.collector import Collected

            got = Collected()
            collector = asyncio.create_task(h.collect(idle_timeout_s=90, got=got))
            producer = asyncio.create_task(h.produce(message_size=4, rate=1500))
            while got.distinct < h.tokens // 3 and not collector.done():
                await asyncio.sleep(0.2)
            h.pool.kill(victim)
            await producer
            return await collector, got
        got, _ = asyncio.run(run())
    finally:
        h.pool.stop_all()
    assert not victim.alive() and survivor.alive() is False  # stopped at the end
    outcomes = got.outcomes()
    assert got.distinct == h.tokens, (f"missing {h.tokens - got.distinct}: {h.missing(got)[:10]}; "
                                      f"dead letters {[hd.get('var-reason') for _, _, hd in got.deadletters][:5]}"
                                      f"\n{h.worker_logs()}")
    assert {victim.name, survivor.name} <= {w.split("/")[0] for w in outcomes.workers}
    check_contexts(h, outcomes)
    from pipeline.outcomes import Outcomes

    everything = Outcomes.concat(got.all_parts)
    check_contexts(h, everything)  # duplicates were routed with the right windows too
    print(f"duplicates after kill -9: {got.duplicates}")


def test_malformed_messages_go_to_the_deadletter_topic(kafka_bootstrap, redis_url, tmp_path):
    h = make_harness(kafka_bootstrap, redis_url, tmp_path,
                     SyntheticSpec(vocab_size=1000, num_streams=3, tokens_per_stream=400, seed=2))
    bad = [
        (b"x", b"{not json"),
        (b"x", orjson.dumps({"stream": "x", "seq": "1", "token": 3})),
        (b"x", orjson.dumps({"stream": "x", "token": 3})),
        (b"x", orjson.dumps({"stream": "x", "seq": 1, "token": 10**6})),
        (b"x", orjson.dumps({"stream": "x", "seq": 1, "token": -4})),
        (b"other", orjson.dumps({"stream": "x", "seq": 2, "token": 4})),
        (b"x", orjson.dumps([1, 2, 3])),
    ]
    backwards = [(b"late", orjson.dumps({"stream": "late", "seq": s, "token": 5})) for s in (10, 11, 3)]
    h.start_routers(1)
    try:
        async def run():
            collector = asyncio.create_task(h.collect(expected=h.tokens + 2, idle_timeout_s=60))
            await produce_raw(h.settings.kafka_bootstrap, h.settings.topic_tokens, bad[:4])
            await h.produce(message_size=1)
            await produce_raw(h.settings.kafka_bootstrap, h.settings.topic_tokens, bad[4:] + backwards)
            return await collector
        got = asyncio.run(run())
    finally:
        h.pool.stop_all()
    assert got.distinct == h.tokens + 2, h.worker_logs()  # every good event (+ 2 good "late" ones)
    reasons = {value: headers["var-reason"].decode() for _, value, headers in got.deadletters}
    assert set(reasons) == {v for _, v in bad} | {backwards[2][1]}
    assert "not valid JSON" in reasons[bad[0][1]]
    assert "seq" in reasons[bad[1][1]] and "seq" in reasons[bad[2][1]]
    assert "outside the vocabulary" in reasons[bad[3][1]]
    assert "negative" in reasons[bad[4][1]]
    assert "does not match stream" in reasons[bad[5][1]]
    assert "does not increase" in reasons[backwards[2][1]]
