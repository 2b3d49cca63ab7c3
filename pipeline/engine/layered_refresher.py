"""The stats refresher of a multi-layer engine: one :class:`~.refresher.StatsRefresher` per MoE layer,
fed the same outcomes, published together as one table set (no I/O).

Each layer learns only from its own decisions, with the rules of :mod:`.refresher`: frequency
from every outcome (whatever tier served that layer), routing evidence only from the layer's
learned-router decisions. An outcome is counted only if EVERY layer passes its refresher's check
(the layer count, each layer's router id, vocabulary, top-k, expert range): the layers' counts
stay equal, so they are due together and one snapshot holds them all.

A table set is built from every layer's statistics at once (:meth:`LayeredRefresher.build`)
and published under one version (:meth:`LayeredRefresher.published`).

**Snapshots.** One layer: exactly :meth:`StatsRefresher.snapshot` (so a synthetic deployment's
snapshot stays what it was). Several: ``VARSTSET`` + a JSON header (format, router ids, the
byte size of each layer's snapshot) + the layers' snapshots one after the other; every layer's
snapshot carries the same offsets.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import orjson

from .refresher import Refresh, RefreshCounters, StatsRefresher
from .snapshot import SnapshotError, read_snapshot
from .stats import TokenStats

if TYPE_CHECKING:
    from .outcome_columns import Outcomes

SET_FORMAT = "var-stats-set/1"
_SET_MAGIC = b"VARSTSET"


class LayeredRefresher:
    """Per-layer refreshers driven as one (see module docstring)."""

    def __init__(self, layers: Sequence[StatsRefresher]) -> None:
        if not layers:
            raise ValueError("a layered refresher needs at least one layer")
        self.layers = list(layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def router_ids(self) -> list[str]:
        return [r.router_id for r in self.layers]

    @property
    def counters(self) -> RefreshCounters:
        """Layer 0's counters (``outcomes``, ``refreshes``, ``last_version`` are every layer's)."""
        return self.layers[0].counters

    @property
    def offsets(self) -> dict[int, int]:
        return self.layers[0].offsets

    # --- input ---------------------------------------------------------------------------
    def check(self, outcomes: "Outcomes") -> str | None:
        """Why these outcomes (one decoded message) cannot be counted, or None."""
        if outcomes.num_layers != len(self.layers):
            return f"outcome has {outcomes.num_layers} layer(s), this worker learns {len(self.layers)}"
        for layer, refresher in enumerate(self.layers):
            reason = refresher.check(outcomes, layer)
            if reason is not None:
                return reason if len(self.layers) == 1 else f"layer {layer}: {reason}"
        return None

    def observe(self, outcomes: "Outcomes") -> list[int]:
        """Count checked outcomes at every layer; returns each layer's rows used as evidence."""
        return [refresher.observe(outcomes, layer) for layer, refresher in enumerate(self.layers)]

    def advance(self, offsets: Mapping[int, int]) -> None:
        for refresher in self.layers:
            refresher.advance(offsets)

    # --- refresh -------------------------------------------------------------------------
    def due(self) -> bool:
        """Every layer has seen the same outcomes on the same clock: layer 0 decides for all."""
        return self.layers[0].due()

    def build(self) -> list[Refresh]:
        """Every layer's next table, all with the same version (pure; published together)."""
        version = max(r.counters.last_version for r in self.layers) + 1
        refreshes = []
        for refresher in self.layers:
            refresh = refresher.build()
            refresh.table = refresh.table.with_version(version)
            refreshes.append(refresh)
        return refreshes

    def published(self, refreshes: Sequence[Refresh], version: int) -> None:
        if len(refreshes) != len(self.layers):
            raise ValueError(f"got {len(refreshes)} tables for {len(self.layers)} layers")
        for refresher, refresh in zip(self.layers, refreshes):
            refresher.published(refresh, version)

    def postpone(self) -> None:
        for refresher in self.layers:
            refresher.postpone()

    def report(self) -> list[list[dict[str, Any]]]:
        """Per layer, :meth:`StatsRefresher.report`."""
        return [refresher.report() for refresher in self.layers]

    # --- persistence ---------------------------------------------------------------------
    def snapshot(self) -> bytes:
        if len(self.layers) == 1:
            return self.layers[0].snapshot()
        blobs = [refresher.snapshot() for refresher in self.layers]
        header = orjson.dumps({"format": SET_FORMAT, "router_ids": self.router_ids, "sizes": [len(b) for b in blobs]})
        return _SET_MAGIC + struct.pack(">I", len(header)) + header + b"".join(blobs)

    def restore(self, raw: bytes) -> None:
        """Continue from a snapshot of the same routers and shapes; raises :class:`SnapshotError`."""
        if len(self.layers) == 1:
            if raw.startswith(_SET_MAGIC):
                raise SnapshotError("snapshot is of a multi-layer table set, this worker learns one layer")
            self.layers[0].restore(raw)
            return
        blobs = split_set_snapshot(raw)
        if len(blobs) != len(self.layers):
            raise SnapshotError(f"snapshot has {len(blobs)} layers, this worker learns {len(self.layers)}")
        for refresher, blob in zip(self.layers, blobs):
            refresher.restore(blob)


def split_set_snapshot(raw: bytes) -> list[bytes]:
    """The per-layer snapshots inside a snapshot (a one-layer snapshot is its own only layer)."""
    if not raw.startswith(_SET_MAGIC):
        return [raw]
    start = len(_SET_MAGIC) + 4
    if len(raw) < start:
        raise SnapshotError("truncated table-set stats snapshot")
    (size,) = struct.unpack(">I", raw[len(_SET_MAGIC):start])
    try:
        header = orjson.loads(raw[start:start + size])
        if header.get("format") != SET_FORMAT:
            raise SnapshotError(f"snapshot format {header.get('format')!r}, expected {SET_FORMAT!r}")
        sizes = [int(n) for n in header["sizes"]]
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"corrupt table-set stats snapshot ({type(exc).__name__}: {exc})") from None
    blobs, at = [], start + size
    for n in sizes:
        blobs.append(raw[at:at + n])
        at += n
    if at != len(raw) or not blobs:
        raise SnapshotError("corrupt table-set stats snapshot (layer sizes do not add up)")
    return blobs


def read_layer_snapshots(raw: bytes) -> list[tuple[dict[str, Any], TokenStats]]:
    """(header, statistics) of every layer of a snapshot of either kind."""
    return [read_snapshot(blob) for blob in split_set_snapshot(raw)]
