"""``var verify`` on a worker's real outcomes and certificates (in-memory store twin): a clean run
passes every check, and each kind of tampering is caught by the check meant for it."""
from __future__ import annotations

import asyncio
import copy

import numpy as np
import orjson
import pytest

from pipeline.engine.budget import BudgetPolicy
from pipeline.engine.certificates import CertificateSealer, DecisionColumns, decode_certificate, window_digest
from pipeline.engine.engine import EngineConfig, VAREngine
from pipeline.corpus.jsonl import iter_batches
from pipeline.engine.offline import collect_statistics
from pipeline.engine.routers import RouterSpec, build_router
from pipeline.engine.table import RoutingTable, Thresholds, build_table
from pipeline.outcomes import Outcomes
from pipeline.stores.memory_store import MemoryRoutingStore
from pipeline.stream.certify import WorkerCertifier
from pipeline.stream.processor import RouterProcessor
from pipeline.verify.run import VerifyInputs, verify
from pipeline.verify.sources import certificates_of, outcomes_of

from .test_processor import corpus, messages_for

SPEC = RouterSpec(vocab_size=200, hidden=16, num_experts=4, top_k=2, window=3)
KEY = b"test-secret"


def routed_run(governor: bool = True, budget: float = 0.2, key: bytes | None = KEY, audit_rate: float = 0.0,
               serving=None, records: str = "stream"):
    """(outcome lines, certificate lines, tables by version, router, corpus) of one worker;
    ``serving``: the router the worker runs (default: the one the table was built from);
    ``records``: the worker's outcome record form."""
    router = build_router(SPEC)
    chunks = corpus(1500)
    stats = collect_statistics(router, iter_batches(chunks[:600], 256), 3)
    table = build_table(stats, Thresholds(min_frequency=3, max_entropy=0.9), 2, router.router_id, 1)
    config = EngineConfig(context_window=3, budget=BudgetPolicy(budget, 100, governor), audit_rate=audit_rate)
    engine = VAREngine(serving or router, RoutingTable.empty(200, 4, 2, router.router_id), config)
    store = MemoryRoutingStore()
    version = asyncio.run(store.publish_tables([table]))
    processor = RouterProcessor(engine, store, "w-test/abc123", records=records)
    certifier = WorkerCertifier(processor.worker, processor.engine.layers, key)
    windows: dict = {}
    outcomes, certs = [], []
    held = chunks
    for start in range(0, len(held), 250):
        out = asyncio.run(processor.process(messages_for(held[start:start + 250], start=start), windows.get))
        windows.update(out.windows)
        outcomes += [v for _, v in out.outcomes]
        certs += [v for _, v in certifier.certify(out.result)]
    certs += [v for _, v in certifier.flush()]
    tables = {0: [RoutingTable.empty(200, 4, 2, router.router_id)], version: asyncio.run(store.load_tables(version))}
    return outcomes, certs, tables, router, held


def run_verify(outcomes, certs, tables, router, held, key: bytes | None = KEY, corpus_given: bool = True):
    records = [(f"line {i}", v) for i, v in enumerate(outcomes)]
    return verify(VerifyInputs(outcomes_of(records), certificates_of([("c", c) for c in certs]), [router], tables,
                               [(20, 100)], held if corpus_given else None, key))


@pytest.fixture(scope="module", params=["stream", "message"])
def clean(request):
    """A clean run, with outcomes in either record form (per stream and batch, per message)."""
    return routed_run(records=request.param)


def status(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_a_clean_run_passes_every_check(clean):
    report = run_verify(*clean)
    assert status(report) == {"completeness": "pass", "budget": "pass", "exactness": "pass", "tables": "pass",
                              "certificates": "pass", "audits": "skip"}, report.render()
    checks = {c.name: c for c in report.checks}
    assert checks["exactness"].counts["rerouted"] > 100
    assert checks["tables"].counts["checked"] > 100
    assert checks["certificates"].counts["certified_decisions"] == len(report_outcomes(clean))
    assert report.ok


def report_outcomes(run) -> Outcomes:
    return outcomes_of([("x", v) for v in run[0]])


def _tiers(line: bytes) -> list[str]:
    """Layer 0's tier of each token of an outcome line (either record shape)."""
    tier = orjson.loads(line)["layers"][0]["tier"]
    return tier if isinstance(tier, list) else [tier]


def _edit(lines: list[bytes], index: int, change) -> list[bytes]:
    out = list(lines)
    record = orjson.loads(out[index])
    change(record)
    out[index] = orjson.dumps(record)
    return out


def failing(report) -> set[str]:
    return {c.name for c in report.checks if c.status == "fail"}


def test_a_dropped_outcome_is_caught(clean):
    outcomes, certs, *rest = clean
    mid = len(outcomes) // 2
    report = run_verify(outcomes[:mid] + outcomes[mid + 1:], certs, *rest)
    assert failing(report) == {"completeness", "certificates"}


def test_a_duplicated_outcome_is_caught(clean):
    outcomes, certs, *rest = clean
    report = run_verify(outcomes + [outcomes[len(outcomes) // 2]], certs, *rest)
    assert "certificates" in failing(report)


def test_an_injected_outcome_is_caught(clean):
    outcomes, certs, *rest = clean
    fake = orjson.loads(outcomes[10])
    fake["stream"], fake["seq"] = "intruder", 0
    report = run_verify(outcomes + [orjson.dumps(fake)], certs, *rest)
    assert {"certificates", "completeness"} <= failing(report)


def test_an_altered_expert_or_tier_is_caught(clean):
    outcomes, certs, *rest = clean
    learned, at = next((i, t) for i, v in enumerate(outcomes) for t, tier in enumerate(_tiers(v)) if tier == "learned")

    def flip_expert(record):
        layer = record["layers"][0]
        experts = layer["experts"][at] if "tokens" in record else layer["experts"]
        experts[0] = next(e for e in range(4) if e not in experts)
    assert {"certificates", "exactness"} <= failing(run_verify(_edit(outcomes, learned, flip_expert), certs, *rest))

    def to_fast(record):
        layer = record["layers"][0]
        if "tokens" in record:
            layer["tier"][at] = "fast"
        else:
            layer["tier"] = "fast"
    assert "certificates" in failing(run_verify(_edit(outcomes, learned, to_fast), certs, *rest))


def test_a_missing_certificate_breaks_the_chain(clean):
    outcomes, certs, *rest = clean
    report = run_verify(outcomes, certs[:3] + certs[4:], *rest)
    checks = {c.name: c for c in report.checks}
    assert checks["certificates"].status == "fail"
    assert any("missing" in v for v in checks["certificates"].violations)


def test_a_forged_certificate_fails_the_hmac(clean):
    outcomes, certs, *rest = clean
    cert = decode_certificate(certs[2])
    forged = copy.copy(cert)
    forged.mac = "0" * 64
    lines = list(certs)
    lines[2] = forged.to_record()
    assert "certificates" in failing(run_verify(outcomes, lines, *rest))
    assert "certificates" not in failing(run_verify(outcomes, lines, *rest, key=None))  # no key: not checkable


def test_without_the_governor_the_budget_check_fails():
    report = run_verify(*routed_run(governor=False, budget=0.05))
    budget = next(c for c in report.checks if c.name == "budget")
    assert budget.status == "fail" and "router calls in positions" in budget.violations[0]


def test_a_table_entry_that_differs_from_the_archive_is_caught(clean):
    outcomes, certs, tables, router, held = clean
    version = max(tables)
    changed = copy.deepcopy(tables)
    t = changed[version][0]
    t.experts = (t.experts + 1) % 4  # a different table under the same version
    report = run_verify(outcomes, certs, changed, router, held)
    assert "tables" in failing(report)


def test_the_sealer_cuts_at_window_boundaries_and_records_void_ranges():
    sealer = CertificateSealer("w", 0, 0.1, 10, 1)
    n = 25

    def cols(a: int, b: int) -> DecisionColumns:
        m = b - a
        z = np.zeros(m, np.int64)
        return DecisionColumns(np.arange(a, b), z.astype(np.uint64), z, z, z, z.astype(np.int8), z.astype(np.int8),
                               np.zeros(m, bool), np.zeros((m, 2), np.int64), np.zeros((m, 2), np.float32))
    first = sealer.add(cols(0, 12), {0: "d"})
    voided = sealer.void(cols(12, 15))
    rest = sealer.add(cols(15, n), {0: "d"})
    sealed = first + voided + rest
    assert [(c.first, c.end) for c in sealed] == [(0, 10), (10, 20)]
    assert sealed[1].void == [[12, 15]] and sealed[1].decisions == 7
    assert window_digest(sealed[0], cols(0, 10)) == sealed[0].digest
    assert sealed[1].prev == sealed[0].digest
    with pytest.raises(ValueError):
        sealer.add(cols(30, 31), {})


def test_verify_reports_drift_from_the_live_audits():
    from .test_audit_drift import SwappedCheckpoint

    clean_audited = run_verify(*routed_run(audit_rate=0.3))
    audits = next(c for c in clean_audited.checks if c.name == "audits")
    assert audits.status == "pass" and audits.counts["audited"] > 50, clean_audited.render()
    swapped = SwappedCheckpoint(build_router(SPEC), build_router(SPEC.with_(seed=9)))
    drifted = run_verify(*routed_run(audit_rate=0.3, serving=swapped))
    checks = {c.name: c for c in drifted.checks}
    assert checks["audits"].status == "warn" and any("DRIFT" in n for n in checks["audits"].notes), drifted.render()
    assert checks["exactness"].status == "fail"  # the verifier's own router is not the one that served
