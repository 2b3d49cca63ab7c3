"""The token-event record format, shared by corpus files (JSON Lines) and Kafka messages.

One record is a JSON object, either a single token::

    {"stream": "doc-1", "seq": 7, "token": 42}

or a chunk of consecutive tokens, ``seq`` being the sequence number of the first one::

    {"stream": "doc-1", "seq": 7, "tokens": [42, 5, 19]}

An optional ``"v"`` field carries the schema version (currently 1). Parsing is strict: every
problem raises :class:`RecordError` with a one-line reason, so callers can report the line
number (files) or dead-letter the message (Kafka) without losing good records.
"""
from __future__ import annotations

from typing import Any, TypeGuard

import orjson

from pipeline.errors import VARError

from .events import EventChunk

SCHEMA_VERSION = 1


class RecordError(VARError, ValueError):
    """A record that is not a valid token event; ``str(err)`` is the reason."""


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_token(token: Any, vocab_size: int | None, where: str) -> int:
    if not _is_int(token):
        raise RecordError(f"{where} must be an integer, got {type(token).__name__}")
    if token < 0:
        raise RecordError(f"{where} is negative ({token})")
    if vocab_size is not None and token >= vocab_size:
        raise RecordError(f"{where} {token} is outside the vocabulary (size {vocab_size})")
    return token


def _check_tokens(raw: Any, vocab_size: int | None) -> tuple[int, ...]:
    """Validate a ``tokens`` list with C-speed checks, naming the first bad entry on failure."""
    if not isinstance(raw, list) or not raw:
        raise RecordError("field 'tokens' must be a non-empty list")
    if all(type(t) is int for t in raw) and min(raw) >= 0 and (vocab_size is None or max(raw) < vocab_size):
        return tuple(raw)
    return tuple(_check_token(t, vocab_size, f"tokens[{i}]") for i, t in enumerate(raw))


def parse_record(obj: Any, offset: int = -1, vocab_size: int | None = None) -> EventChunk:
    """Validate a decoded record and return it as an :class:`EventChunk`.

    Raises :class:`RecordError` for: a non-object, a missing/empty/non-string ``stream``, a
    missing/negative/non-integer ``seq``, neither or both of ``token``/``tokens``, an empty or
    non-list ``tokens``, a non-integer or negative token, a token ``>= vocab_size`` (when
    given), or an unknown schema version.
    """
    if not isinstance(obj, dict):
        raise RecordError(f"record must be a JSON object, got {type(obj).__name__}")
    version = obj.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RecordError(f"unsupported schema version {version!r} (expected {SCHEMA_VERSION})")
    stream = obj.get("stream")
    if not isinstance(stream, str) or not stream:
        raise RecordError("field 'stream' must be a non-empty string")
    seq = obj.get("seq")
    if not _is_int(seq):
        raise RecordError("field 'seq' must be an integer")
    if seq < 0:
        raise RecordError(f"field 'seq' is negative ({seq})")
    has_one, has_many = "token" in obj, "tokens" in obj
    if has_one == has_many:
        raise RecordError("record needs exactly one of 'token' or 'tokens'")
    if has_one:
        tokens: tuple[int, ...] = (_check_token(obj["token"], vocab_size, "token"),)
    else:
        tokens = _check_tokens(obj["tokens"], vocab_size)
    return EventChunk(stream, seq, tokens, offset)


def parse_record_bytes(raw: bytes | str, offset: int = -1, vocab_size: int | None = None) -> EventChunk:
    """Decode JSON bytes and validate them with :func:`parse_record`."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc.msg})") from None
    return parse_record(obj, offset, vocab_size)


def chunk_to_record(chunk: EventChunk, with_version: bool = True) -> dict[str, Any]:
    """The JSON object for a chunk: ``token`` when it holds one token, else ``tokens``."""
    record: dict[str, Any] = {"stream": chunk.stream, "seq": chunk.first_seq}
    if len(chunk.tokens) == 1:
        record["token"] = chunk.tokens[0]
    else:
        record["tokens"] = list(chunk.tokens)
    if with_version:
        record["v"] = SCHEMA_VERSION
    return record


def encode_chunk(chunk: EventChunk, with_version: bool = True) -> bytes:
    """Serialise a chunk as one JSON record (no trailing newline)."""
    return orjson.dumps(chunk_to_record(chunk, with_version))
