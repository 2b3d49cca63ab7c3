"""What ``var verify`` reports: one :class:`Check` per property, each with counts and the first
few violations, and a :class:`VerifyReport` that renders them as a table or JSON.

A check's status is ``pass`` (it held), ``fail`` (a violation: exit 1), ``warn`` (it held, but
something needs a reader's attention, e.g. an unsealed tail after a worker died) or ``skip``
(not checkable with the inputs given, e.g. completeness without ``--corpus``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_EXAMPLES = 5


@dataclass
class Check:
    name: str
    status: str = "pass"
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    violation_count: int = 0

    def violate(self, message: str, count: int = 1) -> None:
        """Record a violation (the first :data:`MAX_EXAMPLES` are kept verbatim)."""
        self.status = "fail"
        self.violation_count += count
        if len(self.violations) < MAX_EXAMPLES:
            self.violations.append(message)

    def warn(self, message: str) -> None:
        if self.status == "pass":
            self.status = "warn"
        self.notes.append(message)

    def skip(self, reason: str) -> "Check":
        self.status = "skip"
        self.notes.append(reason)
        return self

    def add(self, name: str, value: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(value)


@dataclass
class VerifyReport:
    outcomes: int
    workers: int
    layers: int
    checks: list[Check]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "outcomes": self.outcomes, "workers": self.workers, "layers": self.layers,
                "seconds": round(self.seconds, 3),
                "outcomes_per_minute": round(60 * self.outcomes / self.seconds) if self.seconds else None,
                "checks": [asdict(c) for c in self.checks]}

    def render(self) -> str:
        lines = [f"verified {self.outcomes:,} decisions of {self.workers} worker incarnation(s), "
                 f"{self.layers} layer(s), in {self.seconds:.1f} s", "",
                 f"{'check':<14} {'status':<6}  counts"]
        for c in self.checks:
            counts = ", ".join(f"{k} {v:,}" for k, v in c.counts.items()) or "-"
            lines.append(f"{c.name:<14} {c.status.upper():<6}  {counts}")
            extra = c.violation_count - len(c.violations)
            lines += [f"    ! {v}" for v in c.violations]
            if extra > 0:
                lines.append(f"    ! ... and {extra:,} more")
            lines += [f"    - {n}" for n in c.notes]
        lines += ["", "verify: " + ("everything holds" if self.ok else
                                    "VIOLATIONS: " + ", ".join(c.name for c in self.checks if c.status == "fail"))]
        return "\n".join(lines)
