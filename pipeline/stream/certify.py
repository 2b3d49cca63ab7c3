"""A router worker's certificate chains: one :class:`~pipeline.engine.certificates.CertificateSealer`
per MoE layer, fed with every routed batch (see :mod:`pipeline.engine.certificates`).

:class:`WorkerCertifier` turns a :class:`~pipeline.engine.layered.LayeredResult` into each
layer's canonical decision columns and returns the certificate records to publish (key
``<worker>/l<layer>``). The agent calls :meth:`~WorkerCertifier.certify` after the batch's
outcomes were acknowledged, :meth:`~WorkerCertifier.void` when they were not, and
:meth:`~WorkerCertifier.flush` when the worker is idle or its partitions are revoked, so that a
stopped worker leaves no decision unsealed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.engine.certificates import (Certificate, CertificateSealer, DecisionColumns, decision_calls,
                                          stream_hashes, table_set_digest)
from pipeline.engine.engine import RouteResult, VAREngine
from pipeline.engine.layered import LayeredResult

Record = tuple[bytes, bytes]


def result_columns(result: RouteResult, streams: np.ndarray) -> DecisionColumns:
    """The canonical columns of one layer's decisions (``streams``: uint64 per event)."""
    d, ev = result.decisions, result.events
    n = len(ev)
    return DecisionColumns(result.position + np.arange(n, dtype=np.int64), streams, ev.seqs, ev.tokens,
                           np.full(n, d.table_version, np.int64), d.tiers, d.key_kinds(), decision_calls(d),
                           d.experts, d.weights)


class WorkerCertifier:
    """Seals every layer's decisions of one worker incarnation into certificate records."""

    def __init__(self, worker: str, engines: Sequence[VAREngine], key: bytes | None = None) -> None:
        self.worker = worker
        self.engines = list(engines)
        self.sealers = [CertificateSealer(worker, e.config.layer, e.config.budget.budget, e.config.budget.window,
                                          e.config.budget.cap, key) for e in self.engines]
        self._digests: dict[int, str] = {}
        self.sealed = 0

    def _table_digests(self) -> dict[int, str]:
        """Digest of the table set in use (computed once per version)."""
        version = self.engines[0].table.version
        if version not in self._digests:
            self._digests[version] = table_set_digest([e.table for e in self.engines])
        return self._digests

    def _columns(self, result: LayeredResult) -> list[DecisionColumns]:
        ev = result.events
        streams = stream_hashes(ev.stream_names)[ev.stream_ids] if len(ev) else np.zeros(0, np.uint64)
        return [result_columns(layer, streams) for layer in result.layers]

    def certify(self, result: LayeredResult) -> list[Record]:
        """Certificates completed by a batch whose outcomes were acknowledged."""
        digests = self._table_digests()
        return self._records([c for s, cols in zip(self.sealers, self._columns(result))
                              for c in s.add(cols, digests)])

    def void(self, result: LayeredResult) -> list[Record]:
        """Certificates completed by a batch whose outcomes were not (all) acknowledged."""
        return self._records([c for s, cols in zip(self.sealers, self._columns(result)) for c in s.void(cols)])

    def pending(self) -> int:
        return max(s.pending() for s in self.sealers)

    def flush(self) -> list[Record]:
        """Seal every layer's open range that holds decisions."""
        return self._records([s.seal() for s in self.sealers if s.pending()])

    def _records(self, certs: list[Certificate]) -> list[Record]:
        self.sealed += len(certs)
        return [(f"{c.worker}/l{c.layer}".encode(), c.to_record()) for c in certs]
