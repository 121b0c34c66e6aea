"""The audit's unit of output: a Finding names a check, a severity, record ids and evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")


@dataclass
class Finding:
    """One problem (or fact) about the data; `ids` are record ids, `evidence` shows why."""

    check: str
    severity: Severity
    ids: list[str]
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # The summary travels inside the evidence so the JSON keeps the four keys.
        return {"check": self.check, "severity": self.severity, "ids": list(self.ids),
                "evidence": {"summary": self.summary, **self.evidence}}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; stable within a severity."""
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))
