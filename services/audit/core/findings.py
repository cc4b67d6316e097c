"""What an audit finds: failures and warnings, each tied to a place in the logs.

A ``Finding`` names the check that failed, the reason, and where: the logical topic (without
the deployment's prefix), partition and offset of the record, and the chain height when there
is one. ``AuditReport`` collects findings and per-check counts; ``first_divergence`` is the
failure with the lowest height (chain findings) or, when no failure has a height, the first
one found. The report is plain data so the shell renders it as text or JSON.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    FAILURE = "failure"  # the history does not hold: the audit exits non-zero
    WARNING = "warning"  # noteworthy, not a divergence (e.g. garbage on an untrusted topic)


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # short stable name: "randomness", "commit", "transactions", "entropy", ...
    reason: str
    topic: str  # logical topic name, e.g. "chain.blocks"
    offset: int | None = None
    partition: int = 0
    height: int | None = None
    severity: Severity = Severity.FAILURE

    def where(self) -> str:
        place = f"{self.topic}"
        if self.offset is not None:
            place += f" partition {self.partition} offset {self.offset}"
        if self.height is not None:
            place = f"height {self.height} ({place})"
        return place

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "severity": self.severity.value}


@dataclass(slots=True)
class AuditReport:
    """Counts of what was checked, findings, and notes (what could not be checked and why)."""

    checked: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # head height, hashes, timings

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def extend(self, findings: list[Finding]) -> None:
        self.findings.extend(findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.FAILURE]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.failures

    def first_divergence(self) -> Finding | None:
        failures = self.failures
        with_height = [f for f in failures if f.height is not None]
        if with_height:
            return min(with_height, key=lambda f: f.height or 0)
        return failures[0] if failures else None

    def to_json(self) -> dict[str, Any]:
        first = self.first_divergence()
        return {
            "ok": self.ok,
            "checked": dict(sorted(self.checked.items())),
            "failures": len(self.failures),
            "warnings": len(self.warnings),
            "first_divergence": first.to_json() if first else None,
            "findings": [f.to_json() for f in self.findings],
            "notes": list(self.notes),
            "facts": dict(self.facts),
        }
