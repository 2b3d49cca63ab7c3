"""Routing outcomes: the messages router workers publish, one per routed input message (a chunk
of more than ``MAX_OUTCOME_TOKENS`` tokens gets several, each for consecutive seqs).

An outcome mirrors its input record. For a single token::

    {"v": 1, "stream": "doc-1", "seq": 7, "token": 42, "experts": [3, 5], "weights": [0.81, 0.19],
     "confidence": 0.77, "entropy": 0.64, "tier": "fast", "ctx": 1234567890123, "pos": 5120,
     "table_version": 3, "router_id": "context-v1000-...", "layer": 0, "worker": "host-4242"}

For a chunk, ``tokens`` replaces ``token`` and the per-token fields (``experts``, ``weights``,
``confidence``, ``entropy``, ``tier``, ``ctx``) become lists, one entry per token; ``seq`` and
``pos`` belong to the first token and count up by one per token.

Provenance makes every decision checkable afterwards: ``ctx`` is the context hash, ``pos`` the
worker's decision index (the budget governor's clock, so the per-window cap can be verified
per ``worker``), ``table_version``/``router_id`` say which table and router produced it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import orjson

from pipeline.engine.engine import RouteResult
from pipeline.engine.events import TIER_LABELS, Tier

OUTCOME_VERSION = 1
# At most this many tokens per outcome record (~130 bytes each as JSON): a chunk's outcome is
# split into several records so that it stays far below Kafka's default 1 MB message limit.
MAX_OUTCOME_TOKENS = 1024
_TIER_CODE = {label: code for code, label in enumerate(TIER_LABELS)}


class OutcomeError(ValueError):
    """A message that is not a valid outcome; ``str(err)`` is the reason."""


def encode_outcomes(result: RouteResult, message_index: np.ndarray, worker: str) -> list[tuple[bytes, bytes]]:
    """(key, value) per input message with routed events; ``message_index`` labels each routed row."""
    ev, d = result.events, result.decisions
    if len(ev) == 0:
        return []
    starts = np.flatnonzero(np.concatenate(([True], message_index[1:] != message_index[:-1])))
    ends = np.concatenate((starts[1:], [len(ev)]))
    if len(starts) and int((ends - starts).max()) > MAX_OUTCOME_TOKENS:
        pieces = [(first, min(first + MAX_OUTCOME_TOKENS, end)) for begin, end in zip(starts.tolist(), ends.tolist())
                  for first in range(begin, end, MAX_OUTCOME_TOKENS)]
        starts, ends = np.array([p[0] for p in pieces]), np.array([p[1] for p in pieces])
    common = {"table_version": d.table_version, "router_id": d.router_id, "layer": d.layer, "worker": worker}
    out = []
    for a, b in zip(starts.tolist(), ends.tolist()):
        stream = ev.stream_names[ev.stream_ids[a]]
        record: dict[str, Any] = {"v": OUTCOME_VERSION, "stream": stream, "seq": int(ev.seqs[a])}
        rows = slice(a, b) if b - a > 1 else a
        record["tokens" if b - a > 1 else "token"] = ev.tokens[rows].tolist()
        record["experts"] = d.experts[rows].tolist()
        record["weights"] = d.weights[rows].tolist()
        record["confidence"] = d.confidence[rows].tolist()
        record["entropy"] = d.entropy[rows].tolist()
        tiers = d.tiers[rows]
        record["tier"] = [TIER_LABELS[t] for t in tiers.tolist()] if b - a > 1 else TIER_LABELS[int(tiers)]
        record["ctx"] = d.ctx_hash[rows].tolist()
        record["pos"] = result.position + a
        record.update(common)
        out.append((stream.encode(), orjson.dumps(record)))
    return out


@dataclass(slots=True)
class Outcomes:
    """Outcomes as columns (one row per routed token)."""

    streams: list[str]
    seqs: np.ndarray
    tokens: np.ndarray
    experts: np.ndarray
    weights: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    tiers: np.ndarray
    ctx: np.ndarray
    positions: np.ndarray
    table_versions: np.ndarray
    workers: list[str]
    router_ids: list[str]

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def empty(cls) -> "Outcomes":
        z = np.zeros(0, np.int64)
        return cls([], z, z, np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), np.zeros(0, np.float32),
                   np.zeros(0, np.float32), np.zeros(0, np.int8), np.zeros(0, np.uint64), z, z, [], [])

    @classmethod
    def concat(cls, parts: Sequence["Outcomes"]) -> "Outcomes":
        if not parts:
            return cls.empty()
        arrays = ("seqs", "tokens", "experts", "weights", "confidence", "entropy", "tiers", "ctx", "positions",
                  "table_versions")
        return cls(
            [s for p in parts for s in p.streams],
            *(np.concatenate([getattr(p, name) for p in parts]) for name in arrays),
            [w for p in parts for w in p.workers],
            [r for p in parts for r in p.router_ids],
        )


def _field(record: dict[str, Any], name: str, kinds: tuple[type, ...]) -> Any:
    value = record.get(name)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise OutcomeError(f"field {name!r} missing or of the wrong type")
    return value


def decode_outcome(raw: bytes) -> Outcomes:
    """Parse and validate one outcome message (either shape) into columns."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OutcomeError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict) or record.get("v") != OUTCOME_VERSION:
        raise OutcomeError("not a version-1 outcome object")
    single = "token" in record
    tokens = [_field(record, "token", (int,))] if single else _field(record, "tokens", (list,))
    n = len(tokens)
    per_token = {name: ([record.get(name)] if single else record.get(name))
                 for name in ("experts", "weights", "confidence", "entropy", "tier", "ctx")}
    for name, values in per_token.items():
        if not isinstance(values, list) or len(values) != n:
            raise OutcomeError(f"field {name!r} does not have one entry per token")
    try:
        tiers = np.asarray([_TIER_CODE[t] for t in per_token["tier"]], dtype=np.int8)
        columns = (np.asarray(tokens, np.int64), np.asarray(per_token["experts"], np.int64),
                   np.asarray(per_token["weights"], np.float32), np.asarray(per_token["confidence"], np.float32),
                   np.asarray(per_token["entropy"], np.float32), tiers, np.asarray(per_token["ctx"], np.uint64))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise OutcomeError(f"bad per-token values ({type(exc).__name__}: {exc})") from None
    if columns[1].ndim != 2 or columns[1].shape != columns[2].shape or (columns[0] < 0).any():
        raise OutcomeError("experts/weights must be [tokens, k] and tokens >= 0")
    seq, pos = _field(record, "seq", (int,)), _field(record, "pos", (int,))
    stream, worker = _field(record, "stream", (str,)), _field(record, "worker", (str,))
    version, router_id = _field(record, "table_version", (int,)), _field(record, "router_id", (str,))
    return Outcomes([stream] * n, seq + np.arange(n, dtype=np.int64), *columns,
                    pos + np.arange(n, dtype=np.int64), np.full(n, version, np.int64), [worker] * n, [router_id] * n)


def learned_mask(outcomes: Outcomes) -> np.ndarray:
    return outcomes.tiers == Tier.LEARNED
