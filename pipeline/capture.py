"""Routing capture ("router replay"): routed experts of chosen streams as dense arrays in a ``.npz``.

A capture turns outcome records (:mod:`pipeline.outcomes`) into the layout serving engines and
trainers use for routing replay: one row per token, sorted by (stream, seq), every MoE layer in
a fixed slot. Arrays (``T`` tokens, ``L`` layers, ``K`` = top_k)::

    experts         int16   [T, L, K]  routed expert ids, in the order the router ranked them
    weights         float32 [T, L, K]  gate weights of those experts (what the model mixed with)
    tiers           int8    [T, L]     pipeline.engine.events.Tier: which tier decided
    key_kinds       int8    [T, L]     pipeline.engine.events.KeyKind: which table key served it
    table_versions  int64   [T, L]     table-set version in force for the decision
    router_index    int16   [T, L]     index into router_ids (the router that produced it)
    router_ids      <U      [R]        distinct router ids (content-hashed: they pin the weights)
    stream_index    int32   [T]        index into streams
    streams         <U      [S]        stream names, sorted
    seqs, tokens    int64   [T]        sequence number and token id of each row
    meta            <U      []         JSON: format, version, layers, top_k, router ids per layer,
                                       table versions, tier/key labels, source, duplicates dropped

Strings are fixed-width unicode arrays and ``meta`` a 0-d unicode array, so the file loads with
``np.load(path, allow_pickle=False)``.

Mapping to other engines: vLLM's router replay returns, per request, ``routed_experts`` of shape
[num_tokens, num_layers, top_k] (int16 expert ids) -- ``experts[stream_index == s]`` is exactly
that array for stream ``s`` (a stream is a request whose tokens are prompt plus generation).
Megatron-LM's ``RouterReplay`` takes one [num_tokens, top_k] index tensor per MoE layer (in
router order): ``[experts[:, l, :] for l in range(L)]``. Both record indices only; a capture adds
the weights and per-decision provenance (tier, key, table version, router id) next to them.

Outcomes may arrive out of order and duplicated (redelivered after a worker died):
:func:`build_capture` sorts by (stream, seq), keeps the FIRST outcome of every (stream, seq) and
counts the rest. Replay needs whole streams from seq 0: :func:`stream_spans` reports, per stream,
the first seq and how many seqs are missing (:attr:`StreamSpan.complete`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.engine.events import KEY_LABELS, TIER_LABELS
from pipeline.errors import VARError
from pipeline.outcomes import Outcomes

FORMAT = "var-routing-capture"
FORMAT_VERSION = 1
_ARRAYS = ("experts", "weights", "tiers", "key_kinds", "table_versions", "router_index", "router_ids",
           "stream_index", "streams", "seqs", "tokens")


class CaptureError(VARError, ValueError):
    """A capture that cannot be built, written or read; ``str(err)`` is a one-line reason."""


@dataclass(frozen=True, slots=True)
class StreamSpan:
    """One stream's rows in a capture: seqs ``first_seq..last_seq`` with ``missing`` absent."""

    name: str
    tokens: int
    first_seq: int
    last_seq: int
    missing: int

    @property
    def complete(self) -> bool:
        """Every seq from 0 to ``last_seq`` is present (what a replay through the model needs)."""
        return self.first_seq == 0 and self.missing == 0


@dataclass
class Capture:
    """The arrays of the module docstring; rows sorted by (stream, seq), one per (stream, seq)."""

    streams: list[str]
    stream_index: np.ndarray  # int32 [T]
    seqs: np.ndarray  # int64 [T]
    tokens: np.ndarray  # int64 [T]
    experts: np.ndarray  # int16 [T, L, K]
    weights: np.ndarray  # float32 [T, L, K]
    tiers: np.ndarray  # int8 [T, L]
    key_kinds: np.ndarray  # int8 [T, L]
    table_versions: np.ndarray  # int64 [T, L]
    router_ids: list[str]
    router_index: np.ndarray  # int16 [T, L]
    layers: list[int]  # layer numbers, one per slot of axis 1
    meta: dict[str, Any] = field(default_factory=dict)  # source, duplicates_dropped (free-form)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    def layer_router_ids(self) -> list[list[str]]:
        """Per layer slot, the distinct router ids of its decisions (usually one)."""
        return [[self.router_ids[i] for i in np.unique(self.router_index[:, slot]).tolist()]
                for slot in range(len(self.layers))]

    def stream_rows(self) -> list[slice]:
        """Row range of every stream, in the order of :attr:`streams`."""
        bounds = np.searchsorted(self.stream_index, np.arange(len(self.streams) + 1))
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def to_meta(self) -> dict[str, Any]:
        """The ``meta`` JSON written next to the arrays."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "layers": self.layers, "top_k": self.top_k,
                "router_ids": self.layer_router_ids(),
                "table_versions": np.unique(self.table_versions).tolist(),
                "tiers": list(TIER_LABELS), "key_kinds": list(KEY_LABELS), **self.meta}


def stream_spans(capture: Capture) -> list[StreamSpan]:
    """Per stream (order of :attr:`Capture.streams`): token count, seq range, missing seqs."""
    spans = []
    for name, rows in zip(capture.streams, capture.stream_rows()):
        seqs = capture.seqs[rows]
        first, last = int(seqs[0]), int(seqs[-1])
        spans.append(StreamSpan(name, len(seqs), first, last, last - first + 1 - len(seqs)))
    return spans


def _stack(outcomes: Outcomes, name: str) -> np.ndarray:
    """Per-layer column ``name`` of ``outcomes`` with layers on axis 1: [n, L] or [n, L, K]."""
    parts = [getattr(layer, name) for layer in outcomes.layers]
    if len({p.shape for p in parts}) != 1:
        raise CaptureError(f"layers disagree on the shape of {name}: {sorted({p.shape for p in parts})}")
    return np.stack(parts, axis=1)


def build_capture(outcomes: Outcomes, streams: Sequence[str] | None = None, source: str = "") -> Capture:
    """The capture of ``outcomes`` (every stream, or only ``streams``); see the module docstring.

    Raises :class:`CaptureError` for no outcomes, a stream not in them, or more than 32767
    experts/routers (int16)."""
    if len(outcomes) == 0:
        raise CaptureError(f"no outcomes in {source or 'the source'}")
    names, codes = np.unique(np.asarray(outcomes.streams), return_inverse=True)
    rows = np.arange(len(outcomes))
    if streams is not None:
        known = set(names.tolist())
        unknown = [s for s in streams if s not in known]
        if unknown:
            raise CaptureError(f"no outcomes for stream(s) {', '.join(map(repr, unknown[:5]))} "
                               f"(the source has {len(known)} streams, e.g. {', '.join(map(repr, names[:3].tolist()))})")
        rows = np.flatnonzero(np.isin(names[codes], np.asarray(list(streams))))
    order = rows[np.lexsort((rows, outcomes.seqs[rows], codes[rows]))]  # by stream, seq, then arrival
    key = np.stack((codes[order], outcomes.seqs[order]), axis=1)  # [n, 2]
    first = np.concatenate(([True], (key[1:] != key[:-1]).any(axis=1)))
    keep = order[first]
    kept_names, stream_index = np.unique(codes[keep], return_inverse=True)
    experts = _stack(outcomes, "experts")[keep]  # [T, L, K]
    router_names, router_index = np.unique(
        np.asarray([layer.router_ids for layer in outcomes.layers]).T[keep], return_inverse=True)  # [T, L]
    if experts.size and (experts.max() > np.iinfo(np.int16).max or experts.min() < 0):
        raise CaptureError("expert ids must be in 0..32767 (int16)")
    if len(router_names) > np.iinfo(np.int16).max:
        raise CaptureError("more than 32767 distinct router ids")
    return Capture(
        streams=names[kept_names].tolist(), stream_index=stream_index.astype(np.int32),
        seqs=outcomes.seqs[keep].astype(np.int64), tokens=outcomes.tokens[keep].astype(np.int64),
        experts=experts.astype(np.int16), weights=_stack(outcomes, "weights")[keep].astype(np.float32),
        tiers=_stack(outcomes, "tiers")[keep].astype(np.int8),
        key_kinds=_stack(outcomes, "key_kinds")[keep].astype(np.int8),
        table_versions=_stack(outcomes, "table_versions")[keep].astype(np.int64),
        router_ids=router_names.tolist(), router_index=router_index.reshape(len(keep), -1).astype(np.int16),
        layers=[layer.layer for layer in outcomes.layers],
        meta={"source": source, "duplicates_dropped": int(len(order) - len(keep))})


def save_capture(capture: Capture, path: str | Path) -> None:
    """Write ``capture`` to ``path`` (compressed ``.npz``, exactly that name; atomic replace)."""
    target = Path(path)
    arrays = {name: getattr(capture, name) for name in _ARRAYS}
    arrays["streams"] = np.asarray(capture.streams, dtype=str)  # <U [S]
    arrays["router_ids"] = np.asarray(capture.router_ids, dtype=str)  # <U [R]
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, meta=np.asarray(json.dumps(capture.to_meta())), **arrays)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CaptureError(f"cannot write {target}: {exc.strerror or exc}") from None


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not path.is_file():
        raise CaptureError(f"no such capture file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(str(arrays.pop("meta")[()]))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise CaptureError(f"{path}: not a capture file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CaptureError(f"{path}: not a {FORMAT} file")
    if meta.get("version") != FORMAT_VERSION:
        raise CaptureError(f"{path}: capture format version {meta.get('version')} (this VAR reads {FORMAT_VERSION})")
    missing = [name for name in _ARRAYS if name not in arrays]
    if missing:
        raise CaptureError(f"{path}: capture lacks the arrays {', '.join(missing)}")
    return arrays, meta


def load_capture(path: str | Path) -> Capture:
    """Read a capture written by :func:`save_capture`; :class:`CaptureError` if it is not one."""
    p = Path(path)
    a, meta = _read(p)
    n, layers = len(a["tokens"]), list(meta.get("layers", []))
    shapes = {"experts": (n, len(layers), meta.get("top_k")), "weights": (n, len(layers), meta.get("top_k")),
              **{name: (n, len(layers)) for name in ("tiers", "key_kinds", "table_versions", "router_index")},
              **{name: (n,) for name in ("stream_index", "seqs")}}
    wrong = [name for name, shape in shapes.items() if a[name].shape != shape]
    if wrong:
        raise CaptureError(f"{p}: arrays {', '.join(wrong)} do not match [tokens={n}, layers={len(layers)}, "
                           f"top_k={meta.get('top_k')}]")
    if n and (a["stream_index"].max() >= len(a["streams"]) or a["router_index"].max() >= len(a["router_ids"])):
        raise CaptureError(f"{p}: stream or router index out of range")
    same = np.diff(a["stream_index"]) == 0
    if (np.diff(a["stream_index"]) < 0).any() or (np.diff(a["seqs"])[same] <= 0).any():
        raise CaptureError(f"{p}: rows are not sorted by (stream, seq) without repeats")
    extra = {k: v for k, v in meta.items() if k in ("source", "duplicates_dropped")}
    return Capture(a["streams"].tolist(), a["stream_index"], a["seqs"], a["tokens"], a["experts"], a["weights"],
                   a["tiers"], a["key_kinds"], a["table_versions"], a["router_ids"].tolist(), a["router_index"],
                   layers, extra)
