"""Task metrics. Classification here; the evaluation stage adds the rest."""

from __future__ import annotations

from collections.abc import Sequence


def classification_metrics(gold: Sequence[str], pred: Sequence[str],
                           labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the label list (sklearn; labels absent from both count 0)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, labels=list(labels), average="macro",
                                       zero_division=0))}
