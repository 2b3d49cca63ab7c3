"""The JSON Schemas in docs/schemas/ against the code's own encoders and decoders.

What the encoders really write validates (token events as ``var produce`` encodes them, outcome
records of a three-layer and a one-layer router worker in both record modes, dead letters as the
router worker and the producer write them); what the decoders reject the schemas reject, wherever
JSON Schema can say it; and the few checks it cannot make are listed, so that they stay known.
"""
from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError

from pipeline.corpus.jsonl import iter_batches
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.engine.events import EventChunk
from pipeline.engine.layered import LayeredEngine
from pipeline.engine.offline import collect_statistics
from pipeline.engine.records import RecordError, encode_chunk, parse_record, parse_record_bytes
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import Thresholds, build_table
from pipeline.outcomes import OutcomeError, decode_outcome
from pipeline.stack.console_tools import ConsumedRecord
from pipeline.stores.memory_store import MemoryRoutingStore
from pipeline.stream import producer
from pipeline.stream.agent import RouterAgent, Topics
from pipeline.stream.processor import DeadLetter, InMessage, RouterProcessor

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
VOCAB = 200


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load(name))


EVENT, OUTCOME, DEADLETTER = validator("token-event"), validator("outcome"), validator("deadletter")


def corpus(tokens: int, chunk: int = 1, seed: int = 1) -> list:
    return list(generate(SyntheticSpec(vocab_size=VOCAB, num_streams=3, tokens_per_stream=tokens, chunk_size=chunk,
                                       seed=seed)))


@pytest.mark.parametrize("name", ["token-event", "outcome", "deadletter"])
def test_every_schema_is_draft_2020_12_and_its_examples_validate(name):
    schema = load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["examples"]
    for example in schema["examples"]:
        jsonschema.Draft202012Validator(schema).validate(example)


# ---- token events ---------------------------------------------------------------------------

def produced_messages(chunks: list, message_size: int, monkeypatch) -> list[tuple[bytes, bytes]]:
    """The (key, value) messages ``var produce`` sends for ``chunks`` (producer.produce_chunks's
    own encoding; the Kafka send is replaced by a list)."""
    sent: list[tuple[bytes, bytes]] = []

    async def capture(items, *args, **kwargs):
        sent.extend(message for message, _ in items)
        return producer.ProduceStats()

    monkeypatch.setattr(producer, "produce_messages", capture)
    asyncio.run(producer.produce_chunks(producer.rechunk(chunks, message_size), "unused:9092", "var-tokens"))
    return sent


@pytest.mark.parametrize("message_size", [1, 7])
def test_token_events_as_the_producer_encodes_them_validate(message_size, monkeypatch):
    messages = produced_messages(corpus(40), message_size, monkeypatch)
    assert messages
    for key, value in messages:
        record = orjson.loads(value)
        EVENT.validate(record)
        assert key == record["stream"].encode()
        assert ("token" in record) == (message_size == 1)
    for chunk in corpus(5, chunk=3)[:4]:
        EVENT.validate(orjson.loads(encode_chunk(chunk, with_version=False)))


GOOD_EVENTS = [
    {"stream": "s", "seq": 0, "token": 0},
    {"stream": "s", "seq": 3, "tokens": [1]},
    {"stream": "s", "seq": 3, "tokens": [1, 2, 3], "v": 1},
    {"stream": "s", "seq": 3, "token": 5, "note": "ignored"},  # unknown members are ignored
]
BAD_EVENTS = [
    [1, 2, 3], "text", None, {},
    {"seq": 1, "token": 3},
    {"stream": "", "seq": 1, "token": 3},
    {"stream": 7, "seq": 1, "token": 3},
    {"stream": "s", "token": 3},
    {"stream": "s", "seq": "1", "token": 3},
    {"stream": "s", "seq": -1, "token": 3},
    {"stream": "s", "seq": True, "token": 3},
    {"stream": "s", "seq": 1},
    {"stream": "s", "seq": 1, "token": 3, "tokens": [3]},
    {"stream": "s", "seq": 1, "tokens": []},
    {"stream": "s", "seq": 1, "tokens": 3},
    {"stream": "s", "seq": 1, "token": -4},
    {"stream": "s", "seq": 1, "token": "3"},
    {"stream": "s", "seq": 1, "token": None},
    {"stream": "s", "seq": 1, "token": False},
    {"stream": "s", "seq": 1, "token": 2.5},
    {"stream": "s", "seq": 1, "tokens": [1, -2]},
    {"stream": "s", "seq": 1, "tokens": [1, "2"]},
    {"stream": "s", "seq": 1, "tokens": [[1]]},
    {"stream": "s", "seq": 1, "token": 3, "v": 2},
    {"stream": "s", "seq": 1, "token": 3, "v": None},
    {"stream": "s", "seq": 1, "token": 3, "v": "1"},
]


@pytest.mark.parametrize("record", GOOD_EVENTS, ids=str)
def test_events_the_parser_accepts_validate(record):
    parse_record(record, vocab_size=VOCAB)
    EVENT.validate(record)


@pytest.mark.parametrize("record", BAD_EVENTS, ids=str)
def test_events_the_parser_rejects_the_schema_rejects(record):
    with pytest.raises(RecordError):
        parse_record_bytes(orjson.dumps(record), vocab_size=VOCAB)
    assert not EVENT.is_valid(record)


def test_event_checks_beyond_json_schema():
    """Rejected by the parser, not expressible in the schema: a token beyond the vocabulary (a
    worker setting), integers written as 1.0 (one number to JSON Schema)."""
    for record in ({"stream": "s", "seq": 1, "token": VOCAB}, {"stream": "s", "seq": 1.0, "token": 3},
                   {"stream": "s", "seq": 1, "tokens": [1.0]}):
        with pytest.raises(RecordError):
            parse_record(record, vocab_size=VOCAB)
        assert EVENT.is_valid(record)


# ---- outcomes -------------------------------------------------------------------------------

def processor(layers: tuple[int, ...], records: str) -> RouterProcessor:
    """A router worker's batch processing: one engine per layer (receptive fields ``layers``) with
    tables learned from a training corpus, a tight budget and live audits, so that outcomes hold
    every tier, pair/token/prior keys and audit results."""
    train = corpus(300, seed=2)
    engines = []
    for layer, window in enumerate(layers):
        router = build_router(RouterSpec(vocab_size=VOCAB, hidden=16, num_experts=4, top_k=2, window=window, seed=layer))
        stats = collect_statistics(router, iter_batches(train, 256), window, pair_cap=4096)
        table = build_table(stats, Thresholds(min_frequency=5, pair_min_count=2), 2, router.router_id, 1)
        engines.append(VAREngine(router, table, EngineConfig(context_window=window, layer=layer, audit_rate=0.2,
                                                             budget=BudgetPolicy(budget=0.1, window=100))))
    return RouterProcessor(LayeredEngine(engines), MemoryRoutingStore(layers=len(engines)), "host-1/abc", False, records)


def routed_outcomes(layers: tuple[int, ...], records: str) -> list[tuple[bytes, bytes]]:
    """Per-token messages, then chunked ones, then one token per stream (a run of one even in the
    ``stream`` mode), in batches of 100 messages: every outcome record the worker wrote."""
    per_token = corpus(200)
    chunked = [c for c in corpus(400, chunk=5) if c.first_seq >= 200]
    last = [EventChunk(s, 400, (7,)) for s in sorted({c.stream for c in per_token})]
    proc, windows, out, offset = processor(layers, records), {}, [], 0
    for chunks in (per_token, chunked, last):
        for i in range(0, len(chunks), 100):
            msgs = []
            for c in chunks[i:i + 100]:
                msgs.append(InMessage(c.stream.encode(), encode_chunk(c), 0, offset))
                offset += 1
            batch = asyncio.run(proc.process(msgs, windows.get))
            windows.update(batch.windows)
            assert not batch.deadletters
            out.extend(batch.outcomes)
    return out


@pytest.mark.parametrize("records", ["stream", "message"])
@pytest.mark.parametrize("layers", [(3, 5, 7), (3,)], ids=["three-layers", "one-layer"])
def test_outcome_records_a_worker_writes_validate(layers, records):
    outcomes = routed_outcomes(layers, records)
    shapes, tiers, keys, audited = set(), set(), set(), False
    for key, value in outcomes:
        record = orjson.loads(value)
        OUTCOME.validate(record)
        decode_outcome(value)
        assert key == record["stream"].encode() and len(record["layers"]) == len(layers)
        shapes.add("token" in record)
        for layer in record["layers"]:
            as_list = (lambda v: v) if "tokens" in record else (lambda v: [v])
            tiers.update(as_list(layer["tier"]))
            keys.update(as_list(layer["key"]))
            audited |= "audit" in layer
    assert shapes == {True, False}, "both the single-token and the chunked shape were checked"
    assert {"fast", "learned", "budget_fallback", "prior"} <= tiers and {"exact", "pair", "token", "prior"} <= keys
    assert audited


SINGLE = {"v": 2, "stream": "s", "seq": 7, "token": 42, "prev": 17, "worker": "w/1",
          "layers": [{"layer": 0, "router_id": "r-l0", "table_version": 3, "pos": 10, "experts": [3, 5],
                      "weights": [0.8, 0.2], "confidence": 0.7, "entropy": 0.6, "tier": "fast", "key": "pair",
                      "ctx": 2**64 - 1, "audit": 1},
                     {"layer": 1, "router_id": "r-l1", "table_version": 3, "pos": 10, "experts": [0, 1],
                      "weights": [0.5, 0.5], "confidence": 0.5, "entropy": 0.7, "tier": "learned", "ctx": 5}]}
CHUNK = {"v": 2, "stream": "s", "seq": 7, "tokens": [42, 43], "prev": -1, "worker": "w/1",
         "layers": [{"layer": 0, "router_id": "r-l0", "table_version": 0, "pos": 0, "experts": [[3, 5], [1, 2]],
                     "weights": [[0.8, 0.2], [0.6, 0.4]], "confidence": [0.7, 0.6], "entropy": [0.6, 0.1],
                     "tier": ["prior", "cache"], "key": ["prior", "exact"], "ctx": [1, 2], "audit": [-1, 0]}]}
LEGACY = {"v": 1, "stream": "s", "seq": 7, "token": 42, "worker": "w/1", "layer": 0, "router_id": "r",
          "table_version": 2, "pos": 4, "experts": [3, 5], "weights": [0.8, 0.2], "confidence": 0.7,
          "entropy": 0.6, "tier": "budget_fallback", "ctx": 9}
LEGACY_CHUNK = {**{k: v for k, v in LEGACY.items() if k != "token"}, "tokens": [42], "experts": [[3, 5]],
                "weights": [[0.8, 0.2]], "confidence": [0.7], "entropy": [0.6], "tier": ["fast"], "ctx": [9]}


def changed(base: dict, path: str, value: Any = ...) -> dict:
    """``base`` with the member at ``path`` ("layers.0.tier") set to ``value`` (absent: removed)."""
    record = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = record
    for name in parents:
        target = target[int(name)] if isinstance(target, list) else target[name]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return record


GOOD_OUTCOMES = {
    "single": SINGLE, "chunk": CHUNK, "legacy v1": LEGACY, "legacy v1 chunk": LEGACY_CHUNK,
    "no prev, no key": changed(changed(SINGLE, "prev"), "layers.0.key"),
    "chunk of one": changed(changed(CHUNK, "tokens", [42]), "layers", [
        {**CHUNK["layers"][0], **{k: v[:1] for k, v in CHUNK["layers"][0].items() if isinstance(v, list)}}]),
    "unknown members": changed(changed(SINGLE, "trace", "x"), "layers.0.note", 1),
}
BAD_OUTCOMES = {
    "not an object": [1], "no v": changed(SINGLE, "v"), "v 3": changed(SINGLE, "v", 3),
    "v true (read as 1)": changed(SINGLE, "v", True),
    "no stream": changed(SINGLE, "stream"), "stream null": changed(SINGLE, "stream", None),
    "no seq": changed(SINGLE, "seq"), "seq string": changed(SINGLE, "seq", "7"),
    "no worker": changed(SINGLE, "worker"), "worker int": changed(SINGLE, "worker", 3),
    "prev null": changed(SINGLE, "prev", None), "token bool": changed(SINGLE, "token", True),
    "token negative": changed(SINGLE, "token", -1), "no token nor tokens": changed(SINGLE, "token"),
    "tokens empty": changed(CHUNK, "tokens", []), "tokens not a list": changed(CHUNK, "tokens", 4),
    "tokens negative": changed(CHUNK, "tokens", [1, -1]), "tokens nested": changed(CHUNK, "tokens", [[1], [2]]),
    "no layers": changed(SINGLE, "layers"), "layers empty": changed(SINGLE, "layers", []),
    "layer not an object": changed(SINGLE, "layers", [3]),
    "first layer is not 0": changed(SINGLE, "layers.0.layer", 1),
    "layer missing": changed(SINGLE, "layers.0.layer"), "router_id int": changed(SINGLE, "layers.0.router_id", 1),
    "no table_version": changed(SINGLE, "layers.0.table_version"), "no pos": changed(SINGLE, "layers.0.pos"),
    "pos string": changed(SINGLE, "layers.0.pos", "10"),
    "unknown tier": changed(SINGLE, "layers.1.tier", "slow"), "unknown key": changed(SINGLE, "layers.0.key", "x"),
    "key null": changed(SINGLE, "layers.0.key", None), "no experts": changed(SINGLE, "layers.0.experts"),
    "chunk without confidence": changed(CHUNK, "layers.0.confidence"), "no ctx": changed(SINGLE, "layers.0.ctx"),
    "ctx negative": changed(SINGLE, "layers.0.ctx", -1), "ctx over 64 bits": changed(SINGLE, "layers.0.ctx", 2**64),
    "audit 2": changed(SINGLE, "layers.0.audit", 2), "audit true": changed(SINGLE, "layers.0.audit", True),
    "single with nested experts": changed(changed(SINGLE, "layers.0.experts", [[3, 5]]), "layers.0.weights",
                                          [[0.8, 0.2]]),
    "single with a tier list": changed(SINGLE, "layers.0.tier", ["fast"]),
    "chunk with a scalar confidence": changed(CHUNK, "layers.0.confidence", 0.5),
    "chunk with flat experts": changed(changed(CHUNK, "layers.0.experts", [3, 5]), "layers.0.weights", [0.5, 0.5]),
    "chunk audit 2": changed(CHUNK, "layers.0.audit", [-1, 2]),
    "legacy without layer fields": changed(LEGACY, "router_id"),
}


def raw(record: Any) -> bytes:
    return json.dumps(record).encode()  # json, not orjson: it writes integers past 64 bits too


@pytest.mark.parametrize("name", GOOD_OUTCOMES)
def test_outcomes_the_decoder_accepts_validate(name):
    decode_outcome(raw(GOOD_OUTCOMES[name]))
    OUTCOME.validate(GOOD_OUTCOMES[name])


@pytest.mark.parametrize("name", BAD_OUTCOMES)
def test_outcomes_the_decoder_rejects_the_schema_rejects(name):
    with pytest.raises(OutcomeError):
        decode_outcome(raw(BAD_OUTCOMES[name]))
    assert not OUTCOME.is_valid(BAD_OUTCOMES[name])


def test_outcome_checks_beyond_json_schema():
    """Rejected by the decoder, not expressible in JSON Schema: a later layer out of order, lists
    of different lengths, ragged expert rows, integers written as 1.0."""
    two = [10, 11]
    for record in (changed(SINGLE, "layers.1.layer", 2), changed(CHUNK, "layers.0.ctx", [1, 2, 3]),
                   changed(SINGLE, "layers.0.weights", [1.0]), changed(CHUNK, "layers.0.experts", [[3, 5], [1]]),
                   changed(SINGLE, "seq", 7.0), changed(SINGLE, "layers.0.audit", 1.0),
                   changed(changed(CHUNK, "tokens", two + [12]), "layers.0.tier", ["fast"] * 3)):
        with pytest.raises(OutcomeError):
            decode_outcome(raw(record))
        assert OUTCOME.is_valid(record)


# ---- dead letters ---------------------------------------------------------------------------

def view(key: bytes | None, value: bytes, headers: dict[str, bytes]) -> dict[str, Any]:
    return ConsumedRecord(0, 0, key, value, dict(headers)).as_json()


def test_dead_letters_as_the_router_worker_writes_them_validate():
    proc = processor((3,), "stream")
    bad = [(b"x", b"{not json"), (b"x", orjson.dumps({"stream": "x", "seq": "1", "token": 3})),
           (None, orjson.dumps({"stream": "x", "seq": 1, "token": VOCAB})), (b"other", orjson.dumps(
               {"stream": "x", "seq": 2, "token": 4})), (b"x", b"\xff\xfe random bytes")]
    msgs = [InMessage(k, v, 2, 40 + i) for i, (k, v) in enumerate(bad)]
    letters = asyncio.run(proc.process(msgs, {}.get)).deadletters
    assert len(letters) == len(bad)
    for letter in letters + [DeadLetter(None, b"", "internal error: boom", 0, 0)]:
        record = view(letter.key, letter.value, letter.headers("var-tokens"))
        DEADLETTER.validate(record)
        assert record["headers"]["var-reason"] == letter.reason and record["headers"]["var-offset"] == str(letter.offset)
    # too large for the broker: the agent sends it again, truncated (the reason says so)
    agent = SimpleNamespace(topics=Topics("var-outcomes", "var-deadletter", "var-tokens"))
    big = letters[0]
    _, key, value, headers = RouterAgent._resizable(agent, ("var-deadletter", big.key, big.value * 10**5,
                                                            big.headers("var-tokens")), MessageSizeTooLargeError())
    DEADLETTER.validate(view(key, value, headers))


def test_dead_letters_as_the_producer_writes_them_validate():
    """A message over the broker's limit: ``var produce`` sends its first 64 KiB to the dead-letter topic."""
    sent = []

    class Producer:
        async def send(self, topic, value, key=None, headers=None):
            if topic == "var-tokens":
                raise MessageSizeTooLargeError()
            sent.append((key, value, dict(headers)))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    value = orjson.dumps({"stream": "s", "seq": 0, "tokens": list(range(400_000))})
    asyncio.run(producer.send_message(Producer(), "var-tokens", b"s", value, "var-deadletter"))
    (record,) = [view(*letter) for letter in sent]
    DEADLETTER.validate(record)
    assert record["headers"]["var-truncated-from"] == str(len(value)) and len(record["value"]) == 64 * 1024


LETTER = {"key": "s", "value": "{not json", "headers": {"var-reason": "not valid JSON (x)",
                                                        "var-source-topic": "var-tokens", "var-partition": "0",
                                                        "var-offset": "12"}}
BAD_LETTERS = {
    "no reason": changed(LETTER, "headers.var-reason"), "empty reason": changed(LETTER, "headers.var-reason", ""),
    "no source topic": changed(LETTER, "headers.var-source-topic"),
    "partition not a number": changed(LETTER, "headers.var-partition", "p1"),
    "offset negative": changed(LETTER, "headers.var-offset", "-1"),
    "partition without offset": changed(LETTER, "headers.var-offset"),
    "neither source position nor truncation": changed(changed(LETTER, "headers.var-offset"), "headers.var-partition"),
    "unknown header": changed(LETTER, "headers.x-trace", "1"),
    "truncated but longer than 64 KiB": changed(changed(LETTER, "headers.var-truncated-from", "70000"), "value",
                                                "x" * 65537),
    "key int": changed(LETTER, "key", 1), "no value": changed(LETTER, "value"), "no headers": changed(LETTER, "headers"),
}


@pytest.mark.parametrize("name", BAD_LETTERS)
def test_malformed_dead_letters_are_rejected(name):
    assert DEADLETTER.is_valid(LETTER) and DEADLETTER.is_valid(changed(LETTER, "key", None))
    assert not DEADLETTER.is_valid(BAD_LETTERS[name])
