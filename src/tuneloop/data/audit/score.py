"""A 0-100 quality score that names what drives it, and training settings for this data size."""

from __future__ import annotations

from typing import Any

from tuneloop.data.audit.findings import Finding

# Per severity: points for having any such finding, points per share of records affected, cap.
PENALTY = {"error": (5.0, 100.0, 30.0), "warning": (1.0, 40.0, 12.0), "info": (0.0, 0.0, 0.0)}

# OpenAI's fine-tuning data guide: aim for 100..25,000 example-passes, 1..25 epochs.
TARGET_EPOCHS, MIN_EPOCHS, MAX_EPOCHS = 3, 1, 25
MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 100, 25_000


def score(findings: list[Finding], n: int) -> tuple[int, list[dict[str, Any]]]:
    """Start at 100 and subtract, per check, a penalty that grows with the share of records hit."""
    drivers = []
    for f in findings:
        base, per_share, cap = PENALTY[f.severity]
        if cap == 0:
            continue
        share = len(set(f.ids)) / max(1, n)
        points = round(min(cap, base + per_share * share), 1)
        drivers.append({"check": f.check, "severity": f.severity, "records": len(set(f.ids)),
                        "points": points})
    drivers.sort(key=lambda d: -d["points"])
    return max(0, round(100 - sum(d["points"] for d in drivers))), drivers


def epochs_for(n: int) -> int:
    """OpenAI-style clamp: 3 epochs unless that gives too few or too many example-passes."""
    if n <= 0:
        return 0
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, -(-MIN_TARGET_EXAMPLES // n))
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def recommend(n_clean: int, tokens_per_record: float, unit: str) -> dict[str, Any]:
    """Epochs, learning rate and LoRA rank for n_clean usable records, and the tokens implied."""
    epochs = epochs_for(n_clean)
    # Small sets overfit fast: lower rank, and a slightly lower rate for the tiniest ones.
    if n_clean < 200:
        rank, lr = 8, 1e-4
    elif n_clean < 2_000:
        rank, lr = 16, 2e-4
    else:
        rank, lr = 32, 2e-4
    tokens = int(round(epochs * n_clean * tokens_per_record))
    return {"usable_records": n_clean, "epochs": epochs, "learning_rate": lr, "lora_rank": rank,
            "lora_alpha": 2 * rank, "training_tokens": tokens, "token_unit": unit,
            "why": f"{n_clean} usable records: epochs clamped so that epochs x records stays "
                   f"within {MIN_TARGET_EXAMPLES}-{MAX_TARGET_EXAMPLES} (OpenAI's rule); "
                   f"rank {rank} suits this size (smaller sets overfit higher ranks)"}
