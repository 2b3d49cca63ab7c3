"""The router worker's batch processing with the in-memory twin of the routing store."""
from __future__ import annotations

import asyncio

import orjson

from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.offline import collect_statistics
from pipeline.engine.records import encode_chunk
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import RoutingTable, Thresholds, build_table
from pipeline.corpus.jsonl import iter_batches
from pipeline.outcomes import decode_outcome, Outcomes
from pipeline.stores.memory_store import MemoryRoutingStore
from pipeline.stream.continuity import OffsetContinuity
from pipeline.stream.processor import InMessage, RouterProcessor

SPEC = RouterSpec(vocab_size=200, hidden=16, num_experts=4, top_k=2, window=3)


def make(learned_only: bool = False, records: str = "stream") -> tuple[RouterProcessor, MemoryRoutingStore, dict]:
    router = build_router(SPEC)
    engine = VAREngine(router, RoutingTable.empty(200, 4, 2, router.router_id), EngineConfig(context_window=3))
    store = MemoryRoutingStore()
    return RouterProcessor(engine, store, "w-test", learned_only, records), store, {}


def messages_for(chunks, partition: int = 0, start: int = 0) -> list[InMessage]:
    return [InMessage(c.stream.encode(), encode_chunk(c), partition, start + i) for i, c in enumerate(chunks)]


def corpus(n: int = 600, chunk: int = 1):
    return list(generate(SyntheticSpec(vocab_size=200, num_streams=3, tokens_per_stream=n, chunk_size=chunk, seed=1)))


def run(processor: RouterProcessor, msgs: list[InMessage], windows: dict):
    out = asyncio.run(processor.process(msgs, windows.get))
    windows.update(out.windows)
    return out


def test_two_store_round_trips_per_batch_whatever_its_size():
    processor, store, windows = make()
    chunks = corpus(300)
    for start in range(0, len(chunks), 300):
        before = store.round_trips
        run(processor, messages_for(chunks[start:start + 300], start=start), windows)
        assert store.round_trips - before <= 2  # one fetch (+ at most one write)


def test_outcomes_cover_every_event_once_and_mirror_the_input_shape():
    """``message`` records: one per input message, in message order."""
    processor, _, windows = make(records="message")
    chunks = corpus(200, chunk=5)
    out = run(processor, messages_for(chunks), windows)
    decoded = Outcomes.concat([decode_outcome(v) for _, v in out.outcomes])
    assert len(decoded) == sum(len(c) for c in chunks)
    assert len(set(zip(decoded.streams, decoded.seqs.tolist()))) == len(decoded)
    assert all("tokens" in orjson.loads(v) for _, v in out.outcomes)
    assert [k.decode() for k, _ in out.outcomes] == [c.stream for c in chunks]


def test_stream_records_carry_each_streams_run_of_a_batch():
    """``stream`` records (the default): per-token messages of 3 streams give one record per
    stream and batch, split only where seqs jump or a record would exceed its size; the
    decisions are those of the per-message form, token for token."""
    chunks = corpus(200)  # 600 one-token messages, streams interleaved
    gap = [c for c in corpus(250)[600:] if c.stream == chunks[0].stream][:1]  # seq 200 -> a later seq
    gap = [type(g)(g.stream, g.first_seq + 5, g.tokens, g.offset) for g in gap]
    results = {}
    for records in ("stream", "message"):
        processor, _, windows = make(records=records)
        results[records] = run(processor, messages_for(chunks + gap), windows).outcomes
    per_stream, per_message = results["stream"], results["message"]
    assert len(per_message) == len(chunks) + 1
    assert len(per_stream) == 3 + 1  # one run per stream, and the run after the jump in seqs
    assert sorted(k for k, _ in per_stream) == sorted([s.encode() for s in ("syn-0000", "syn-0001", "syn-0002")]
                                                      + [gap[0].stream.encode()])
    def by_event(outcomes):
        decoded = Outcomes.concat([decode_outcome(v) for _, v in outcomes])
        layer = decoded.layers[0]
        return {(s, q): (layer.experts[i].tolist(), layer.tiers[i], int(layer.ctx[i]))
                for i, (s, q) in enumerate(zip(decoded.streams, decoded.seqs.tolist()))}
    a, b = by_event(per_stream), by_event(per_message)
    assert len(a) == len(chunks) + 1 and set(a) == set(b)
    assert all(a[e][2] == b[e][2] for e in a)  # same contexts; routes may differ only by governor order


def test_bad_messages_are_dead_lettered_and_good_ones_routed():
    processor, _, windows = make()
    good = messages_for(corpus(20))
    bad = [InMessage(b"s", b"{oops", 0, 900), InMessage(b"s", orjson.dumps({"stream": "s", "seq": 0, "token": 999}), 0, 901),
           InMessage(b"other", orjson.dumps({"stream": "s", "seq": 1, "token": 3}), 0, 902)]
    out = run(processor, good + bad, windows)
    assert out.routed == len(good)
    assert [d.offset for d in out.deadletters] == [900, 901, 902]
    assert "not valid JSON" in out.deadletters[0].reason
    assert "outside the vocabulary" in out.deadletters[1].reason
    assert "does not match stream" in out.deadletters[2].reason


def test_redelivered_messages_are_skipped_but_backwards_seq_is_dead_lettered():
    processor, _, windows = make()
    msgs = messages_for(corpus(30))
    run(processor, msgs, windows)
    again = run(processor, msgs[:10], windows)  # same offsets: a redelivery after a crash
    assert again.routed == 0 and again.redelivered == 10 and not again.deadletters
    late = InMessage(msgs[0].key, msgs[0].value, 0, 10_000)  # old seq, new offset: bad input
    out = run(processor, [late], windows)
    assert len(out.deadletters) == 1 and "does not increase" in out.deadletters[0].reason


def test_table_is_swapped_when_the_pointer_moves():
    processor, store, windows = make()
    router = processor.engine.layers[0].router
    train = corpus(400)
    stats = collect_statistics(router, iter_batches(train, 256), 3)
    table = build_table(stats, Thresholds(min_frequency=5), 2, router.router_id, 1)
    msgs = messages_for(corpus(400)[:60])
    run(processor, msgs[:30], windows)
    assert processor.table_version == 0
    version = asyncio.run(store.publish_table(table))
    out = run(processor, msgs[30:], windows)
    assert processor.table_version == version and processor.table_reloads == 1
    assert out.result is not None and out.result.layers[0].decisions.table_version == version


def test_learned_only_mode_routes_everything_without_the_store():
    processor, store, windows = make(learned_only=True)
    out = run(processor, messages_for(corpus(50)), windows)
    assert store.round_trips == 0
    assert out.result is not None and (out.result.layers[0].decisions.tiers == 2).all()


def test_offset_continuity_cuts_a_batch_at_a_gap_and_asks_for_a_seek():
    async def start(partitions):
        return {p: 100 for p in partitions}

    guard = OffsetContinuity(start)
    msgs = [InMessage(b"k", b"v", 0, o) for o in (100, 101, 104, 105)] + [InMessage(b"k", b"v", 1, 100)]
    admitted, seeks = asyncio.run(guard.admit(msgs))
    assert [(m.partition, m.offset) for m in admitted] == [(0, 100), (0, 101), (1, 100)]
    assert seeks == {0: 102}
    admitted, seeks = asyncio.run(guard.admit([InMessage(b"k", b"v", 0, o) for o in (99, 102, 103)]))
    assert [m.offset for m in admitted] == [102, 103] and not seeks  # 99: below the start, a repeat
    assert guard.repeats == 1
    guard.observe_generation(7)
    assert guard.expected == {}


def test_offset_continuity_notices_a_partition_that_went_quiet_with_messages_left():
    now = [0.0]

    async def start(partitions):
        return {p: 10 for p in partitions}

    async def end(partitions):
        return {p: 50 if p == 0 else 10 for p in partitions}

    guard = OffsetContinuity(start, end, idle_s=3.0, clock=lambda: now[0])
    assert asyncio.run(guard.stalls([0, 1])) == {}  # not idle long enough yet
    now[0] = 5.0
    assert asyncio.run(guard.stalls([0, 1])) == {0: 10}  # 40 messages waiting, none arrived
    assert asyncio.run(guard.stalls([0, 1])) == {}  # no repeated seek right away


def test_an_overlapping_chunk_routes_its_new_tokens_and_says_so_in_its_dead_letter():
    processor, _, windows = make()
    first = InMessage(b"s", orjson.dumps({"stream": "s", "seq": 0, "tokens": [1, 2, 3, 4, 5]}), 0, 0)
    overlap = InMessage(b"s", orjson.dumps({"stream": "s", "seq": 3, "tokens": [4, 5, 6, 7]}), 0, 1)
    run(processor, [first], windows)
    out = run(processor, [overlap], windows)
    assert out.routed == 2  # seq 5 and 6
    assert len(out.deadletters) == 1 and "last 2 token(s) were routed" in out.deadletters[0].reason


def test_an_unloadable_table_version_is_not_fetched_again_every_batch():
    processor, store, windows = make()
    store.pointer = 9  # announced, but no such table
    loads = []
    original = store.load_tables

    async def counting(version):
        loads.append(version)
        return await original(version)

    store.load_tables = counting
    msgs = messages_for(corpus(40))
    for i in range(0, 40, 10):
        run(processor, msgs[i:i + 10], windows)
    assert loads == [9] and processor.table_version == 0
