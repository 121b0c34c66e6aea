"""Faithfulness to the record's `source`: how much of a generated answer the source supports.

The lexical check counts generated content words, numbers and names and reports the share
not found in the source (an unsupported-content rate; 0 is best). It catches invented figures
and names cheaply; a local NLI model (optional) judges meaning rather than words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

_WORD = re.compile(r"\w+(?:[.,]\d+)*", re.UNICODE)


def _content(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text):
        lw = w.lower()
        is_number = any(ch.isdigit() for ch in w)
        # Numbers always count (an invented figure is the worst error); words need substance.
        if is_number or (len(lw) > 2 and lw not in ENGLISH_STOP_WORDS):
            out.append(lw.replace(",", ""))
    return out


def _stem(w: str) -> str:
    # Crude plural/tense folding so "patients" is supported by "patient".
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 3 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def unsupported_rate(generated: str, source: str) -> float | None:
    """Share of the answer's content words/numbers/names absent from the source; None if no content."""
    words = _content(generated)
    if not words:
        return None
    known = {_stem(w) for w in _content(source)} | {w for w in _content(source)}
    missing = sum(1 for w in words if w not in known and _stem(w) not in known)
    return missing / len(words)


NO_ANSWER = {"none", "n/a", "no such clause", ""}


def not_in_source(answer: str, source: str) -> float | None:
    """Extraction: 1.0 when the answer is not a verbatim span of the source (whitespace folded),
    0.0 when it is; None for a `none` answer, which claims no span."""
    a = " ".join(answer.split())
    if a.lower().strip(" .") in NO_ANSWER:
        return None
    return 0.0 if a in " ".join(source.split()) else 1.0


def unsupported_terms(generated: str, source: str) -> list[str]:
    """The generated content terms the source does not contain (for the report's error list)."""
    known = {_stem(w) for w in _content(source)}
    return sorted({w for w in _content(generated) if _stem(w) not in known})


def nli_support(generated: Sequence[str], sources: Sequence[str], model_path: str) -> list[float]:
    """Entailment probability of each answer given its source, from a local NLI cross-encoder."""
    from transformers import pipeline  # why: optional NLI judge; scoring never loads it otherwise

    clf = pipeline("text-classification", model=model_path, top_k=None, device="cpu")
    scores = []
    for src, gen in zip(sources, generated, strict=True):
        out = clf({"text": src, "text_pair": gen}, truncation=True)
        probs = {d["label"].lower(): d["score"] for d in out}
        scores.append(float(next((v for k, v in probs.items() if "entail" in k), 0.0)))
    return scores
