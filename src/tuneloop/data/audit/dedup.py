"""Duplicates as clusters: exact (normalised text), near (MinHash LSH, re-verified), semantic."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from datasketch import MinHash, MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.neighbours import knn
from tuneloop.data.audit.records import Record
from tuneloop.data.audit.text import jaccard, ngrams, normalise, words

SHINGLE = 5  # word 5-grams, as in the near-duplicate literature (Broder; Lee et al. 2022)
SHORT_WORDS = 8  # texts this short are also compared on character 5-grams ...
SHORT_MARGIN = 0.1  # ... at the near threshold plus this
LSH_SLACK = 0.1  # LSH proposes candidates from this far below the threshold


def clusters(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of size >= 2 over index pairs, each sorted, ordered by first index."""
    pairs = list(pairs)
    if not pairs:
        return []
    a, b = np.array(pairs, dtype=np.int64).T
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(comp):
        groups[int(c)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def exact_pairs(keys: list[str]) -> list[tuple[int, int]]:
    """Pairs (first, other) of items whose normalised keys are identical."""
    first: dict[str, int] = {}
    out = []
    for i, k in enumerate(keys):
        nk = normalise(k)
        if nk in first:
            out.append((first[nk], i))
        else:
            first[nk] = i
    return out


def shingle_sets(texts: list[str]) -> list[set[str]]:
    return [ngrams(t, SHINGLE) for t in texts]


def minhashes(shingles: list[set[str]], num_perm: int, seed: int = 1) -> list[MinHash]:
    # bulk() shares one permutation table across all sets: much faster than one MinHash each.
    return MinHash.bulk([[s.encode() for s in sh] for sh in shingles],
                        num_perm=num_perm, seed=seed)


def near_pairs(texts: list[str], threshold: float, num_perm: int = 128,
               ) -> list[tuple[int, int, float]]:
    """Pairs whose true word-5-gram Jaccard is >= threshold (for texts of <= 8 words: character
    5-grams at a higher bar and word sets at the threshold); LSH proposes, exact Jaccard decides."""
    # Duplicates, conflicts and the recommendation all ask for the same pairs: compute once.
    return list(_near_pairs(tuple(texts), threshold, num_perm))


def char_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the normalised words: enough shingles to compare short texts."""
    s = " ".join(words(text))
    return {s[i:i + n] for i in range(len(s) - n + 1)} if len(s) >= n else ({s} if s else set())


def _lsh_pairs(sh: list[set[str]], threshold: float, num_perm: int) -> list[tuple[int, int, float]]:
    hashes = minhashes(sh, num_perm)
    # LSH misses some pairs just above its threshold: propose from a lower one, verify exactly.
    lsh = MinHashLSH(threshold=max(0.05, threshold - LSH_SLACK), num_perm=num_perm)
    out = []
    for i, m in enumerate(hashes):
        if not sh[i]:
            continue
        for j in lsh.query(m):
            score = jaccard(sh[i], sh[j])  # LSH has false positives: re-verify exactly
            if score >= threshold:
                out.append((j, i, round(score, 3)))
        lsh.insert(i, m)
    return out


@lru_cache(maxsize=4)
def _near_pairs(texts: tuple[str, ...], threshold: float, num_perm: int,
                ) -> tuple[tuple[int, int, float], ...]:
    out = _lsh_pairs(shingle_sets(list(texts)), threshold, num_perm)
    # A text of w <= 8 words has w-4 word 5-grams, so one added word drops its Jaccard below 0.7:
    # short texts are compared again on character 5-grams, which score the same edit higher, so
    # they must clear a higher bar (on banking77: recall 0.80 -> 1.00 on one-word edits).
    short = [i for i, t in enumerate(texts) if len(words(t)) <= SHORT_WORDS]
    seen = {(a, b) for a, b, _ in out}
    bar = min(1.0, threshold + SHORT_MARGIN)
    for a, b, score in _lsh_pairs([char_shingles(texts[i]) for i in short], bar, num_perm):
        x, y = texts[short[a]], texts[short[b]]
        # Words must agree too: "question number 1" vs "... 2" share most characters, not words.
        if (short[a], short[b]) not in seen and jaccard(set(words(x)), set(words(y))) >= threshold:
            out.append((short[a], short[b], score))
    return tuple(out)


def semantic_pairs(emb: np.ndarray, threshold: float, k: int = 10,
                   nn: tuple[np.ndarray, np.ndarray] | None = None,
                   texts: list[str] | None = None, min_cosine: float | None = None,
                   word_overlap: float = 0.7) -> list[tuple[int, int, float]]:
    """Pairs among each row's k nearest neighbours (`nn`: knn(emb, k) when the caller already has
    it) whose cosine is >= threshold, or, given `texts` and `min_cosine`, whose cosine is >=
    min_cosine and whose word sets have Jaccard >= word_overlap: a reworded copy that keeps most
    of its words (polite framing, a word swapped) sits well below the bare-cosine bar."""
    sims, idx = nn if nn is not None else knn(emb, k)
    low = threshold if texts is None or min_cosine is None else min(threshold, min_cosine)
    bags = [set(words(t)) for t in texts] if texts is not None and low < threshold else None
    out = {}
    for i in range(len(emb)):
        for s, j in zip(sims[i], idx[i], strict=True):
            if s < low:
                break
            a, b = sorted((i, int(j)))
            if (a, b) in out:
                continue
            if s < threshold and jaccard(bags[a], bags[b]) < word_overlap:
                continue
            out[(a, b)] = round(float(s), 3)
    return [(a, b, s) for (a, b), s in sorted(out.items())]


def _cluster_evidence(recs: list[Record], groups: list[list[int]], limit: int = 50) -> list:
    return [{"ids": [recs[i].id for i in g], "keep": recs[g[0]].id,
             "text": recs[g[0]].input[:200]} for g in groups[:limit]]


def duplicate_findings(recs: list[Record], near_threshold: float, num_perm: int,
                       emb: np.ndarray | None, semantic_threshold: float,
                       nn: tuple[np.ndarray, np.ndarray] | None = None,
                       semantic_min_cosine: float | None = None,
                       semantic_word_overlap: float = 0.7) -> list[Finding]:
    """Exact, near and semantic duplicate clusters; each later check skips what earlier found.
    Semantic: MiniLM cosine >= semantic_threshold, or cosine >= semantic_min_cosine with word-set
    Jaccard >= semantic_word_overlap (None: cosine alone)."""
    n = len(recs)
    out = []
    exact = clusters(n, exact_pairs([r.input + "\x1f" + r.output for r in recs]))
    if exact:
        extra = [recs[i].id for g in exact for i in g[1:]]
        out.append(Finding("duplicates.exact", "warning", [recs[i].id for g in exact for i in g],
                           f"{len(exact)} groups of identical records; {len(extra)} copies add "
                           "nothing but weight", {"clusters": _cluster_evidence(recs, exact),
                                                  "redundant": extra}))
    same = {frozenset(g) for g in exact}
    near = [g for g in clusters(n, [(a, b) for a, b, _ in near_pairs(
        [r.input for r in recs], near_threshold, num_perm)]) if frozenset(g) not in same]
    if near:
        out.append(Finding("duplicates.near", "warning", [recs[i].id for g in near for i in g],
                           f"{len(near)} clusters of near-duplicate inputs (word 5-gram Jaccard "
                           f">= {near_threshold})", {"clusters": _cluster_evidence(recs, near),
                                                    "threshold": near_threshold}))
    if emb is not None:
        covered = {frozenset(g) for g in exact + near}
        seen = {i for g in exact + near for i in g}
        pairs = semantic_pairs(emb, semantic_threshold, nn=nn, texts=[r.input for r in recs],
                               min_cosine=semantic_min_cosine, word_overlap=semantic_word_overlap)
        sem = [g for g in clusters(n, [(a, b) for a, b, _ in pairs])
               if frozenset(g) not in covered and not set(g) <= seen]
        # Which clusters needed the word-overlap rule (some pair below the bare-cosine bar).
        worded = {i for a, b, s in pairs if s < semantic_threshold for i in (a, b)}
        if sem:
            evidence = _cluster_evidence(recs, sem)
            for c, g in zip(evidence, sem, strict=False):
                c["rule"] = "cosine+words" if worded & set(g) else "cosine"
            rule = f"cosine >= {semantic_threshold}"
            if semantic_min_cosine is not None and semantic_min_cosine < semantic_threshold:
                rule += (f", or cosine >= {semantic_min_cosine} with word overlap >= "
                         f"{semantic_word_overlap}")
            out.append(Finding(
                "duplicates.semantic", "info", [recs[i].id for g in sem for i in g],
                f"{len(sem)} clusters of inputs that say the same thing in other words ({rule})",
                {"clusters": evidence, "threshold": semantic_threshold,
                 "min_cosine": semantic_min_cosine, "word_overlap": semantic_word_overlap}))
    return out


def duplicate_groups(recs: list[Record], near_threshold: float, num_perm: int = 128,
                     ) -> list[list[int]]:
    """Clusters of exact or near duplicate inputs (indices into recs), for fix and split."""
    pairs = exact_pairs([r.input for r in recs])
    pairs += [(a, b) for a, b, _ in near_pairs([r.input for r in recs], near_threshold, num_perm)]
    return clusters(len(recs), pairs)
