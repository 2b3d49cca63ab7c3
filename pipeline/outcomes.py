"""Routing outcomes: the messages router workers publish. A worker writes one record per stream
and routed batch -- the stream's consecutive seqs in that batch, whatever number of token
messages brought them (a run longer than :func:`tokens_per_record` tokens gets several records).
Per-token input therefore does not mean per-token outcomes; a reader must take every record as
a run of ``len(tokens)`` events (the single-token form below is what a run of one looks like).
With ``VAR_OUTCOME_RECORDS=message`` a worker writes one record per input message instead.

An outcome mirrors its input record and carries the decision of EVERY MoE layer the workers
route (one for a synthetic router, one per layer for a model). Format version 2, single token::

    {"v": 2, "stream": "doc-1", "seq": 7, "token": 42, "prev": 17, "worker": "host-4242/3f9a1c",
     "layers": [
       {"layer": 0, "router_id": "model-1a2b3c4d5e6f-l0", "table_version": 3, "pos": 5120,
        "experts": [3, 5], "weights": [0.81, 0.19], "confidence": 0.77, "entropy": 0.64,
        "tier": "fast", "key": "pair", "ctx": 1234567890123},
       {"layer": 1, ...}, ...]}

``prev`` is the token before the (first) token in its stream (-1 at the start of a stream): the
stats worker needs it for the (previous token, token) pair statistics. ``key`` says which table
key served the decision (``pair``, ``token``, ``prior``, or ``exact`` for the router's own
decisions: learned or cached). Both are optional when decoding (records of earlier workers:
``prev`` -1, ``key`` ``exact`` for learned/cache tiers and ``token`` otherwise).

``audit`` (optional) is the live-audit result of the layer's decision (:mod:`pipeline.engine.audit`):
-1 not audited, 0 the learned router's top-k expert set differed from the route served, 1 it
agreed. A layer object carries it only if at least one of its record's decisions was audited
(absent: every decision -1). An audited decision keeps its tier (``fast``) and route, but it
consumed a learned-router call at its ``pos``: a budget check counts, per worker and layer, the
decisions with ``tier == "learned"`` or ``audit >= 0`` (:func:`pipeline.engine.audit.router_calls`).

``layers`` lists the layers in order 0, 1, ... (every layer of the worker's engine, none left
out). For a chunk, ``tokens`` replaces ``token`` and each layer's per-token fields
(``experts``, ``weights``, ``confidence``, ``entropy``, ``tier``, ``key``, ``ctx``, ``audit``) become lists, one
entry per token; ``seq`` and each layer's ``pos`` belong to the first token and count up by one
per token.

Provenance makes every decision checkable afterwards: ``ctx`` is the hash of the context that
layer's router saw (layers have different receptive fields), ``pos`` the layer's decision index
in the worker (its budget governor's clock, so each layer's per-window cap can be verified per
``worker``), ``table_version``/``router_id`` which table set and router produced it (all layers
of an outcome come from the same table-set version).

:func:`decode_outcome` is strict: anything else raises :class:`OutcomeError` with a one-line
reason. It also reads the version-1 records of earlier workers (one layer, the fields of the
layer object at the top level next to ``"layer"``), so a topic written before an upgrade can
still be counted.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import orjson

from pipeline.engine.engine import RouteResult
from pipeline.engine.events import KEY_LABELS, TIER_LABELS, EventBatch
from pipeline.engine.outcome_columns import LayerOutcomes as LayerOutcomes, Outcomes as Outcomes  # re-exported
from pipeline.engine.pairs import previous_tokens
from pipeline.errors import VARError

OUTCOME_VERSION = 2
LEGACY_VERSION = 1  # one layer, its fields at the top level (decoded, never written)
# At most this many token decisions (tokens x layers) per outcome record (~130 bytes each as
# JSON): a chunk's outcome is split into several records so that it stays far below Kafka's
# default 1 MB message limit, whatever the number of layers.
MAX_OUTCOME_TOKENS = 1024
PER_TOKEN = ("experts", "weights", "confidence", "entropy", "tier", "ctx")
_TIER_CODE = {label: code for code, label in enumerate(TIER_LABELS)}
_KEY_CODE = {label: code for code, label in enumerate(KEY_LABELS)}
_AUDIT_VALUES = (-1, 0, 1)
_TIER_TEXT = np.asarray(TIER_LABELS, dtype=object)  # code -> label, indexable by a code array
_KEY_TEXT = np.asarray(KEY_LABELS, dtype=object)


class OutcomeError(VARError, ValueError):
    """A message that is not a valid outcome; ``str(err)`` is the reason."""


class Routed(Protocol):
    """What :func:`encode_outcomes` needs: a :class:`~pipeline.engine.layered.LayeredResult`."""

    events: EventBatch
    layers: list[RouteResult]


def tokens_per_record(layers: int) -> int:
    """Tokens per outcome record for ``layers`` layers (``MAX_OUTCOME_TOKENS`` decisions)."""
    return max(1, MAX_OUTCOME_TOKENS // max(1, layers))


def _pieces(runs: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Row ranges [a, b): one per run of equal labels, cut every ``limit`` rows."""
    starts = np.flatnonzero(np.concatenate(([True], runs[1:] != runs[:-1])))
    ends = np.concatenate((starts[1:], [len(runs)]))
    return [(first, min(first + limit, end)) for begin, end in zip(starts.tolist(), ends.tolist())
            for first in range(begin, end, limit)]


def encode_outcomes(result: Routed, runs: np.ndarray, worker: str) -> list[tuple[bytes, bytes]]:
    """(key, value) per run of routed rows: ``runs`` labels each row, equal labels must be adjacent
    rows of one stream with consecutive seqs (a worker passes its runs per stream,
    :func:`~pipeline.stream.processor.record_runs`, or the index of each row's input message)."""
    ev = result.events
    if len(ev) == 0:
        return []
    tokens = ev.tokens.tolist()
    prevs = previous_tokens(result.layers[0].contexts).tolist()
    layers = [_LayerLists(r) for r in result.layers]
    out = []
    for a, b in _pieces(runs, tokens_per_record(len(layers))):
        stream = ev.stream_names[ev.stream_ids[a]]
        record: dict[str, Any] = {"v": OUTCOME_VERSION, "stream": stream, "seq": int(ev.seqs[a])}
        if b - a > 1:
            record["tokens"] = tokens[a:b]
        else:
            record["token"] = tokens[a]
        record["prev"] = prevs[a]
        record["worker"] = worker
        record["layers"] = [layer.record(a, b) for layer in layers]
        out.append((stream.encode(), orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)))
    return out


class _LayerLists:
    """One layer's decisions as Python lists (converted once per batch, sliced per record)."""

    def __init__(self, result: RouteResult) -> None:
        d = result.decisions
        self.common = {"layer": d.layer, "router_id": d.router_id, "table_version": d.table_version}
        self.position = result.position
        # Numeric columns stay numpy arrays: orjson writes them directly (OPT_SERIALIZE_NUMPY),
        # float32 values as their shortest float32 text, which reads back bit-exact.
        self.columns: dict[str, Any] = {
            "experts": np.ascontiguousarray(d.experts), "weights": np.ascontiguousarray(d.weights),
            "confidence": np.ascontiguousarray(d.confidence), "entropy": np.ascontiguousarray(d.entropy),
            "tier": _TIER_TEXT[d.tiers].tolist(), "key": _KEY_TEXT[d.key_kinds()].tolist(),
            "ctx": np.ascontiguousarray(d.ctx_hash)}
        self.audits = d.audit_results()
        if (self.audits >= 0).any():
            self.columns["audit"] = np.ascontiguousarray(self.audits)

    def record(self, a: int, b: int) -> dict[str, Any]:
        rec: dict[str, Any] = dict(self.common, pos=self.position + a)
        audited = "audit" in self.columns and bool((self.audits[a:b] >= 0).any())
        for name, values in self.columns.items():
            if name != "audit" or audited:
                rec[name] = values[a:b] if b - a > 1 else values[a]
        return rec


def _field(record: dict[str, Any], name: str, kinds: tuple[type, ...], where: str = "") -> Any:
    value = record.get(name)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise OutcomeError(f"field {where + name!r} missing or of the wrong type")
    return value


def _numbers(per_token: dict[str, Any], name: str, dtype: Any, where: str) -> np.ndarray:
    """``per_token[name]`` as a ``dtype`` array, if it holds only JSON numbers (integers where
    ``dtype`` is an integer type) -- numpy alone would turn null into NaN and "0.5" into 0.5."""
    values = per_token[name]
    integers = bool(np.issubdtype(dtype, np.integer))
    kind = np.asarray(values).dtype.kind
    # numpy reads [1, 2**63] as float64: a flat list of (64-bit hash) integers is checked by type
    flat_ints = integers and all(type(v) is int for v in values)
    if not (flat_ints or kind in ("iu" if integers else "iuf")):
        raise OutcomeError(f"field {where + name!r} must hold {'integers' if integers else 'numbers'}")
    return np.asarray(values, dtype)


def _decode_layer(layer: Any, index: int, single: bool, n: int) -> LayerOutcomes:
    """One layer object (or a version-1 record) into columns for ``n`` tokens."""
    if not isinstance(layer, dict):
        raise OutcomeError(f"layer {index} is not an object")
    where = f"layers[{index}]." if index >= 0 else ""
    number = _field(layer, "layer", (int,), where)
    if index >= 0 and number != index:
        raise OutcomeError(f"layers[{index}] is layer {number}: layers must be listed in order 0, 1, ...")
    missing = [name for name in PER_TOKEN if name not in layer]
    if missing:
        raise OutcomeError(f"missing field {where + missing[0]!r}")
    per_token: dict[str, Any] = {name: ([layer[name]] if single else layer[name]) for name in PER_TOKEN}
    for name in ("key", "audit"):
        if name in layer:
            per_token[name] = [layer[name]] if single else layer[name]
    for name, values in per_token.items():
        if not isinstance(values, list) or len(values) != n:
            raise OutcomeError(f"field {where + name!r} does not have one entry per token")
    try:
        tiers = np.asarray([_TIER_CODE[t] for t in per_token["tier"]], dtype=np.int8)
        keys = (np.asarray([_KEY_CODE[k] for k in per_token["key"]], dtype=np.int8) if "key" in per_token
                else None)
        audits = np.asarray(per_token["audit"], np.int8) if "audit" in per_token else None
        experts, weights = _numbers(per_token, "experts", np.int64, where), _numbers(per_token, "weights", np.float32, where)
        columns = (_numbers(per_token, "confidence", np.float32, where), _numbers(per_token, "entropy", np.float32, where),
                   tiers, _numbers(per_token, "ctx", np.uint64, where))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise OutcomeError(f"bad per-token values in {where or 'the outcome'} ({type(exc).__name__}: {exc})") from None
    if experts.ndim != 2 or experts.shape != weights.shape:
        raise OutcomeError(f"{where}experts/weights must be [tokens, k]")
    if audits is not None and any(type(a) is not int or a not in _AUDIT_VALUES for a in per_token["audit"]):
        raise OutcomeError(f"field {where}'audit' must hold -1, 0 or 1 per token")
    pos, version = _field(layer, "pos", (int,), where), _field(layer, "table_version", (int,), where)
    router_id = _field(layer, "router_id", (str,), where)
    return LayerOutcomes(number, experts, weights, *columns, pos + np.arange(n, dtype=np.int64),
                         np.full(n, version, np.int64), [router_id] * n, keys, audits)


def decode_outcome(raw: bytes) -> Outcomes:
    """Parse and validate one outcome message (either shape, version 2 or 1) into columns."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OutcomeError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict) or record.get("v") not in (OUTCOME_VERSION, LEGACY_VERSION):
        raise OutcomeError("not a version-2 (or version-1) outcome object")
    single = "token" in record
    tokens = [_field(record, "token", (int,))] if single else _field(record, "tokens", (list,))
    n = len(tokens)
    try:
        token_ids = np.asarray(tokens, np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise OutcomeError(f"bad per-token values ({type(exc).__name__}: {exc})") from None
    if token_ids.ndim != 1 or (token_ids < 0).any():
        raise OutcomeError("tokens must be integers >= 0")
    if record["v"] == LEGACY_VERSION:
        layers = [_decode_layer(record, -1, single, n)]
    else:
        listed = record.get("layers")
        if not isinstance(listed, list) or not listed:
            raise OutcomeError("field 'layers' missing, empty or not a list")
        layers = [_decode_layer(layer, i, single, n) for i, layer in enumerate(listed)]
    seq = _field(record, "seq", (int,))
    stream, worker = _field(record, "stream", (str,)), _field(record, "worker", (str,))
    first_prev = _field(record, "prev", (int,)) if "prev" in record else -1
    prevs = np.concatenate(([first_prev], token_ids[:-1])) if n else np.zeros(0, np.int64)
    return Outcomes([stream] * n, seq + np.arange(n, dtype=np.int64), token_ids, [worker] * n, layers,
                    prevs.astype(np.int64))
