"""``var verify``'s driver: gather the inputs, run the five checks, build the report.

The verifier trusts nothing it reads: it rebuilds the routers from its own settings (the
checkpoint it is given, whose SHA-256 is in every model router id), the streams from the corpus
or the outcomes, the budget windows from the positions, and the table sets from the archive;
the certificates are rebuilt from the outcomes and compared.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from pipeline.engine.certificates import Certificate
from pipeline.engine.events import EventChunk
from pipeline.engine.routers import Router
from pipeline.engine.table import RoutingTable
from pipeline.outcomes import Outcomes
from pipeline.stores.archive import TableArchive

from .checks import check_audits, check_budget, check_certificates, check_completeness, group_certificates, worker_rows
from .exactness import check_exactness, check_tables
from .report import VerifyReport
from .streams import StreamIndex

Progress = Callable[[int], None]


@dataclass
class VerifyInputs:
    outcomes: Outcomes
    certificates: list[Certificate]
    routers: Sequence[Router]
    tables: dict[int, list[RoutingTable] | None]  # every version the outcomes name
    caps: list[tuple[int, int]]  # (cap, window) per layer for chains without a certificate
    corpus: list[EventChunk] | None = None
    key: bytes | None = None
    tie_tolerance: float = 1e-4
    audit_min_agreement: float = 0.5


def load_tables(archive: TableArchive, versions: Sequence[int], empty: list[RoutingTable],
                close: Callable[[], Awaitable[None]] | None = None) -> dict[int, list[RoutingTable] | None]:
    """Each version's table set; version 0 is the empty cold-start set (never stored).
    ``close`` (e.g. the Redis client's) is awaited in the same event loop at the end."""
    async def gather() -> dict[int, list[RoutingTable] | None]:
        try:
            return {v: (empty if v == 0 else await archive.load(v)) for v in versions}
        finally:
            if close is not None:
                await close()
    return asyncio.run(gather())


def table_versions(outcomes: Outcomes) -> list[int]:
    return sorted({int(v) for layer in outcomes.layers for v in set(layer.table_versions.tolist())})


def verify(inputs: VerifyInputs, progress: Progress | None = None) -> VerifyReport:
    """Run every check on ``inputs``."""
    started = time.perf_counter()
    out = inputs.outcomes
    by_worker = worker_rows(out)
    certs = group_certificates(inputs.certificates)
    expected = None
    if inputs.corpus is not None:
        expected = [(c.stream, s) for c in inputs.corpus for s in range(c.first_seq, c.first_seq + len(c.tokens))]
        index = StreamIndex.from_chunks(inputs.corpus)
    else:
        index = StreamIndex.build(out.streams, out.seqs, out.tokens)
    checks = [check_completeness(out, expected),
              check_budget(out, by_worker, certs, inputs.caps),
              check_exactness(out, index, inputs.routers, inputs.tie_tolerance, progress),
              check_tables(out, index, inputs.tables.get, certs),
              check_certificates(out, by_worker, certs, inputs.key),
              check_audits(out, inputs.audit_min_agreement)]
    if inputs.key is None:
        checks[4].notes.append("no certificate key given: HMACs not checked (set VAR_CERTIFICATE_KEY)")
    return VerifyReport(len(out), len(by_worker), out.num_layers, checks, time.perf_counter() - started)
