"""The Evaluation page's data: systems x metrics with intervals, paired tests, per-class scores
with bootstrap intervals, confusion matrices, score distributions and predictions side by side.

Everything comes from a run's eval/eval.json and predictions.jsonl (`tuneloop eval`); the only
figures computed here are the per-class intervals (same resamples and seed as the eval), since
a spam filter's owner reads spam F1 with its uncertainty, not macro-F1.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.evaluate.report import read_eval

COST_COLUMNS = [
    ("latency_s_per_example", "latency s / example"),
    ("generation_latency_s_per_example", "generation s / example"),
    ("prompt_tokens_per_query", "prompt tokens / query"),
    ("new_tokens_per_query", "new tokens / query"),
    ("tokens_per_query", "tokens / query"),
]
FILTERS = {
    "all": "all examples",
    "disagree": "systems disagree",
    "errors": "fine-tune wrong",
    "wins": "fine-tune right, a baseline wrong",
    "losses": "fine-tune wrong, a baseline right",
}
PAGE = 50
_CACHE: dict[tuple[str, int], dict] = {}
_WEIGHTS: dict[tuple[int, int, int], np.ndarray] = {}


def load(run: Path) -> dict[str, Any]:
    """eval.json and predictions of a run, cached until eval.json changes."""
    f = run / "eval" / "eval.json"
    key = (str(run), f.stat().st_mtime_ns)
    if key not in _CACHE:
        result, preds, _ = read_eval(run)
        _CACHE.clear()  # one evaluation at a time is plenty
        _CACHE[key] = {"result": result, "preds": preds, "per_class_ci": None}
    return _CACHE[key]


def _order(systems: list[str]) -> list[str]:
    return sorted(systems, key=lambda s: (s != "finetuned", not s.startswith("finetuned"), s))


def systems_table(result: dict) -> dict[str, Any]:
    """Rows per system: each metric as value + interval, and cost figures as plain numbers."""
    names = _order(list(result.get("systems", {})))
    metrics: list[str] = []
    for s in names:
        for m in result["systems"][s].get("metrics", {}):
            if m not in metrics:
                metrics.append(m)
    primary = result.get("primary_metric")
    if primary in metrics:
        metrics.remove(primary)
        metrics.insert(0, primary)
    costs = [
        (k, label)
        for k, label in COST_COLUMNS
        if any(isinstance(result["systems"][s].get("cost", {}).get(k), int | float) for s in names)
    ]
    rows = []
    for s in names:
        sys = result["systems"][s]
        rows.append(
            {
                "system": s,
                "metrics": {m: sys.get("metrics", {}).get(m) for m in metrics},
                "cost": {k: sys.get("cost", {}).get(k) for k, _ in costs},
            }
        )
    return {"metrics": metrics, "costs": costs, "rows": rows, "primary": primary}


def per_class(result: dict, preds: list[dict]) -> dict[str, Any] | None:
    """Per-class precision, recall and F1 of each system with 95% bootstrap intervals."""
    if result.get("task") != "classification":
        return None
    details = result.get("details", {})
    by_sys: dict[str, list[dict]] = {}
    for p in preds:
        by_sys.setdefault(p["system"], []).append(p)
    boot = result.get("bootstrap", {})
    n_boot, seed = int(boot.get("resamples", 1000)), int(boot.get("seed", 0))
    out = {}
    for s in _order(list(details)):
        pc = details[s].get("per_class")
        rows = by_sys.get(s)
        if not pc or not rows:
            continue
        labels = list(pc)
        ci = class_intervals(
            [r["reference"] for r in rows], [r["prediction"] for r in rows], labels, n_boot, seed
        )
        out[s] = [
            {
                "label": lab,
                "support": pc[lab]["support"],
                **{k: {"value": pc[lab][k], "ci": ci[lab][k]} for k in ("precision", "recall", "f1")},
            }
            for lab in labels
            if pc[lab]["support"] or ci[lab]["predicted"]
        ]
    return out or None


def _weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each example is drawn in each resample (n_boot x n), for the eval's resamples:
    numpy default_rng(seed).integers(0, n, (n_boot, n)), as evaluate.stats draws them."""
    key = (n, n_boot, seed)
    if key not in _WEIGHTS:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        flat = (np.arange(n_boot)[:, None] * n + idx).ravel()
        _WEIGHTS.clear()
        _WEIGHTS[key] = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
    return _WEIGHTS[key]


def _class_sums(w: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Per resample, the draws of the examples of each class (codes -1 count nowhere): column
    sums of `w` grouped by class, by one sort and np.add.reduceat (no BLAS threads, which on a
    busy CPU made the equivalent matrix product 50x slower)."""
    out = np.zeros((w.shape[0], k))
    idx = np.nonzero(codes >= 0)[0]
    if not len(idx):
        return out
    order = idx[np.argsort(codes[idx], kind="stable")]
    classes, starts = np.unique(codes[order], return_index=True)
    out[:, classes] = np.add.reduceat(w[:, order], starts, axis=1)
    return out


def class_intervals(
    gold: list[str], pred: list[str | None], labels: list[str], n_boot: int, seed: int
) -> dict[str, dict]:
    """Percentile intervals of per-class precision/recall/F1 over resampled examples (the
    eval's resamples), from per-resample draw counts: no loop over resamples."""
    code = {lab: i for i, lab in enumerate(labels)}
    k, n = len(labels), len(gold)
    g = np.array([code.get(x, -1) for x in gold])
    p = np.array([code.get(x, -1) if x is not None else -1 for x in pred])
    predicted = np.bincount(p[p >= 0], minlength=k)
    if n == 0:
        return {lab: {"precision": None, "recall": None, "f1": None, "predicted": 0} for lab in labels}
    w = _weights(n, n_boot, seed)
    tp, pp, gp = _class_sums(w, np.where(g == p, g, -1), k), _class_sums(w, p, k), _class_sums(w, g, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = {"precision": tp / pp, "recall": tp / gp, "f1": 2 * tp / (pp + gp)}
    bounds = {}
    for name, a in stats.items():
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class never predicted: all NaN
            bounds[name] = np.nanpercentile(a, [2.5, 97.5], axis=0)

    def interval(name: str, j: int) -> list[float] | None:
        lo, hi = bounds[name][:, j]
        return None if np.isnan(lo) else [round(float(lo), 4), round(float(hi), 4)]

    return {
        lab: {
            "precision": interval("precision", j),
            "recall": interval("recall", j),
            "f1": interval("f1", j),
            "predicted": int(predicted[j]),
        }
        for j, lab in enumerate(labels)
    }


def _score(p: dict, primary: str | None) -> float | None:
    for k in ("correct", primary, "f1", "rouge_l", "exact_match"):
        v = p.get(k) if k else None
        if isinstance(v, int | float) and math.isfinite(v):
            return float(v)
    return None


def examples(
    result: dict, preds: list[dict], flt: str = "all", page: int = 0, query: str = ""
) -> dict[str, Any]:
    """Predictions of every system per example, filtered and paged."""
    primary = result.get("primary_metric")
    classification = result.get("task") == "classification"
    names = _order(sorted({p["system"] for p in preds}))
    by_id: dict[str, dict] = {}
    for p in preds:
        e = by_id.setdefault(
            str(p["id"]),
            {"id": p["id"], "input": p.get("input", ""), "reference": p.get("reference", ""), "systems": {}},
        )
        score = _score(p, primary)
        e["systems"][p["system"]] = {
            "prediction": p.get("prediction"),
            "generated": p.get("generated"),
            "score": score,
            "right": None if score is None else score >= 0.5,
        }
    ft = "finetuned" if "finetuned" in names else (names[0] if names else None)
    rows = []
    for e in by_id.values():
        s = e["systems"]
        verdicts = {(v["prediction"] if classification else v["right"]) for v in s.values()}
        mine = s.get(ft, {}).get("right")
        others = [v["right"] for k, v in s.items() if k != ft and v["right"] is not None]
        keep = {
            "all": True,
            "disagree": len(verdicts) > 1,
            "errors": mine is False,
            "wins": mine is True and False in others,
            "losses": mine is False and True in others,
        }.get(flt, True)
        if keep and query:
            keep = query.lower() in (str(e["input"]) + " " + str(e["reference"])).lower()
        if keep:
            rows.append(e)
    counts = {"shown": len(rows), "total": len(by_id)}
    pages = max(1, math.ceil(len(rows) / PAGE))
    page = min(max(page, 0), pages - 1)
    return {
        "systems": names,
        "rows": rows[page * PAGE : (page + 1) * PAGE],
        "filter": flt,
        "filters": FILTERS,
        "page": page,
        "pages": pages,
        "counts": counts,
        "query": query,
        "finetuned": ft,
    }


def score_histograms(result: dict, preds: list[dict], bins: int = 10) -> dict[str, list[int]] | None:
    """Per system, counts of per-example scores in equal bins of [0, 1] (text tasks)."""
    if result.get("task") == "classification":
        return None
    primary = result.get("primary_metric")
    out: dict[str, list[int]] = {}
    for p in preds:
        v = _score(p, primary)
        if v is None:
            continue
        h = out.setdefault(p["system"], [0] * bins)
        h[min(bins - 1, max(0, int(v * bins)))] += 1
    return {s: out[s] for s in _order(list(out))} or None


def page_data(run: Path, flt: str = "all", page: int = 0, query: str = "") -> dict[str, Any]:
    """Everything the Evaluation page shows for one run."""
    d = load(run)
    result, preds = d["result"], d["preds"]
    if d["per_class_ci"] is None:
        d["per_class_ci"] = per_class(result, preds) or {}
    return {
        "task": result.get("task"),
        "split": result.get("split"),
        "n": result.get("examples"),
        "model": result.get("model"),
        "primary": result.get("primary_metric"),
        "systems": systems_table(result),
        "comparisons": result.get("comparisons", []),
        "per_class": d["per_class_ci"] or None,
        "confusion": {
            s: result["details"][s]["confusion"]
            for s in _order(list(result.get("details", {})))
            if isinstance(result["details"][s], dict) and result["details"][s].get("confusion")
        },
        "histograms": score_histograms(result, preds),
        "examples": examples(result, preds, flt, page, query),
        "notes": result.get("notes", []),
        "bootstrap": result.get("bootstrap", {}),
        "seed_variance": result.get("seed_variance"),
        "judge": result.get("judge"),
    }
