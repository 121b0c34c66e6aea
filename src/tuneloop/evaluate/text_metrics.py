"""Extraction and generation metrics: SQuAD exact match / token F1, ROUGE-L, embedding similarity.

Each returns one score per example (max over references), so bootstraps and paired tests can
resample examples.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import cache

import numpy as np
from rouge_score import rouge_scorer

from tuneloop.models.embed import embed

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, refs: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(r) for r in refs))


def token_f1(pred: str, refs: Sequence[str]) -> float:
    """SQuAD token-overlap F1, max over references."""
    best = 0.0
    p = normalize_answer(pred).split()
    for r in refs:
        g = normalize_answer(r).split()
        if not p or not g:  # SQuAD: both empty counts as a match
            best = max(best, float(p == g))
            continue
        common = sum((Counter(p) & Counter(g)).values())
        if common:
            prec, rec = common / len(p), common / len(g)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


class UnicodeTokenizer:
    """rouge-score tokenizer that keeps non-ASCII words (its default drops them: 'é', '中文')."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


@cache
def _scorer():
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeTokenizer())


def rouge_l(pred: str, refs: Sequence[str]) -> float:
    """ROUGE-L F-measure, max over references."""
    return max((_scorer().score(r, pred)["rougeL"].fmeasure for r in refs), default=0.0)


def embedding_similarity(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Cosine similarity of MiniLM embeddings, prediction vs reference, one per pair."""
    a = embed([p or " " for p in preds])
    b = embed([r or " " for r in refs])
    return np.sum(a * b, axis=1).astype(float)


def references(ex) -> list[str]:
    """The example's target plus any alternatives in meta['references']."""
    extra = ex.meta.get("references") if isinstance(ex.meta, dict) else None
    return [ex.target] + [str(r) for r in (extra or []) if str(r) != ex.target]
