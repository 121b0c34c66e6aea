"""Where each finding's records are: file:line, a snippet of the text and what is wrong, so the
terminal, Markdown and HTML cards show the problem, not only the JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.pii import redact

if TYPE_CHECKING:  # an annotation only: records.py imports format_checks, which imports us
    from tuneloop.data.audit.records import AuditSet, Record

MAX_LOCATIONS = 50  # per finding, in the JSON; the cards show the first few
SNIPPET = 100


def snippet(text: str, n: int = SNIPPET) -> str:
    """One line of at most n characters; line breaks shown as \\n so a merged record is visible."""
    s = text.replace("\r", "\\r").replace("\n", "\\n")
    return s if len(s) <= n else s[:n - 1] + "…"


def record_text(rec: Record) -> str:
    """What a reader needs to recognise the record: input -> answer, else its raw text."""
    if rec.example is not None:
        return f"{rec.input} → {rec.output}" if rec.output else rec.input
    if rec.data is not None:
        return json.dumps(rec.data, ensure_ascii=False, default=str)
    return rec.text


def location(name: str, rec: Record, problem: str = "", text: str | None = None,
             ) -> dict[str, str]:
    """{id, where: "file:line", text, problem} for one record; personal data in the text is
    masked (a data card gets shared), as `data fix --redact` would."""
    out = {"id": rec.id, "where": f"{name}:{rec.line}",
           "text": snippet(redact(record_text(rec) if text is None else text))}
    if problem:
        out["problem"] = problem
    return out


def _note(f: Finding, rid: str, other_lines: dict[str, dict[str, int]]) -> str:
    """The per-record part of a finding's evidence, in words."""
    ev: dict[str, Any] = f.evidence
    if f.check.startswith("leakage.") and "pairs" in ev:
        other = Path(str(ev.get("against", ""))).name
        lines = other_lines.get(str(ev.get("against", "")), {})
        for p in ev["pairs"]:
            if p["id"] == rid:
                at = lines.get(p["other_id"])
                return f"also in {other}:{at}" if at else f"also in {other} (id {p['other_id']})"
    if f.check == "labels.mislabel" and rid in ev.get("suspects", {}):
        s = ev["suspects"][rid]
        return f"labelled {s['given']!r}, looks like {s['suggested']!r}"
    if f.check == "lengths.truncated" and rid in ev.get("lengths", {}):
        return f"{ev['lengths'][rid]} tokens"
    return ""


def attach_locations(findings: list[Finding], aset: AuditSet,
                     other_lines: dict[str, dict[str, int]] | None = None) -> None:
    """Fill `locations` of every finding that names records and has none yet; hygiene findings
    show the offending snippet."""
    by_id: dict[str, Record] = {}
    for r in aset.records:
        by_id.setdefault(r.id, r)
    name = aset.path.name
    for f in findings:
        if f.locations or not f.ids:
            continue
        examples = f.evidence.get("examples") if isinstance(f.evidence.get("examples"),
                                                            dict) else {}
        for rid in list(dict.fromkeys(f.ids))[:MAX_LOCATIONS]:
            rec = by_id.get(rid)
            if rec is None:
                continue
            text = None
            if f.check.startswith("hygiene.") and rid in examples:
                text = str(examples[rid])
            f.locations.append(location(name, rec, _note(f, rid, other_lines or {}), text))
