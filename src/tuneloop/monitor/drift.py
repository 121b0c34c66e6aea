"""Drift signals as pure functions on texts, embeddings and per-example numbers.

Reference = what the model was trained on; current = a window of traffic. Each test returns a
plain dict (JSON-ready) with its statistic, its p-value or baseline, and a `drift` flag; the
thresholds come from the caller (the `monitor` config section).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from tuneloop.evaluate.stats import mean_stat, metric_with_ci

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def mmd_test(ref: np.ndarray, cur: np.ndarray, n_perm: int = 500, seed: int = 0) -> dict:
    """Squared MMD with an RBF kernel (median-distance bandwidth) and a permutation p-value.

    The kernel matrix of the pooled sample is computed once; each permutation only re-indexes
    it, so 500 permutations of a few hundred embeddings take well under a second.
    """
    ref, cur = np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)
    n, m = len(ref), len(cur)
    if n < 2 or m < 2:
        return {"mmd2": None, "p_value": None, "n_ref": n, "n_cur": m, "permutations": 0}
    pooled = np.concatenate([ref, cur])
    d2 = _sq_dists(pooled, pooled)
    off = d2[~np.eye(len(pooled), dtype=bool)]
    bw = float(np.median(off)) or 1.0  # median heuristic; guards identical points
    k = np.exp(-d2 / bw)
    np.fill_diagonal(k, 0.0)  # unbiased estimate: drop the i == j terms

    def stat(ix: np.ndarray) -> float:
        a, b = ix[:n], ix[n:]
        kxx = k[np.ix_(a, a)].sum() / (n * (n - 1))
        kyy = k[np.ix_(b, b)].sum() / (m * (m - 1))
        kxy = k[np.ix_(a, b)].sum() / (n * m)
        return kxx + kyy - 2 * kxy

    observed = stat(np.arange(n + m))
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(n + m)) for _ in range(n_perm)])
    p = (1 + int(np.sum(null >= observed))) / (1 + n_perm)
    return {"mmd2": round(float(observed), 6), "p_value": round(p, 6), "n_ref": n, "n_cur": m,
            "permutations": n_perm, "bandwidth": round(bw, 6)}


def domain_classifier(ref: np.ndarray, cur: np.ndarray, n_random: int = 1000,
                      percentile: float = 95.0, seed: int = 0) -> dict:
    """ROC AUC of a classifier telling current from reference (cross-validated), and the AUC a
    random classifier reaches at `percentile` on the same sample sizes.

    As in Evidently's domain-classifier test for small samples: with a few dozen points an AUC
    of 0.6 can be luck, so the bar is the random-score AUC distribution, not a fixed 0.5.
    """
    ref, cur = np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)
    n, m = len(ref), len(cur)
    folds = min(5, n, m)
    if folds < 2:
        return {"auc": None, "random_auc": None, "n_ref": n, "n_cur": m}
    x = np.concatenate([ref, cur])
    y = np.r_[np.zeros(n), np.ones(m)]
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = LogisticRegression(max_iter=1000, class_weight="balanced")
    proba = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, proba))
    # A random classifier ranks the pooled points in a random order; its AUC is the
    # Mann-Whitney statistic of the current points' ranks, so no scores need drawing.
    ranks = np.random.default_rng(seed).permuted(np.tile(np.arange(1, n + m + 1), (n_random, 1)),
                                                 axis=1)[:, :m]
    rand = (ranks.sum(1) - m * (m + 1) / 2) / (n * m)
    return {"auc": round(auc, 4), "random_auc": round(float(np.percentile(rand, percentile)), 4),
            "percentile": percentile, "n_ref": n, "n_cur": m, "folds": folds}


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters only: numbers and ids are not vocabulary)."""
    return _WORD.findall(text.lower())


def novel_terms(reference: Sequence[str], current: Sequence[str], top: int = 20) -> dict:
    """Share of current word tokens never seen in the reference texts, and the commonest ones."""
    vocab = {w for t in reference for w in words(t)}
    counts = Counter(w for t in current for w in words(t))
    total = sum(counts.values())
    novel = Counter({w: c for w, c in counts.items() if w not in vocab})
    rate = sum(novel.values()) / total if total else 0.0
    return {"rate": round(rate, 4), "tokens": total, "reference_vocab": len(vocab),
            "top": [[w, c] for w, c in novel.most_common(top)]}


def novel_rate_per_text(reference: Sequence[str], current: Sequence[str]) -> np.ndarray:
    """Per current text: the share of its words outside the reference vocabulary."""
    vocab = {w for t in reference for w in words(t)}
    out = []
    for t in current:
        ws = words(t)
        out.append(sum(w not in vocab for w in ws) / len(ws) if ws else 0.0)
    return np.asarray(out, dtype=float)


def nearest_distance(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of each current embedding to its nearest reference embedding
    (embeddings are L2-normalised): how far an input is from anything trained on."""
    if not len(ref) or not len(cur):
        return np.ones(len(cur))
    return 1.0 - np.max(np.asarray(cur) @ np.asarray(ref).T, axis=1)


def shift_test(ref: Sequence[float], cur: Sequence[float]) -> dict:
    """Two-sided Mann-Whitney U test of a per-example number (perplexity, length) and the
    medians: a shift in location, without assuming a distribution."""
    a = np.asarray([v for v in ref if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in cur if v is not None and np.isfinite(v)], dtype=float)
    if len(a) < 2 or len(b) < 2:
        return {"ref_median": None, "cur_median": None, "p_value": None}
    p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return {"ref_median": round(float(np.median(a)), 4), "cur_median": round(float(np.median(b)), 4),
            "ratio": round(float(np.median(b) / max(np.median(a), 1e-12)), 4),
            "p_value": round(p, 6)}


def rate_with_ci(flags: Sequence[bool | float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of 0/1 (or [0, 1]) per-example values with a bootstrap 95% interval."""
    v = np.asarray(flags, dtype=float)
    res = metric_with_ci(mean_stat(v), len(v), n_boot, seed) if len(v) else {
        "value": None, "ci": [None, None]}
    return res | {"n": len(v)}
