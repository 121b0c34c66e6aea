"""Rank measured candidates: a weighted sum of numbers normalised against the best candidate.

Each metric is turned into a 0..1 score relative to the best candidate on that metric
(lower-is-better: best / value; higher-is-better: value / best), so a candidate twice as slow
as the fastest scores 0.5 on latency, and equal numbers give equal scores. The weighted sum of
those scores is the rank score; the explanation line lists every term, so a reader can redo
the sum by hand from the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.errors import TuneloopError


@dataclass(frozen=True)
class Metric:
    key: str
    group: str  # quality | cost
    higher_is_better: bool
    default_weight: float
    label: str


METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("bpb", "quality", False, 0.35, "bits/byte of the target"),
    Metric("zero_shot", "quality", True, 0.15, "zero-shot task metric"),
    Metric("few_shot", "quality", True, 0.15, "few-shot task metric"),
    Metric("adapt", "quality", True, 0.05, "bpb drop per LoRA probe step"),
    Metric("latency", "cost", False, 0.1, "s per generated token"),
    Metric("memory", "cost", False, 0.1, "estimated training peak GB"),
    Metric("train_time", "cost", False, 0.1, "estimated training minutes"),
)}
GROUPS = ("quality", "cost")


def parse_weights(spec: str | None) -> dict[str, float]:
    """`quality=0.7,cost=0.3` or per-metric `bpb=1,latency=0.2` (metric keys override groups)."""
    weights = {k: m.default_weight for k, m in METRICS.items()}
    if not spec:
        return weights
    pairs: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, _, val = part.partition("=")
        key = key.strip()
        if key not in METRICS and key not in GROUPS:
            raise TuneloopError(f"--weights: unknown key {key!r}; use {', '.join(GROUPS)} or "
                                f"{', '.join(METRICS)}")
        try:
            pairs[key] = float(val)
        except ValueError:
            raise TuneloopError(f"--weights: {part!r} needs a number, e.g. {key}=0.5") from None
        if pairs[key] < 0:
            raise TuneloopError(f"--weights: {key} must not be negative")
    for group in GROUPS:
        if group in pairs:
            members = [m for m in METRICS.values() if m.group == group]
            total = sum(m.default_weight for m in members)
            # A group weight is shared by its metrics in their default proportions.
            for m in members:
                weights[m.key] = pairs[group] * m.default_weight / total
    for key, val in pairs.items():
        if key in METRICS:
            weights[key] = val
    return weights


def effective_weights(weights: dict[str, float], rows: list[dict]) -> dict[str, float]:
    """Weights over the metrics some candidate measured, scaled to sum to 1."""
    present = {k: w for k, w in weights.items()
               if w > 0 and any(r["metrics"].get(k) is not None for r in rows)}
    total = sum(present.values())
    if total <= 0:
        raise TuneloopError("--weights: every weight of a measured metric is zero; "
                            f"measured: {sorted({k for r in rows for k in r['metrics']})}")
    return {k: round(w / total, 4) for k, w in present.items()}


def _relative(value: float | None, best: float, higher: bool) -> float:
    """0..1 score of `value` against the best value (1 = as good as the best)."""
    if value is None:
        return 0.0
    if higher:
        if best <= 0:
            return 1.0  # nobody scored above zero: the metric says nothing
        return max(value, 0.0) / best
    if value <= 0:
        return 1.0
    return best / value if best > 0 else 0.0


def rank(rows: list[dict], weights: dict[str, float]) -> list[dict]:
    """Score and order rows ({name, metrics: {key: value}}); returns new rows, best first.

    Each returned row gains `score`, `rank`, `terms` (metric -> normalised, weight, best) and
    `explanation`.
    """
    if not rows:
        return []
    eff = effective_weights(weights, rows)
    best: dict[str, float] = {}
    for k in eff:
        vals = [r["metrics"][k] for r in rows if r["metrics"].get(k) is not None]
        best[k] = max(vals) if METRICS[k].higher_is_better else min(vals)
    scored = []
    for r in rows:
        terms = {k: {"value": r["metrics"].get(k), "best": best[k], "weight": round(w, 4),
                     "normalised": round(_relative(r["metrics"].get(k), best[k],
                                                   METRICS[k].higher_is_better), 4)}
                 for k, w in eff.items()}
        score = sum(t["weight"] * t["normalised"] for t in terms.values())
        scored.append(r | {"score": round(score, 4), "terms": terms})
    # Ties keep the caller's candidate order (stable sort).
    scored.sort(key=lambda r: -r["score"])
    for i, r in enumerate(scored, 1):
        r["rank"] = i
        r["explanation"] = explain(r, scored)
    return scored


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def explain(row: dict, ranked: list[dict]) -> str:
    """One line: the weighted terms of the score, then where the candidate gained and lost most."""
    terms = row["terms"]
    parts = " + ".join(f"{t['weight']:.2f}x{t['normalised']:.2f} {k}" for k, t in terms.items())
    line = f"score {row['score']:.3f} = {parts}"
    if len(ranked) < 2:
        return line + " (only candidate measured)"
    # The largest lost weight shows what kept it from the top; a full term what it won.
    lost = max(terms.items(), key=lambda kv: kv[1]["weight"] * (1 - kv[1]["normalised"]))
    won = [k for k, t in terms.items() if t["normalised"] >= 0.9999 and t["weight"] > 0]
    bits = []
    if won:
        bits.append("best on " + ", ".join(f"{k} ({_fmt(terms[k]['value'])})" for k in won))
    k, t = lost
    if t["normalised"] < 0.9999:
        bits.append(f"lost most on {k}: {_fmt(t['value'])} vs best {_fmt(t['best'])} "
                    f"({METRICS[k].label})")
    return line + ("; " + "; ".join(bits) if bits else "")
