"""Leakage: training records whose input also appears (exactly, nearly, by a shared 12-gram, or
reworded) in a validation/test split or any --against file, which inflates evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasketch import MinHashLSH

from tuneloop.data.audit.dedup import LSH_SLACK, minhashes, shingle_sets
from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.neighbours import nearest_in
from tuneloop.data.audit.records import Record
from tuneloop.data.audit.text import jaccard, normalise, words

NGRAM = 12  # GPT-3's contamination check used 13-grams; 12 also catches shorter quotes
# A reworded leak keeps most of its words: cosine alone cannot tell it from a different user asking
# the same thing (banking77's train and test share hundreds of pairs above cosine 0.8), so the
# semantic check also asks for this much word-set overlap with the nearest other record.
WORD_OVERLAP = 0.6


def _grams(text: str, n: int) -> set[int]:
    w = words(text)
    return {hash(tuple(w[i:i + n])) for i in range(len(w) - n + 1)}


def leakage_findings(recs: list[Record], other: list[Record], other_path: Path,
                     near_threshold: float, num_perm: int, emb: np.ndarray | None = None,
                     other_emb: np.ndarray | None = None, semantic_threshold: float = 0.75,
                     word_overlap: float = WORD_OVERLAP) -> list[Finding]:
    """Compare every record's input with the other file's inputs; one finding per method."""
    name = other_path.name
    hits: dict[str, dict[str, str]] = {"exact": {}, "near": {}, "ngram": {}, "semantic": {}}
    index = {normalise(o.input): o.id for o in other}
    for r in recs:
        if normalise(r.input) in index:
            hits["exact"][r.id] = index[normalise(r.input)]
    # Near: an LSH index over the other file, queried with each record, Jaccard re-verified.
    osh = shingle_sets([o.input for o in other])
    lsh = MinHashLSH(threshold=max(0.05, near_threshold - LSH_SLACK), num_perm=num_perm)
    for j, m in enumerate(minhashes(osh, num_perm)):
        if osh[j]:
            lsh.insert(j, m)
    rsh = shingle_sets([r.input for r in recs])
    for r, sh, m in zip(recs, rsh, minhashes(rsh, num_perm), strict=True):
        if r.id in hits["exact"] or not sh:
            continue
        best = max(((jaccard(sh, osh[j]), j) for j in lsh.query(m)), default=(0.0, -1))
        if best[0] >= near_threshold:
            hits["near"][r.id] = other[best[1]].id
    grams: dict[int, str] = {}
    for o in other:
        for g in _grams(o.input, NGRAM):
            grams.setdefault(g, o.id)
    for r in recs:
        if r.id in hits["exact"] or r.id in hits["near"]:
            continue
        shared = next((grams[g] for g in _grams(r.input, NGRAM) if g in grams), None)
        if shared is not None:
            hits["ngram"][r.id] = shared
    if emb is not None and other_emb is not None and len(other):
        # Embeddings are the ones the duplicate check computed: nothing is embedded twice.
        sims, idx = nearest_in(emb, other_emb)
        found = set().union(*(h.keys() for h in hits.values()))
        scores: dict[str, tuple[float, float]] = {}
        for i, r in enumerate(recs):
            if sims[i] < semantic_threshold or r.id in found:
                continue
            o = other[int(idx[i])]
            overlap = jaccard(set(words(r.input)), set(words(o.input)))
            if overlap >= word_overlap:
                hits["semantic"][r.id] = o.id
                scores[r.id] = (round(float(sims[i]), 3), round(overlap, 3))
    what = {"exact": "the same input (case and white space ignored)",
            "near": f"a near-identical input (word 5-gram Jaccard >= {near_threshold})",
            "ngram": f"a shared {NGRAM}-word sequence",
            "semantic": f"a reworded input (MiniLM cosine >= {semantic_threshold}, word overlap "
                        f">= {word_overlap})"}

    def pair(kind: str, a: str, b: str) -> dict:
        if kind != "semantic":
            return {"id": a, "other_id": b}
        return {"id": a, "other_id": b, "cosine": scores[a][0], "word_overlap": scores[a][1]}

    return [Finding(f"leakage.{kind}", "warning" if kind == "semantic" else "error", list(h),
                    f"{len(h)} records share {what[kind]} with {name}; evaluation on it would "
                    "be inflated", {"against": str(other_path),
                                    "pairs": [pair(kind, a, b) for a, b in h.items()]})
            for kind, h in hits.items() if h]
