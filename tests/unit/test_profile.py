"""The per-stage cost breakdown (``var bench engine --profile``) and the outcome encoding it led to."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.bench.engine_profile import PROFILED, batch_messages
from pipeline.cli.main import main
from pipeline.engine.events import EventBatch, EventChunk
from pipeline.engine.profile import STAGES, StageClock, lap
from pipeline.engine.records import RecordError, encode_chunk, parse_record_bytes
from pipeline.outcomes import Outcomes, decode_outcome, encode_outcomes

from .test_audit import layered_results


def test_stage_clock_charges_each_moment_to_one_stage():
    now = iter([0.0, 10.0, 11.0, 14.0, 20.0, 20.5, 22.0])
    clock = StageClock(clock=lambda: next(now))  # the constructor reads 0.0
    clock.start()  # 10.0: nothing before it counts
    clock.lap("parse")  # 11.0
    clock.lap("router")  # 14.0
    clock.start()  # 20.0
    lap(clock, "parse")  # 20.5
    lap(None, "parse")  # no clock: nothing happens
    clock.lap("outcome encoding")  # 22.0
    assert clock.batches == 2
    assert clock.seconds["parse"] == pytest.approx(1.5) and clock.seconds["router"] == pytest.approx(3.0)
    assert clock.seconds["outcome encoding"] == pytest.approx(1.5) and clock.total_s == pytest.approx(6.0)
    assert clock.per_token_us(3)["router"] == pytest.approx(1e6)
    with pytest.raises(KeyError):
        clock.lap("sorting")
    with pytest.raises(ValueError):
        clock.per_token_us(0)


def test_batch_messages_are_token_messages_of_the_batch_in_stream_order():
    chunks = [EventChunk(f"s{i % 3}", i // 3, (i,)) for i in range(20)]
    batch = EventBatch.from_chunks(chunks)
    messages = batch_messages(batch, 4, first_offset=100)
    assert [m.offset for m in messages] == list(range(100, 100 + len(messages)))
    parsed = [parse_record_bytes(m.value, m.offset) for m in messages]
    assert all(len(c.tokens) <= 4 and m.key == c.stream.encode() for c, m in zip(parsed, messages))
    for stream in ("s0", "s1", "s2"):
        mine = [c for c in parsed if c.stream == stream]
        assert [t for c in mine for t in c.tokens] == [i for i in range(20) if f"s{i % 3}" == stream]
        assert [c.first_seq for c in mine] == list(range(0, len(mine) * 4, 4))


def test_outcomes_carry_float32_decisions_bit_exact():
    """Numeric columns are written by orjson from the arrays (shortest float32 text): decoding
    gives back exactly the engine's float32 values and uint64 context hashes."""
    for result in layered_results(0.2):
        n = len(result.events)
        for size in (1, 5):
            records = encode_outcomes(result, np.arange(n) // size, "w")
            got = Outcomes.concat([decode_outcome(v) for _, v in records]).layers[0]
            d = result.layers[0].decisions
            for name, want in (("weights", d.weights), ("confidence", d.confidence), ("entropy", d.entropy)):
                assert getattr(got, name).dtype == np.float32
                assert getattr(got, name).tobytes() == want.astype(np.float32).tobytes(), name
            np.testing.assert_array_equal(got.experts, d.experts)
            np.testing.assert_array_equal(got.ctx, d.ctx_hash)
            np.testing.assert_array_equal(got.tiers, d.tiers)


def test_the_pipeline_bench_counts_outcomes_and_forwarded_records_as_decoded():
    """The measuring consumer reads only stream, seq and length: the same as a full decode, for
    outcomes of every run length and for the token records a passthrough forwards."""
    from pipeline.bench.pipeline_bench import _outcome_tokens
    for result in layered_results(0.2):
        n = len(result.events)
        for size in (1, 5):
            for _, value in encode_outcomes(result, np.arange(n) // size, "w"):
                o = decode_outcome(value)
                assert _outcome_tokens(value) == (o.streams[0], int(o.seqs[0]), len(o))
    for chunk in (EventChunk("s", 3, (7,)), EventChunk("t", 0, (1, 2, 3))):
        assert _outcome_tokens(encode_chunk(chunk)) == (chunk.stream, chunk.first_seq, len(chunk.tokens))
    for junk in (b"not json", b"[1, 2]", b'{"stream": "s", "seq": 1}'):
        with pytest.raises(RecordError):
            _outcome_tokens(junk)


def test_bench_engine_profile_reports_every_stage(capsys):
    args = ["bench", "engine", "--profile", "--sizes", "seed", "--tokens", "4000", "--train-tokens", "6000",
            "--message-size", "8", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["tokens"] == 4000 and result["message_size"] == 8
    stages = result["var_us_per_token"]
    assert list(stages) == list(PROFILED)
    # every stage of the batch path ran (the router too: some tokens miss the table)
    assert all(stages[s] > 0 for s in PROFILED), stages
    assert result["var_total_us"] == pytest.approx(sum(stages.values()))
    assert 0 < result["learned_fraction"] < 1
    assert set(result["batched_us_per_token"]) == {"contexts", "router"}
    assert main(args[:-1]) == 0
    table = capsys.readouterr().out
    assert all(stage in table for stage in PROFILED) and "total" in table


def test_worker_stage_counters_scrape_into_microseconds_per_token():
    from prometheus_client import generate_latest

    from pipeline.bench.pipeline_report import stage_costs, summed
    from pipeline.observability import parse_samples
    from pipeline.observability import RouterMetrics

    metrics = RouterMetrics("w-1")
    metrics.tier("fast").inc(600)
    metrics.tier("learned").inc(400)
    metrics.observe_stages({"router": 0.002, "kafka send": 0.001})
    metrics.observe_stages({"router": 0.003, "kafka send": 0.001})  # running totals: +1 ms router
    costs = stage_costs(summed(parse_samples(generate_latest(metrics.registry).decode())))
    assert list(costs) == list(STAGES)
    assert costs["router"] == pytest.approx(3.0) and costs["kafka send"] == pytest.approx(1.0)
    assert costs["parse"] == 0.0
    assert stage_costs({}) == {}


def test_spread_gives_each_stream_a_consecutive_slice_interleaved():
    from pipeline.bench.scaling_bench import spread

    batches = spread(list(range(30)), 3)
    events = [(b.stream_names[s], int(q), int(t)) for b in batches
              for s, q, t in zip(b.stream_ids.tolist(), b.seqs, b.tokens)]
    assert len(events) == 30
    assert events[:3] == [("s000000", 0, 0), ("s000001", 0, 10), ("s000002", 0, 20)]  # round-robin
    for name, first in (("s000000", 0), ("s000001", 10), ("s000002", 20)):
        mine = [(q, t) for s, q, t in events if s == name]
        assert mine == [(i, first + i) for i in range(10)]
    assert sum(len(b) for b in spread(list(range(5000)), 7)) == 7 * (5000 // 7)


def test_cpu_seconds_reads_this_process_and_says_nan_for_a_gone_one():
    import math
    import os

    from pipeline.bench.pipeline_report import cpu_seconds

    before = cpu_seconds([os.getpid()])
    sum(i * i for i in range(300_000))  # burn a little CPU
    assert cpu_seconds([os.getpid()]) >= before > 0
    assert math.isnan(cpu_seconds([2 ** 22 + 12345]))


def test_latency_phase_kept_up_only_when_outcomes_follow_the_send_rate():
    from pipeline.bench.pipeline_bench import kept_up
    from pipeline.bench.pipeline_report import render
    sent = {("s", i): 1000.0 + i for i in range(2000)}  # 1,000 tokens/s for 2 s (ms timestamps)
    on_time = [("s", i, 1, 1000.0 + i + 30) for i in range(2000)]  # 30 ms behind each send
    late = [("s", i, 1, 1000.0 + 1.6 * i + 30) for i in range(2000)]  # routed at 625 tokens/s
    assert kept_up(sent, on_time, 2000, 1000.0) and not kept_up(sent, late, 2000, 1000.0)
    assert not kept_up(sent, [], 2000, 1000.0)
    row = {"shape": "per-token", "size": "seed", "mode": "var", "tokens_per_s": 2000.0, "latency_rate": 1000.0,
           "latency_p50_ms": 900.0, "latency_p99_ms": 1500.0, "redis_round_trips_per_batch": 2.0,
           "learned_share": 0.1, "worker_cores": 1.0, "bench_cores": 0.2}
    assert " behind" in render([{**row, "latency_kept_up": False}]).splitlines()[2]
    assert " behind" not in render([{**row, "latency_kept_up": True}]).splitlines()[2]


def test_pipeline_ratios_compare_the_intakes_of_the_same_run():
    from pipeline.bench.pipeline_report import ratios
    row = {"shape": "per-token", "size": "seed"}
    results = [{**row, "mode": "passthrough", "intake": "batched", "tokens_per_s": 9000.0},
               {**row, "mode": "var", "intake": "batched", "tokens_per_s": 16000.0},
               {**row, "mode": "passthrough", "intake": "faust", "tokens_per_s": 4500.0},
               {**row, "mode": "var", "intake": "faust", "tokens_per_s": 6400.0}]
    out = ratios(results)
    assert out["per_token_var_batched_vs_faust_intake"] == 2.5
    assert out["per_token_passthrough_batched_vs_faust_intake"] == 2.0
    assert abs(out["per_token_var_vs_passthrough"] - 16000 / 9000) < 1e-12  # the batched cases only
    assert "per_token_var_batched_vs_faust_intake" not in ratios(results[:1] + results[2:])
