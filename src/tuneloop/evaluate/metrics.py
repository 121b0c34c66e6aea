"""Classification metrics: accuracy, macro-F1, per-class scores, confusion matrix, label parsing."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(gold: Sequence[str], pred: Sequence[str],
                           labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the label list (sklearn; labels absent from both count 0)."""
    return {"accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, labels=list(labels), average="macro",
                                       zero_division=0))}


def classification_details(gold: Sequence[str], pred: Sequence[str | None],
                           labels: Sequence[str]) -> dict:
    """Per-class precision/recall/F1/support and the confusion matrix (rows gold, cols pred)."""
    # A parse failure (None) is its own column so it is visible, not silently a label.
    fail = "<unparsed>"
    pred_s = [fail if p is None else p for p in pred]
    cols = list(labels) + ([fail] if fail in pred_s else [])
    p, r, f, s = precision_recall_fscore_support(gold, pred_s, labels=list(labels),
                                                 zero_division=0)
    cm = confusion_matrix(gold, pred_s, labels=cols)[: len(labels)]
    return {"per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]),
                                "f1": float(f[i]), "support": int(s[i])}
                          for i, lab in enumerate(labels)},
            "confusion": {"labels": list(labels), "columns": cols, "matrix": cm.tolist()}}


def macro_f1_codes(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> float:
    """Macro-F1 from integer codes (pred may be -1 for unparsed); fast enough for bootstraps."""
    valid = pred >= 0
    tp = np.bincount(gold[valid & (gold == pred)], minlength=n_labels)[:n_labels]
    pred_n = np.bincount(pred[valid], minlength=n_labels)[:n_labels]
    gold_n = np.bincount(gold, minlength=n_labels)[:n_labels]
    denom = pred_n + gold_n
    # sklearn's convention with zero_division=0: a label with no gold and no pred scores 0.
    f1 = np.divide(2 * tp, denom, out=np.zeros(n_labels), where=denom > 0)
    return float(f1.mean())


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.lower()).strip(" .,:;!?\"'`*")


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """Map a free-generated answer to a label; None is a parse failure.

    Accepts an exact (case/underscore-insensitive) answer, an answer that starts with one
    label (longest first, so "card_arrival" beats "card"), or text naming exactly one label.
    """
    t = _norm(text)
    normed = {_norm(lab): lab for lab in labels}
    if t in normed:
        return normed[t]
    for n in sorted(normed, key=len, reverse=True):
        if t.startswith(n) and (len(t) == len(n) or not t[len(n)].isalnum()):
            return normed[n]
    found = {normed[n] for n in normed if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", t)}
    return found.pop() if len(found) == 1 else None
