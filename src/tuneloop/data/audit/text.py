"""Text normalisation and n-grams shared by the duplicate, conflict and leakage checks."""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    """Case-folded, white space collapsed: the key for exact-duplicate checks."""
    return _WS.sub(" ", text.casefold()).strip()


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def ngrams(text: str, n: int) -> set[str]:
    """Word n-grams; a text shorter than n words gives itself as its one n-gram."""
    w = words(text)
    if len(w) < n:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
