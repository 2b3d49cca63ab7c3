"""The stats refresher's snapshot format and the per-version report read from it. No I/O.

A snapshot is ``VARSTATS`` + a 4-byte big-endian header length + a JSON header (format, router
id, shape, partition offsets, counters, per-version tier counts and predictions, audit counts)
+ the statistics (:meth:`~.stats.TokenStats.to_bytes`).
"""
from __future__ import annotations

import struct
import zipfile
from typing import Any, Mapping

import numpy as np
import orjson

from pipeline.errors import VARError

from .events import TIER_LABELS, Tier
from .stats import TokenStats

SNAPSHOT_FORMAT = "var-stats-snapshot/1"
_MAGIC = b"VARSTATS"


class SnapshotError(VARError, ValueError):
    """A stats snapshot that cannot be restored here; ``str(err)`` is the reason."""


def encode_snapshot(header: dict[str, Any], stats: TokenStats) -> bytes:
    """The snapshot of ``header`` (JSON-safe; the format is added) and ``stats``."""
    raw = orjson.dumps({"format": SNAPSHOT_FORMAT, **header})
    return _MAGIC + struct.pack(">I", len(raw)) + raw + stats.to_bytes()


def version_report(observed: Mapping[int, np.ndarray], predicted: Mapping[int, float]) -> list[dict[str, Any]]:
    """Rows ``{version, outcomes, predicted_learned_share, observed_learned_share,
    observed_non_fast_share, tiers}`` in version order (``observed``: tier counts per version)."""
    rows = []
    for version, counts in sorted(observed.items()):
        counts = np.asarray(counts)
        total = int(counts.sum())
        rows.append({"version": version, "outcomes": total, "predicted_learned_share": predicted.get(version),
                     "observed_learned_share": float(counts[Tier.LEARNED] / total) if total else None,
                     "observed_non_fast_share": float(1 - counts[Tier.FAST] / total) if total else None,
                     "tiers": {label: int(counts[i]) for i, label in enumerate(TIER_LABELS)}})
    return rows


def read_snapshot(raw: bytes) -> tuple[dict[str, Any], TokenStats]:
    """(header, statistics) of a snapshot; raises :class:`SnapshotError` if it is not one."""
    if not raw.startswith(_MAGIC) or len(raw) < len(_MAGIC) + 4:
        raise SnapshotError("not a stats snapshot")
    start = len(_MAGIC) + 4
    (size,) = struct.unpack(">I", raw[len(_MAGIC):start])
    try:
        header = orjson.loads(raw[start:start + size])
        if header.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"snapshot format {header.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
        return header, TokenStats.from_bytes(raw[start + size:])
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"corrupt stats snapshot ({type(exc).__name__}: {exc})") from None
