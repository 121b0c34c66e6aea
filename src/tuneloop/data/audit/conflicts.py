"""Conflicts: the same or a near-same input with a different label or answer."""

from __future__ import annotations

from tuneloop.data.audit.dedup import clusters, exact_pairs, near_pairs
from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.records import Record
from tuneloop.data.audit.text import jaccard, normalise, words

ANSWER_AGREE = 0.5  # free-text answers sharing at least half their words count as the same


def differ(a: Record, b: Record) -> bool:
    """Whether two records give different answers: labels differ, or free-text answers share
    less than ANSWER_AGREE of their words."""
    if a.label is not None or b.label is not None:
        return a.label != b.label
    if normalise(a.output) == normalise(b.output):
        return False
    return jaccard(set(words(a.output)), set(words(b.output))) < ANSWER_AGREE


def conflict_findings(recs: list[Record], near_threshold: float, num_perm: int) -> list[Finding]:
    """Groups of (near-)identical inputs whose labels or answers disagree: an error to resolve."""
    texts = [r.input for r in recs]
    pairs = exact_pairs(texts) + [(a, b) for a, b, _ in near_pairs(texts, near_threshold,
                                                                    num_perm)]
    groups = []
    for g in clusters(len(recs), pairs):
        if any(differ(recs[g[0]], recs[i]) for i in g[1:]) or any(
                differ(recs[i], recs[j]) for i in g for j in g if i < j):
            groups.append(g)
    if not groups:
        return []
    evidence = [{"input": recs[g[0]].input[:200],
                 "answers": {recs[i].id: (recs[i].label or recs[i].output)[:120] for i in g}}
                for g in groups[:50]]
    return [Finding("conflicts", "error", [recs[i].id for g in groups for i in g],
                    f"{len(groups)} inputs appear with different labels or answers; the model "
                    "cannot learn both, so keep the right one", {"groups": evidence})]
