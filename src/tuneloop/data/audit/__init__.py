"""Data audit: every check turns records into Findings; `run_audit` runs them all and scores.

One module per check (format_checks, dedup, conflicts, leakage, lengths, labels, pii, hygiene),
plus score (score and training recommendation) and card (Markdown, HTML and JSON output).
"""

from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.run import AuditReport, run_audit

__all__ = ["AuditReport", "Finding", "run_audit"]
