"""The checks of a replay through Kafka, on what it collected (pure: no Kafka, no Redis).

* :func:`exact_reference` -- the learned router's decisions for every event, in order (the
  embedded replay's reference, from :func:`~pipeline.engine.offline.exact_routes`);
* :func:`align` -- each reference event's outcome row; :func:`completeness_section` -- did every
  event get one, and if not, where the collection stopped;
* :func:`context_mismatches` -- outcomes whose context hashes are not the corpus's;
* :func:`budget_ledger` -- each worker's learned calls per budget window, from the outcomes.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from pipeline.corpus.jsonl import iter_batches
from pipeline.engine.budget import BudgetLedger
from pipeline.engine.events import EventChunk
from pipeline.engine.offline import exact_routes
from pipeline.outcomes import Outcomes
from pipeline.replay import Prepared
from pipeline.settings import Settings

from .collector import Collected


def completeness_section(got: Collected, have: np.ndarray, context_mismatches: int, run_id: str) -> dict[str, object]:
    """The completeness fields of a replay through Kafka: ``have`` marks the produced events that
    got an outcome; ``complete`` also needs no invalid outcome and no context mismatch (the
    caller adds ``worker_exits`` and clears ``complete`` when a worker exited)."""
    events_in = len(have)
    return {"events_in": events_in, "outcomes_out": got.distinct, "duplicates": got.duplicates,
            "missing": events_in - int(have.sum()), "invalid_outcomes": got.invalid,
            "deadletters": len(got.deadletters), "context_mismatches": context_mismatches,
            "complete": bool(have.all()) and got.invalid == 0 and context_mismatches == 0, "run_id": run_id,
            **({"stalled": {"outcomes_read_end": got.unread, "tokens_committed_end": got.unrouted}}
               if got.unread is not None else {})}


def exact_reference(prepared: Prepared, chunks: list[EventChunk], settings: Settings) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(streams, seqs, tokens, experts, weights) of the learned router for every event, in order
    (:func:`~pipeline.engine.offline.exact_routes`)."""
    routes = list(exact_routes(prepared.router, iter_batches(chunks, settings.batch_size), settings.context_window))
    streams = [s for r in routes for s in r.events.streams]
    columns = ([r.events.seqs for r in routes], [r.events.tokens for r in routes],
               [r.output.experts for r in routes], [r.output.weights for r in routes])
    seqs, tokens, experts, weights = (np.concatenate(c) for c in columns)
    return streams, seqs, tokens, experts, weights


def context_mismatches(expected: Mapping[tuple[str, int], int | tuple[int, ...]], parts: list[Outcomes]) -> int:
    """Outcomes (duplicates included) whose context hashes -- one per layer -- are not the corpus's
    for that event (``expected``: per event, the hash of each layer, or one int for one layer)."""
    wrong = 0
    for p in parts:
        contexts = zip(*(layer.ctx.tolist() for layer in p.layers))
        for s, q, c in zip(p.streams, p.seqs.tolist(), contexts):
            want = expected.get((s, q))
            wrong += (want if isinstance(want, tuple) else (want,)) != c
    return wrong


def align(outcomes: Outcomes, streams: list[str], seqs: np.ndarray) -> np.ndarray:
    """For each reference event, the row of its outcome (-1 if none)."""
    names = {s: i for i, s in enumerate(dict.fromkeys(streams))}
    ref = np.fromiter((names[s] for s in streams), np.int64, len(streams)) * (1 << 40) + seqs
    got = np.fromiter((names.get(s, -1) for s in outcomes.streams), np.int64, len(outcomes)) * (1 << 40) + outcomes.seqs
    order = np.argsort(got)
    pos = np.searchsorted(got[order], ref)
    pos = np.minimum(pos, max(0, len(got) - 1))
    hit = (len(got) > 0) & (got[order][pos] == ref) if len(got) else np.zeros(len(ref), bool)
    return np.where(hit, order[pos] if len(got) else -1, -1)


def budget_ledger(all_outcomes: Outcomes, window: int, layer: int = 0) -> tuple[int, list[int], list[int]]:
    """Per worker, ``layer``'s learned-router calls (learned decisions and audits) in its decision
    order (from its ``pos``): max sliding window, blocks, sizes (every layer has its own governor,
    so each is checked on its own)."""
    best = 0
    blocks: list[int] = []
    sizes: list[int] = []
    if not len(all_outcomes):
        return best, blocks, sizes
    workers = np.asarray(all_outcomes.workers, dtype=object)
    for name in sorted(set(all_outcomes.workers)):
        mine = workers == name
        pos, learned = all_outcomes.layers[layer].positions[mine], all_outcomes.layers[layer].router_calls()[mine]
        flags = np.zeros(int(pos.max()) + 1 if len(pos) else 0, dtype=bool)
        flags[pos] = learned
        ledger = BudgetLedger(window)
        ledger.record(flags)
        best = max(best, ledger.max_sliding)
        blocks.extend(ledger.block_learned)
        sizes.extend(ledger.block_sizes())
    return best, blocks, sizes
