"""Byte format of a fast-path table: one blob, loaded in one read, no per-entry keys.

Format ``var-fastpath-table/2``::

    b"VARFPT2\\n" | u32 big-endian header length | JSON header | array bytes, in header order

The header holds the table's scalars (version, router id, shape, thresholds, prior, meta) and
``arrays``: ``[name, dtype, shape]`` per array. Token arrays hold only the tokens with routing
evidence (``token_ids`` says which); pair arrays hold every pair entry. Little-endian raw
numpy data, so a reader maps each array with one ``frombuffer`` -- a table with 64k pairs
(about 2.5 MB) decodes in milliseconds.

Version-1 tables (a JSON object, token entries only) are still read.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from pipeline.errors import VARError

from .pairs import PairRoutes
from .table import RoutingTable, Thresholds


class TableError(VARError, ValueError):
    """Bytes or a file that are not a usable fast-path table; ``str(err)`` is one line."""

TABLE_FORMAT = "var-fastpath-table/2"
LEGACY_FORMAT = "var-fastpath-table/1"
_MAGIC = b"VARFPT2\n"
_TOKEN_ARRAYS = ("eligible", "experts", "weights", "confidence", "entropy", "frequency")


def _arrays(table: RoutingTable) -> list[tuple[str, np.ndarray]]:
    known = np.flatnonzero(table.known)
    out: list[tuple[str, np.ndarray]] = [("token_ids", known.astype("<i4"))]
    out += [(f"token_{name}", getattr(table, name)[known]) for name in _TOKEN_ARRAYS]
    out[2] = ("token_experts", out[2][1].astype("<i2"))
    p = table.pair_entries
    out += [(f"pair_{name}", getattr(p, name)) for name in PairRoutes._ARRAYS]
    return [(name, np.ascontiguousarray(a, a.dtype.newbyteorder("<"))) for name, a in out]


def encode_table(table: RoutingTable) -> bytes:
    arrays = _arrays(table)
    header = orjson.dumps({
        "format": TABLE_FORMAT, "version": table.version, "router_id": table.router_id,
        "vocab_size": table.vocab_size, "num_experts": table.num_experts, "top_k": table.top_k,
        "thresholds": table.thresholds.to_dict(), "meta": table.meta,
        "prior": {"experts": table.prior_experts.tolist(), "weights": table.prior_weights.tolist()},
        "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays],
    }, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([_MAGIC, struct.pack(">I", len(header)), header] + [a.tobytes() for _, a in arrays])


def _read_arrays(body: memoryview, specs: list[list[Any]]) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for name, dtype, shape in specs:
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        size = count * dt.itemsize
        if at + size > len(body):
            raise ValueError(f"fast-path table is truncated (array {name!r})")
        out[name] = np.frombuffer(body[at:at + size], dt).reshape(shape).copy()
        at += size
    return out


def _empty(header: dict[str, Any]) -> RoutingTable:
    v, k = int(header["vocab_size"]), int(header["top_k"])
    return RoutingTable(
        int(header["version"]), str(header["router_id"]), k, int(header["num_experts"]),
        Thresholds.from_dict(header["thresholds"]), np.zeros(v, bool), np.zeros(v, bool),
        np.zeros((v, k), np.int64), np.zeros((v, k), np.float32), np.zeros(v, np.float32),
        np.zeros(v, np.float32), np.zeros(v, np.float64),
        np.asarray(header["prior"]["experts"], np.int64), np.asarray(header["prior"]["weights"], np.float32),
        dict(header.get("meta", {})),
    )


def _decode_v2(raw: bytes) -> RoutingTable:
    (length,) = struct.unpack(">I", raw[len(_MAGIC):len(_MAGIC) + 4])
    start = len(_MAGIC) + 4
    header = orjson.loads(raw[start:start + length])
    if header.get("format") != TABLE_FORMAT:
        raise TableError(f"not a fast-path table (format {header.get('format')!r}, expected {TABLE_FORMAT!r})")
    arrays = _read_arrays(memoryview(raw)[start + length:], header["arrays"])
    table = _empty(header)
    ids = arrays["token_ids"].astype(np.int64)
    table.known[ids] = True
    for name in _TOKEN_ARRAYS:
        getattr(table, name)[ids] = arrays[f"token_{name}"]
    table.pairs = PairRoutes(*(arrays[f"pair_{name}"] for name in PairRoutes._ARRAYS))
    return table


def _decode_v1(data: dict[str, Any]) -> RoutingTable:
    if data.get("format") != LEGACY_FORMAT:
        raise TableError(f"not a fast-path table (format {data.get('format')!r}, expected {TABLE_FORMAT!r})")
    table = _empty(data)
    for token, eligible, experts, weights, conf, ent, freq in data["tokens"]:
        table.known[token], table.eligible[token] = True, bool(eligible)
        table.experts[token], table.weights[token] = experts, weights
        table.confidence[token], table.entropy[token], table.frequency[token] = conf, ent, freq
    return table


def decode_table(raw: bytes) -> RoutingTable:
    """Inverse of :func:`encode_table` (also reads version 1); :class:`TableError` if not a table."""
    try:
        if raw.startswith(_MAGIC):
            return _decode_v2(raw)
        data = orjson.loads(raw)
    except (orjson.JSONDecodeError, struct.error, KeyError, TypeError) as exc:
        raise TableError(f"not a fast-path table ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise TableError("not a fast-path table (not an object)")
    try:
        return _decode_v1(data)
    except (KeyError, TypeError) as exc:
        raise TableError(f"not a fast-path table ({type(exc).__name__}: {exc})") from None
