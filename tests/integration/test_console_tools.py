"""Kafka's own console clients against the pipeline: token events written with kafka-console-producer
(from the broker's jars) in the documented format are routed by a real router worker; the outcomes
and the dead letter read back with kafka-console-consumer parse and validate against the JSON
Schemas in docs/schemas/."""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import jsonschema
import orjson
import pytest

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.outcomes import Outcomes, decode_outcome
from pipeline.stack.console_tools import ConsumedRecord, console_consume, console_produce

from .harness import make_harness

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SPEC = SyntheticSpec(vocab_size=1000, num_streams=2, tokens_per_stream=400, seed=9)  # the offline phase's corpus
MALFORMED = '{"stream": "console-bad", "seq": 0, "tokens": [1, 2'  # cut off: not JSON


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


def token_lines() -> tuple[list[str], dict[tuple[str, int], int]]:
    """Console-producer lines ``stream<TAB>event`` -- per-token messages, chunks, both mixed in one
    stream, one with the optional version -- and the malformed one; and every (stream, seq) -> token."""
    rng = random.Random(4)
    expected: dict[tuple[str, int], int] = {}
    lines = []

    def add(stream: str, seq: int, count: int, chunk: bool, version: bool = False) -> None:
        tokens = [rng.randrange(SPEC.vocab_size) for _ in range(count)]
        expected.update({(stream, seq + i): t for i, t in enumerate(tokens)})
        body = f'"tokens": {json.dumps(tokens)}' if chunk else f'"token": {tokens[0]}'
        tail = ', "v": 1' if version else ""
        lines.append(f'{stream}\t{{"stream": "{stream}", "seq": {seq}, {body}{tail}}}')

    for seq in range(6):
        add("console-a", seq, 1, chunk=False, version=seq == 2)
    add("console-b", 0, 8, chunk=True)
    add("console-b", 8, 4, chunk=True, version=True)
    add("console-c", 0, 3, chunk=True)
    lines.append(f"console-bad\t{MALFORMED}")
    add("console-c", 3, 1, chunk=False)
    return lines, expected


def read_outcomes(bootstrap: str, topic: str, expected: set[tuple[str, int]],
                  deadline_s: float = 60.0) -> list[ConsumedRecord]:
    """Read the whole outcome topic with the console consumer until it covers ``expected``."""
    deadline = time.monotonic() + deadline_s
    while True:
        records = console_consume(bootstrap, topic, timeout_ms=3000)
        seen = {(o.streams[i], int(o.seqs[i])) for r in records for o in [decode_outcome(r.value)]
                for i in range(len(o))}
        if expected <= seen or time.monotonic() > deadline:
            return records


def test_console_producer_events_are_routed_and_console_consumer_output_validates(
        kafka_bootstrap, redis_url, tmp_path):
    lines, expected = token_lines()
    events = validator("token-event")
    for line in lines:
        value = line.split("\t", 1)[1]
        if value == MALFORMED:
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(value)
        else:
            events.validate(orjson.loads(value))  # the documented format, as written

    h = make_harness(kafka_bootstrap, redis_url, tmp_path, SPEC)
    h.start_routers(1)
    try:
        console_produce(h.settings.kafka_bootstrap, h.settings.topic_tokens, lines)
        records = read_outcomes(h.settings.kafka_bootstrap, h.settings.topic_outcomes, set(expected))
        deadletters = console_consume(h.settings.kafka_bootstrap, h.settings.topic_deadletter, timeout_ms=3000)
    finally:
        h.pool.stop_all()

    outcomes_schema = validator("outcome")
    decoded = []
    for record in records:
        obj = orjson.loads(record.value)
        outcomes_schema.validate(obj)
        outcome = decode_outcome(record.value)
        assert record.key == obj["stream"].encode(), record
        decoded.append(outcome)
    assert decoded, h.worker_logs()
    everything = Outcomes.concat(decoded)
    layers = everything.num_layers
    assert layers >= 1 and all([layer.layer for layer in o.layers] == list(range(layers)) for o in decoded)
    keys = list(zip(everything.streams, everything.seqs.tolist()))
    for layer in everything.layers:  # one decision per token and layer: the rows are (token, every layer)
        assert len(layer.tiers) == len(keys) and len(layer.experts) == len(keys)
    counts = Counter(keys)
    assert set(counts) == set(expected), (sorted(set(expected) - set(counts)), h.worker_logs())
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]
    assert dict(zip(keys, everything.tokens.tolist())) == expected
    assert any(len(o) > 1 for o in decoded), "the 8-token chunk gives a chunked outcome record"

    assert len(deadletters) == 1, [d.as_json() for d in deadletters]
    letter = deadletters[0].as_json()
    validator("deadletter").validate(letter)
    assert letter["key"] == "console-bad" and letter["value"] == MALFORMED
    assert letter["headers"]["var-reason"].startswith("not valid JSON"), letter
    assert letter["headers"]["var-source-topic"] == h.settings.topic_tokens
