"""Shared loader for the benchmarks: banking77 (CC BY 4.0, PolyAI) from ../shared/data."""

from __future__ import annotations

import csv
import os
from pathlib import Path

DATA = Path(os.environ.get("TUNELOOP_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def banking77(split: str = "train") -> list[tuple[str, str]]:
    """(text, intent) rows of banking77; see ../shared/data/banking77/SOURCE.md."""
    path = DATA / "banking77" / f"{split}.csv"
    if not path.exists():
        raise SystemExit(f"{path} not found; set TUNELOOP_DATA to the shared data folder")
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["text"].strip(), r["category"]) for r in csv.DictReader(f)]
