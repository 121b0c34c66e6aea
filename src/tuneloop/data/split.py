"""Seeded, stratified splits: the same seed and data give the same split on any machine."""

from __future__ import annotations

import random
from collections import defaultdict

from tuneloop.records import Example


def train_validation_split(examples: list[Example], fraction: float, seed: int,
                           ) -> tuple[list[Example], list[Example]]:
    """Hold out `fraction` of each label (or of all rows when unlabelled), at least one row."""
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.label].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(groups, key=str):
        idx = groups[key][:]
        rng.shuffle(idx)
        k = round(len(idx) * fraction)
        if k == 0 and len(idx) > 1 and len(groups) == 1:
            k = 1
        held.update(idx[:k])
    if not held:
        held = {rng.randrange(len(examples))}
    train = [ex for i, ex in enumerate(examples) if i not in held]
    val = [ex for i, ex in enumerate(examples) if i in held]
    return train, val


def grouped_split(examples: list[Example], fractions: tuple[float, float, float], seed: int,
                  groups: list[list[int]] | None = None,
                  ) -> tuple[list[Example], list[Example], list[Example]]:
    """Stratified train/validation/test split that keeps each group (e.g. a near-duplicate
    cluster, indices into `examples`) inside one split, so duplicates cannot leak across."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions {fractions} must be non-negative and sum to 1")
    owner = list(range(len(examples)))
    for g in groups or []:
        for i in g:
            owner[i] = g[0]
    units: dict[int, list[int]] = defaultdict(list)
    for i, o in enumerate(owner):
        units[o].append(i)
    # Stratify whole units by their majority label; within a stratum, the largest units are
    # placed first so the small ones can even out the counts.
    strata: dict[str, list[list[int]]] = defaultdict(list)
    for members in units.values():
        labels = [examples[i].label for i in members]
        strata[str(max(set(labels), key=lambda x: (labels.count(x), str(x))))].append(members)
    rng = random.Random(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for key in sorted(strata):
        items = strata[key]
        rng.shuffle(items)
        items.sort(key=len, reverse=True)
        total = sum(len(m) for m in items)
        have = [0, 0, 0]
        for members in items:
            # Give the unit to the split furthest below its target share of this stratum.
            need = [fractions[s] * total - have[s] if fractions[s] > 0 else float("-inf")
                    for s in range(3)]
            s = max(range(3), key=lambda s: need[s])
            have[s] += len(members)
            parts[s].extend(members)
    return tuple([examples[i] for i in sorted(p)] for p in parts)  # type: ignore[return-value]
