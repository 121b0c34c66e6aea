"""Format checks: OpenAI's chat-format checks plus ours, every problem with file:line."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.locate import MAX_LOCATIONS, location
from tuneloop.records import ROLES

if TYPE_CHECKING:  # an annotation only: records.py imports chat_problems from here
    from tuneloop.data.audit.records import AuditSet

MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id"}


def chat_problems(row: dict[str, Any]) -> list[str]:
    """Every problem of one chat record (the Normaliser stops at the first one)."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return ["missing 'messages' list (expected a non-empty list of {role, content})"]
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            out.append(f"messages[{i}] is {type(m).__name__}, expected an object")
            continue
        unknown = sorted(set(m) - MESSAGE_KEYS)
        if unknown:
            out.append(f"messages[{i}] has unknown keys {unknown}")
        if "role" not in m:
            out.append(f"messages[{i}] has no 'role'")
        elif m["role"] not in ROLES:
            out.append(f"messages[{i}].role {m['role']!r} is not one of {list(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            out.append(f"messages[{i}] has missing or empty content")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
        out.append("no assistant turn (expected at least one message with role 'assistant')")
    return out


def format_findings(aset: AuditSet) -> list[Finding]:
    """Errors: every invalid row, every row that is not UTF-8, repeated record ids, and a file
    with no usable record at all (which also sets the score to 0)."""
    name = aset.path.name
    findings = []
    if aset.problems:
        where = [{"id": r.id, "where": f"{name}:{r.line}", "problem": p}
                 for r, p in aset.problems]
        ids = list(dict.fromkeys(r.id for r, _ in aset.problems))
        findings.append(Finding(
            "format", "error", ids,
            f"{len(ids)} of {len(aset.records)} records are invalid and cannot be trained on "
            f"({len(where)} problems)", {"problems": where},
            [location(name, r, p) for r, p in aset.problems[:MAX_LOCATIONS]]))
    if aset.encoding:
        where = [{"id": r.id, "where": f"{name}:{r.line}", "problem": p}
                 for r, p in aset.encoding]
        findings.append(Finding(
            "format.encoding", "error", [r.id for r, _ in aset.encoding],
            f"{len(where)} records hold bytes that are not UTF-8 (training would see U+FFFD "
            "instead); re-save the file as UTF-8", {"problems": where},
            [location(name, r, p) for r, p in aset.encoding[:MAX_LOCATIONS]]))
    counts = Counter(r.id for r in aset.records)
    repeated = [i for i, c in counts.items() if c > 1]
    if repeated:
        lines = {i: [f"{name}:{r.line}" for r in aset.records if r.id == i]
                 for i in repeated[:50]}
        findings.append(Finding("format.duplicate_id", "error", repeated,
                                f"{len(repeated)} record ids appear more than once",
                                {"where": lines},
                                [location(name, r, f"id {r.id!r} is used more than once")
                                 for r in aset.records if r.id in set(repeated[:50])
                                 ][:MAX_LOCATIONS]))
    if not aset.records:
        findings.append(Finding("format.empty", "error", [],
                                f"{name} has no records (it is empty, or holds only blank lines "
                                "or a header): nothing to train on, so the score is 0"))
    elif not aset.valid:
        findings.append(Finding("format.no_valid", "error", [],
                                f"none of the {len(aset.records)} records of {name} can be "
                                "trained on: nothing to train on, so the score is 0"))
    return findings
