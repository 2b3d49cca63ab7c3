"""What every chaos run must show, computed from the corpus, the outcomes and the dead letters.

* 0 events missing: every (stream, seq) sent has a distinct outcome; none unexpected;
* duplicates counted (they are allowed, and reported);
* every outcome's context hash -- at every layer, each with its own receptive field -- equals the
  one computed from the corpus itself;
* every poison message is in the dead-letter topic, with a reason naming its fault, and no
  good message is;
* no worker process died except the ones the scenario killed or stopped;
* the run ended by itself (every outcome arrived before the deadline).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from pipeline.engine.context import corpus_context_hashes
from pipeline.outcomes import Outcomes

from .poison import Poison

Key = tuple[str, int]
__all__ = ["RunChecks", "check_deadletters", "check_outcomes", "corpus_context_hashes"]


@dataclass
class RunChecks:
    """The figures of one run and whether each requirement held."""

    scenario: str
    message_size: int
    events_in: int = 0
    outcomes_out: int = 0
    duplicates: int = 0
    missing: int = 0
    unexpected: int = 0
    context_mismatches: int = 0
    poison_sent: int = 0
    poison_deadlettered: int = 0
    poison_wrong_reason: int = 0
    good_deadlettered: int = 0
    unexpected_deaths: list[str] = field(default_factory=list)
    ended_by_itself: bool = False
    faults_planned: int = 0
    faults_fired: int = 0
    seconds: float = 0.0
    examples: dict[str, list[Any]] = field(default_factory=dict)
    log_dir: str = ""

    def failures(self) -> list[str]:
        out = []
        if self.missing or self.unexpected:
            out.append(f"{self.missing} events missing, {self.unexpected} unexpected outcomes")
        if self.context_mismatches:
            out.append(f"{self.context_mismatches} outcomes with a wrong context hash")
        if self.poison_deadlettered < self.poison_sent or self.poison_wrong_reason:
            out.append(f"{self.poison_sent - self.poison_deadlettered} poison messages not dead-lettered, "
                       f"{self.poison_wrong_reason} with a wrong reason")
        if self.good_deadlettered:
            out.append(f"{self.good_deadlettered} good messages dead-lettered")
        if self.unexpected_deaths:
            out.append("workers died: " + ", ".join(self.unexpected_deaths))
        if not self.ended_by_itself:
            out.append("the run did not end by itself")
        if self.faults_fired < self.faults_planned:
            out.append(f"only {self.faults_fired} of {self.faults_planned} faults fired (the run ended first)")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "failures": self.failures()}


def check_outcomes(checks: RunChecks, expected: Mapping[Key, int | tuple[int, ...]], parts: list[Outcomes],
                   seen: set[Key]) -> None:
    """Completeness, unexpected outcomes and context hashes (over every outcome, duplicates too).

    ``expected`` maps each event to its context hash per layer (:func:`layer_context_hashes`;
    a plain int is a one-layer run's). An outcome with another number of layers is wrong."""
    checks.events_in = len(expected)
    missing = [k for k in expected if k not in seen]
    checks.missing = len(missing)
    wrong, unexpected = [], []
    for part in parts:
        contexts = list(zip(*(layer.ctx.tolist() for layer in part.layers)))
        for i, (stream, seq, ctx) in enumerate(zip(part.streams, part.seqs.tolist(), contexts)):
            want = expected.get((stream, seq))
            if want is None:
                unexpected.append((stream, seq))
            elif (want if isinstance(want, tuple) else (want,)) != ctx:
                wrong.append((stream, seq, part.workers[i], int(part.layers[0].positions[i])))
    checks.unexpected, checks.context_mismatches = len(set(unexpected)), len(wrong)
    checks.examples.update(missing=missing[:5], unexpected=unexpected[:5], wrong_context=wrong[:20])


def check_deadletters(checks: RunChecks, poison: list[Poison],
                      deadletters: list[tuple[bytes | None, bytes, dict[str, bytes]]]) -> None:
    """Each poison message once in the dead-letter topic with its reason; no good message there."""
    by_value = {p.value: p for p in poison if p.kind != "oversized"}
    oversized = {p.key: p for p in poison if p.kind == "oversized"}
    found: set[int] = set()
    wrong_reason, stray = [], []
    for key, value, headers in deadletters:
        reason = headers.get("var-reason", b"").decode(errors="replace")
        p = by_value.get(value)
        if p is None and "var-truncated-from" in headers:
            p = oversized.get(key)
        if p is None:
            stray.append((key, value[:80], reason))
            continue
        found.add(id(p))
        if p.reason not in reason:
            wrong_reason.append((p.kind, reason))
    checks.poison_sent = len(poison)
    checks.poison_deadlettered = len(found)
    checks.poison_wrong_reason = len(wrong_reason)
    checks.good_deadlettered = len(stray)
    checks.examples.update(wrong_reason=wrong_reason[:5], stray_deadletters=[repr(s) for s in stray[:5]])
