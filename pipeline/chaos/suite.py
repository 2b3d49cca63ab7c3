"""Run chaos scenarios (once each, or repeated: the stress run) and report them as a table."""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.settings import Settings

from .checks import RunChecks
from .runner import ChaosOptions, load_corpus, run_scenario
from .scenarios import SCENARIOS
from .services import ChaosServices

log = logging.getLogger(__name__)
Say = Callable[[str], None]


def run_suite(runs: Sequence[tuple[str, int]], repeat: int, settings: Settings, opts: ChaosOptions,
              say: Say) -> list[RunChecks]:
    """Every (scenario, message size) ``repeat`` times on one private Kafka + Redis."""
    corpus = load_corpus(settings, opts)
    say(f"corpus {corpus.name}: {corpus.events:,} held-out events in "
        f"{len({c.stream for c in corpus.chunks})} streams; services starting")
    results: list[RunChecks] = []
    for brokers in sorted({SCENARIOS[name].brokers for name, _ in runs}):
        group = [(name, size) for name, size in runs if SCENARIOS[name].brokers == brokers]
        with tempfile.TemporaryDirectory(prefix="var-chaos-") as tmp, ChaosServices(Path(tmp), brokers) as services:
            for attempt in range(repeat):
                for name, size in group:
                    opts.message_size = size
                    say(f"[{attempt + 1}/{repeat}] {name}, {size} token(s)/message: {SCENARIOS[name].description}")
                    result = run_scenario(SCENARIOS[name], settings, services, corpus, opts)
                    say(f"  {'PASS' if result.ok else 'FAIL'} in {result.seconds:.0f} s"
                        + ("" if result.ok else ": " + "; ".join(result.failures()) + f" (logs: {result.log_dir})"))
                    results.append(result)
    return results


def render(results: list[RunChecks]) -> str:
    head = ("scenario", "msg", "events", "out", "missing", "dups", "ctx bad", "poison DLQ", "deaths", "s", "result")
    rows = [(r.scenario, str(r.message_size), f"{r.events_in:,}", f"{r.outcomes_out:,}", str(r.missing),
             str(r.duplicates), str(r.context_mismatches), f"{r.poison_deadlettered}/{r.poison_sent}",
             str(len(r.unexpected_deaths)), f"{r.seconds:.0f}", "PASS" if r.ok else "FAIL") for r in results]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    passes = tally(results)
    if any(total > 1 for _, total in passes.values()):
        lines.append("")
        lines.append("passes: " + ", ".join(f"{k} {ok}/{total}" for k, (ok, total) in passes.items()))
    return "\n".join(lines)


def tally(results: list[RunChecks]) -> dict[str, tuple[int, int]]:
    """``"kill/1" -> (passes, runs)`` per scenario and message size."""
    out: dict[str, tuple[int, int]] = {}
    for r in results:
        key = f"{r.scenario}/{r.message_size}"
        ok, total = out.get(key, (0, 0))
        out[key] = (ok + r.ok, total + 1)
    return out


def as_json(results: list[RunChecks]) -> dict[str, Any]:
    return {"runs": [r.as_dict() for r in results],
            "passes": {k: {"passed": ok, "runs": n} for k, (ok, n) in tally(results).items()},
            "ok": all(r.ok for r in results)}


def stderr_say(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)
