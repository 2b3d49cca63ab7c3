"""The outcome-only checks of ``var verify``: completeness, budget and certificates.

All three recompute what they check from the outcomes' own fields -- (stream, seq), the
worker incarnation, each layer's governor position and tier -- and never trust a counter:

* **completeness** (with a corpus): every (stream, seq) has an outcome; none is unexpected.
  Several outcomes of one event are *duplicates* -- allowed (at-least-once: a worker died after
  publishing, before its window was saved, and the event was routed again) and counted.
* **budget**: per worker incarnation and layer, no ``window`` consecutive positions hold more
  router calls (learned decisions and audits) than the cap -- the cap its certificates state
  (the layer's share of the split budget), else the one given.
* **certificates**: each chain is unbroken and each certificate matches its outcomes
  (:mod:`pipeline.engine.certificates`).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from pipeline.engine.certificates import Certificate, DecisionColumns, chain_breaks, stream_hashes, window_digest
from pipeline.engine.audit import AuditLedger
from pipeline.outcomes import LayerOutcomes, Outcomes

from .report import Check

Chain = tuple[str, int]  # (worker incarnation, layer)


def layer_calls(layer: LayerOutcomes) -> np.ndarray:
    """bool [n]: decisions that consumed a learned-router call (learned, or audited)."""
    return layer.router_calls()


def check_audits(outcomes: Outcomes, min_agreement: float) -> Check:
    """Live audits per table version and layer: the fast path's agreement with the router and
    its Wilson interval. An interval entirely below ``min_agreement`` is drift (the router no
    longer routes like the table says): a warning -- the table is what was published, but the
    stats worker should already be dropping those tokens."""
    check = Check("audits")
    ledger = AuditLedger(keep=1 << 30)
    for li, layer in enumerate(outcomes.layers):
        ledger.observe(li, layer.table_versions, layer.audit_results)
    for row in ledger.rows():
        check.add("audited", row["audited"])
        check.add("agreed", row["agreed"])
        label = (f"table v{row['table_version']} layer {row['layer']}: fast path agrees with the router on "
                 f"{100 * row['agreement']:.1f}% of {row['audited']:,} audits "
                 f"[{100 * row['low']:.1f}, {100 * row['high']:.1f}]")
        if row["high"] < min_agreement:
            check.warn("DRIFT " + label)
        else:
            check.notes.append(label)
    if not ledger.counts:
        return check.skip("no audited decisions (VAR_AUDIT_RATE 0?)")
    return check


def worker_rows(outcomes: Outcomes) -> dict[str, np.ndarray]:
    """Row indices of each worker incarnation."""
    names: dict[str, int] = {}
    ids = np.fromiter((names.setdefault(w, len(names)) for w in outcomes.workers), np.int64, len(outcomes))
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(len(names) + 1))
    return {w: order[bounds[i]:bounds[i + 1]] for w, i in names.items()}


def check_completeness(outcomes: Outcomes, expected: Iterable[tuple[str, int]] | None) -> Check:
    check = Check("completeness")
    if expected is None:
        return check.skip("no --corpus given: missing outcomes cannot be known")
    seen: dict[tuple[str, int], int] = {}
    for key in zip(outcomes.streams, outcomes.seqs.tolist()):
        seen[key] = seen.get(key, 0) + 1
    want = set(expected)
    missing = [k for k in want if k not in seen]
    unexpected = [k for k in seen if k not in want]
    duplicates = sum(n - 1 for n in seen.values())
    check.counts = {"expected": len(want), "distinct": len(seen) - len(unexpected), "missing": len(missing),
                    "duplicates": duplicates, "unexpected": len(unexpected)}
    for stream, seq in sorted(missing)[:5]:
        check.violate(f"missing: stream {stream!r} seq {seq}")
    check.violation_count += max(0, len(missing) - 5)
    for stream, seq in sorted(unexpected)[:5]:
        check.violate(f"unexpected: stream {stream!r} seq {seq} is not in the corpus")
    check.violation_count += max(0, len(unexpected) - 5)
    if duplicates:
        check.notes.append(f"{duplicates:,} duplicate outcome(s): events routed again after a worker died "
                           "(at-least-once; allowed)")
    return check


def max_window_calls(positions: np.ndarray, window: int) -> tuple[int, int]:
    """(most call positions in any ``window`` consecutive positions, the first position of that
    window) for sorted call ``positions``."""
    if len(positions) == 0:
        return 0, 0
    ends = np.searchsorted(positions, positions + window, side="left")
    counts = ends - np.arange(len(positions))
    best = int(np.argmax(counts))
    return int(counts[best]), int(positions[best])


def check_budget(outcomes: Outcomes, by_worker: dict[str, np.ndarray], certs: dict[Chain, list[Certificate]],
                 default_caps: Sequence[tuple[int, int]]) -> Check:
    """``default_caps``: (cap, window) per layer, used for chains without a certificate."""
    check = Check("budget")
    worst = 0.0
    for worker, rows in by_worker.items():
        for li, layer in enumerate(outcomes.layers):
            held = certs.get((worker, li))
            cap, window = (held[0].cap, held[0].window) if held else default_caps[min(li, len(default_caps) - 1)]
            pos = np.unique(layer.positions[rows][layer_calls(layer)[rows]])
            most, at = max_window_calls(pos, window)
            worst = max(worst, most / window)
            check.add("chains")
            check.add("router_calls", len(pos))
            if most > cap:
                check.violate(f"{worker} layer {li}: {most} router calls in positions {at}..{at + window - 1} "
                              f"(cap {cap} per {window})")
    check.notes.append(f"highest share of router calls in any budget window: {100 * worst:.2f}%")
    return check


def _columns(outcomes: Outcomes, layer: LayerOutcomes, rows: np.ndarray, hashes: dict[str, int]) -> DecisionColumns:
    streams = np.fromiter((hashes[outcomes.streams[r]] for r in rows.tolist()), np.uint64, len(rows))
    return DecisionColumns(layer.positions[rows], streams, outcomes.seqs[rows], outcomes.tokens[rows],
                           layer.table_versions[rows], layer.tiers[rows], layer.key_kinds[rows],
                           layer_calls(layer)[rows], layer.experts[rows], layer.weights[rows])


def check_certificates(outcomes: Outcomes, by_worker: dict[str, np.ndarray], certs: dict[Chain, list[Certificate]],
                       key: bytes | None) -> Check:
    check = Check("certificates")
    names = sorted(set(outcomes.streams))
    hashes = dict(zip(names, stream_hashes(names).tolist()))
    for chain, held in sorted(certs.items()):
        for problem in chain_breaks(held):
            check.violate(problem)
    for worker, rows in by_worker.items():
        for li, layer in enumerate(outcomes.layers):
            _check_chain(check, outcomes, layer, rows, certs.get((worker, li), []), worker, li, key, hashes)
    for worker, li in sorted(set(certs) - {(w, li) for w in by_worker for li in range(outcomes.num_layers)}):
        check.add("certificates_without_outcomes", len(certs[(worker, li)]))
    return check


def _check_chain(check: Check, outcomes: Outcomes, layer: LayerOutcomes, rows: np.ndarray, held: list[Certificate],
                 worker: str, li: int, key: bytes | None, hashes: dict[str, int]) -> None:
    where = f"{worker} layer {li}"
    if not held:
        check.violate(f"{where}: {len(rows):,} outcome(s) but no certificate", len(rows))
        return
    rows = rows[np.argsort(layer.positions[rows], kind="stable")]
    pos = layer.positions[rows]
    for cert in held:
        check.add("certificates")
        lo, hi = np.searchsorted(pos, cert.first), np.searchsorted(pos, cert.end)
        inside = rows[lo:hi]
        voided = np.zeros(len(inside), bool)
        for a, b in cert.void:
            voided |= (layer.positions[inside] >= a) & (layer.positions[inside] < b)
        check.add("voided_outcomes", int(voided.sum()))
        inside = inside[~voided]
        digest = window_digest(cert, _columns(outcomes, layer, inside, hashes))
        if len(inside) != cert.decisions or digest != cert.digest:
            check.violate(f"{where} certificate #{cert.index} (positions {cert.first}..{cert.end - 1}): "
                          f"{len(inside)} outcome(s) for {cert.decisions} certified decisions, digest "
                          f"{'matches' if digest == cert.digest else 'differs'}")
        elif key is not None and cert.mac != cert.expected_mac(key):
            check.violate(f"{where} certificate #{cert.index}: HMAC {'missing' if cert.mac is None else 'wrong'}")
        check.add("certified_decisions", len(inside))
    tail = int((pos >= held[-1].end).sum())
    if tail:
        check.add("unsealed", tail)
        check.warn(f"{where}: {tail:,} decision(s) after the last certificate #{held[-1].index} (the worker "
                   "stopped before sealing them, e.g. it was killed)")


def group_certificates(certs: Iterable[Certificate]) -> dict[Chain, list[Certificate]]:
    """Each chain's certificates sorted by index (a certificate read twice is kept once)."""
    chains: dict[Chain, dict[int, Certificate]] = defaultdict(dict)
    for cert in certs:
        chains[(cert.worker, cert.layer)].setdefault(cert.index, cert)
    return {chain: [held[i] for i in sorted(held)] for chain, held in chains.items()}
