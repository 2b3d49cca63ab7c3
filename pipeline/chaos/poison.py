"""Malformed token messages for the chaos suite, each with the reason the pipeline must give.

Every poison message is unique (its bytes identify it in the dead-letter topic) and carries the
phrase its dead letter's ``var-reason`` must contain. Kinds:

==================  =====================================================  ==========================
kind                message                                                reason contains
==================  =====================================================  ==========================
random_bytes        random bytes (invalid UTF-8)                           ``not valid JSON``
truncated_json      a valid record cut in the middle                       ``not valid JSON``
wrong_types         stream/seq/tokens of the wrong JSON type               ``must be``
empty_key           a valid record sent with an empty key                  ``does not match stream``
negative_token      a token below 0                                        ``is negative``
oov_token           a token outside the vocabulary                         ``outside the vocabulary``
seq_backwards       after a valid *anchor* event at seq 100, seq 50        ``does not increase``
oversized           a chunk over the broker's maximum message size         ``larger than the maximum``
==================  =====================================================  ==========================

The ``seq_backwards`` anchors are valid events: they must get outcomes like the corpus events.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

from pipeline.engine.events import EventChunk
from pipeline.engine.records import encode_chunk

KINDS = ("random_bytes", "truncated_json", "wrong_types", "empty_key", "negative_token", "oov_token",
         "seq_backwards")
REASONS = {"random_bytes": "not valid JSON", "truncated_json": "not valid JSON", "wrong_types": "must be",
           "empty_key": "does not match stream", "negative_token": "is negative",
           "oov_token": "outside the vocabulary", "seq_backwards": "does not increase",
           "oversized": "larger than the maximum"}
OVERSIZED_TOKENS = 300_000  # ~2 MB as JSON, twice the 1 MB limit


@dataclass(frozen=True)
class Poison:
    kind: str
    key: bytes | None
    value: bytes
    anchor: EventChunk | None = None  # a valid event sent just before (seq_backwards)

    @property
    def reason(self) -> str:
        return REASONS[self.kind]


def _wrong_types(i: int) -> dict:
    variants = ({"stream": i, "seq": 0, "token": 1}, {"stream": f"poison/w{i}", "seq": "zero", "token": 1},
                {"stream": f"poison/w{i}", "seq": 0, "tokens": f"t{i}"}, {"stream": f"poison/w{i}", "seq": 0,
                                                                           "token": 1.5 + i})
    return variants[i % len(variants)]


def make_poison(i: int, kind: str, vocab_size: int, rng: random.Random) -> Poison:
    """The ``i``-th poison message of ``kind`` (deterministic for a given ``rng`` state)."""
    stream = f"poison/{kind}/{i}"
    key = stream.encode()
    if kind == "random_bytes":
        return Poison(kind, key, b"\xff\xfe" + str(i).encode() + rng.randbytes(rng.randint(8, 64)))
    if kind == "truncated_json":
        whole = encode_chunk(EventChunk(stream, 0, tuple(rng.randrange(vocab_size) for _ in range(8))))
        return Poison(kind, key, whole[: len(whole) // 2])
    if kind == "wrong_types":
        return Poison(kind, key, orjson.dumps(_wrong_types(i)))
    if kind == "empty_key":
        return Poison(kind, b"", encode_chunk(EventChunk(stream, 0, (rng.randrange(vocab_size),))))
    if kind == "negative_token":
        return Poison(kind, key, orjson.dumps({"stream": stream, "seq": 0, "token": -1 - i}))
    if kind == "oov_token":
        return Poison(kind, key, orjson.dumps({"stream": stream, "seq": 0, "token": vocab_size + i}))
    if kind == "seq_backwards":
        anchor = EventChunk(stream, 100, (rng.randrange(vocab_size),))
        return Poison(kind, key, encode_chunk(EventChunk(stream, 50, (rng.randrange(vocab_size),))), anchor)
    if kind == "oversized":
        return Poison(kind, key, encode_chunk(EventChunk(stream, 0, tuple([vocab_size - 1] * OVERSIZED_TOKENS))))
    raise ValueError(f"unknown poison kind {kind!r}")


def poison_set(count: int, vocab_size: int, seed: int = 0, oversized: int = 2) -> list[Poison]:
    """``count`` poison messages: ``oversized`` huge chunks, the rest spread over :data:`KINDS`."""
    rng = random.Random(seed)
    regular = [make_poison(i, KINDS[i % len(KINDS)], vocab_size, rng) for i in range(max(0, count - oversized))]
    return regular + [make_poison(i, "oversized", vocab_size, rng) for i in range(min(oversized, count))]


def interleave(good: list[tuple[tuple[bytes | None, bytes], int]], poison: list[Poison],
               seed: int = 0) -> list[tuple[tuple[bytes | None, bytes], int]]:
    """Good messages in their order with each poison message (and its anchor first) inserted at
    a random place; items are ``((key, value), tokens)``."""
    rng = random.Random(seed + 1)
    slots: dict[int, list[Poison]] = {}
    for p in poison:
        slots.setdefault(rng.randrange(len(good) + 1), []).append(p)
    out: list[tuple[tuple[bytes | None, bytes], int]] = []
    for i in range(len(good) + 1):
        for p in slots.get(i, ()):
            if p.anchor is not None:
                out.append(((p.anchor.stream.encode(), encode_chunk(p.anchor)), 1))
            out.append(((p.key, p.value), 0))
        if i < len(good):
            out.append(good[i])
    return out
