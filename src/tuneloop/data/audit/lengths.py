"""Lengths under the model's own tokenizer and chat template; truncation; empty answers."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.records import Record
from tuneloop.data.audit.text import normalise, words
from tuneloop.models.tokens import ensure_template, render

TRIVIAL = {"", "n/a", "na", "none", "null", "-", "...", "?", "ok", "todo", "tbd", "same"}


def token_lengths(recs: list[Record], tok: Any | None) -> tuple[list[int], str]:
    """Token count of each rendered record; word counts when no tokenizer is available."""
    if tok is None:
        return [len(words(" ".join(m.content for m in r.example.messages))) for r in recs], "words"
    ensure_template(tok)
    texts = [render(tok, r.example.messages) for r in recs]
    # One batched call to the fast tokenizer: far quicker than encoding record by record.
    ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [len(x) for x in ids], "tokens"


def histogram(lengths: list[int], bins: int = 20) -> dict[str, list]:
    counts, edges = np.histogram(lengths or [0], bins=bins)
    return {"counts": counts.tolist(), "edges": [round(float(e), 1) for e in edges]}


def length_findings(recs: list[Record], lengths: list[int], unit: str, max_len: int,
                    classification: bool) -> list[Finding]:
    """Distribution (info), records over max_seq_len, and empty or trivial responses."""
    arr = np.array(lengths or [0])
    stats = {"unit": unit, "mean": round(float(arr.mean()), 1),
             "p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95)),
             "max": int(arr.max()), "total": int(arr.sum()), "max_seq_len": max_len,
             "histogram": histogram(lengths)}
    out = [Finding("lengths.distribution", "info", [],
                   f"{unit} per record: median {stats['p50']}, p95 {stats['p95']}, "
                   f"max {stats['max']}", stats)]
    if unit == "tokens":
        over = [(r.id, n) for r, n in zip(recs, lengths, strict=True) if n > max_len]
        if over:
            out.append(Finding(
                "lengths.truncated", "warning", [i for i, _ in over],
                f"{len(over)} records exceed max_seq_len {max_len} and would be truncated "
                "(their answers may be cut off)", {"lengths": dict(over[:200])}))
    if not classification:
        trivial = [r for r in recs if normalise(r.output).strip(" .!") in TRIVIAL
                   or normalise(r.output) == normalise(r.input)]
        if trivial:
            out.append(Finding(
                "lengths.trivial_response", "warning", [r.id for r in trivial],
                f"{len(trivial)} answers are empty, placeholder or an echo of the input",
                {"examples": {r.id: r.output[:80] for r in trivial[:50]}}))
    return out
