"""Human review: export a sample of outputs as CSV for reviewers, import their ratings back.

The CSV has one row per (example, system) with blank `rating` (1-5) and `comment` columns;
systems are shuffled within an example and named only by a code, so reviewers rate blind.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from tuneloop.errors import TuneloopError
from tuneloop.evaluate.report import read_eval
from tuneloop.evaluate.stats import mean_stat, metric_with_ci
from tuneloop.files import write_json

COLUMNS = ["item", "example_id", "system_code", "input", "reference", "output", "rating",
           "comment"]


def export_review(run: str | Path, n: int = 50, systems: list[str] | None = None,
                  seed: int = 0, out: Path | None = None) -> Path:
    """Write review.csv (sample of n examples) and the private code -> system key."""
    _, preds, d = read_eval(run)
    if not preds:
        raise TuneloopError(f"{d}: no predictions.jsonl to sample from")
    names = systems or sorted({p["system"] for p in preds} - {"embedding_classifier"}) \
        or sorted({p["system"] for p in preds})
    ids = sorted({p["id"] for p in preds}, key=str)
    rng = random.Random(seed)
    sample = rng.sample(ids, min(n, len(ids)))
    by = {(p["id"], p["system"]): p for p in preds}
    out = out or d / "review" / "review.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    key: dict[str, str] = {}
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for item, ex_id in enumerate(sample, 1):
            order = [s for s in names if (ex_id, s) in by]
            rng.shuffle(order)
            for j, s in enumerate(order):
                p = by[(ex_id, s)]
                code = f"{item}{chr(65 + j)}"
                key[code] = s
                output = p.get("generated") or p.get("prediction") or ""
                w.writerow([item, ex_id, code, p["input"], p["reference"], output, "", ""])
    write_json(out.parent / "key.json", key)
    return out


def import_review(run: str | Path, file: str | Path) -> dict:
    """Fold a filled-in review CSV into ratings.json: mean rating and count per system."""
    _, _, d = read_eval(run)
    keyf = d / "review" / "key.json"
    if not keyf.exists():
        raise TuneloopError(f"{d}: no review/key.json; run `tuneloop review export` first")
    key = json.loads(keyf.read_text())
    per: dict[str, list[float]] = {}
    ratings: list[dict] = []  # per example, so a judge's agreement with raters can be measured
    comments: list[dict] = []
    with open(file, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            code, rating = (row.get("system_code") or "").strip(), (row.get("rating") or "").strip()
            if not rating:
                continue
            if code not in key:
                raise TuneloopError(f"{file}:{line}: unknown system_code {code!r}")
            try:
                r = float(rating)
            except ValueError:
                raise TuneloopError(f"{file}:{line}: rating {rating!r} is not a number (1-5)"
                                    ) from None
            if not 1 <= r <= 5:
                raise TuneloopError(f"{file}:{line}: rating {r} outside 1-5")
            per.setdefault(key[code], []).append(r)
            ratings.append({"system": key[code], "example_id": row.get("example_id"),
                            "rating": r})
            if (row.get("comment") or "").strip():
                comments.append({"system": key[code], "example_id": row.get("example_id"),
                                 "rating": r, "comment": row["comment"].strip()})
    if not per:
        raise TuneloopError(f"{file}: no ratings filled in (column 'rating', 1-5)")
    summary = {s: {"n": len(v), "mean_rating": metric_with_ci(mean_stat(v), len(v))}
               for s, v in sorted(per.items())}
    res = {"file": str(file), "systems": summary, "comments": comments, "ratings": ratings}
    judged = _judge_agreement(d, ratings)
    if judged:
        res["judge_agreement"] = judged
    write_json(d / "review" / "ratings.json", res)
    return res


def _judge_agreement(eval_dir: Path, ratings: list[dict]) -> dict | None:
    """The LLM judge's agreement with these raters, when the evaluation ran a judge."""
    from tuneloop.evaluate.judge import judge_agreement

    result = json.loads((eval_dir / "eval.json").read_text())
    return judge_agreement(result["judge"], ratings) if result.get("judge") else None
