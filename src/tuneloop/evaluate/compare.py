"""Paired comparisons of the fine-tuned model against each baseline, on the same examples."""

from __future__ import annotations

from tuneloop.evaluate.scoring import FAITHFULNESS, LOWER_IS_BETTER, PRIMARY, Scored
from tuneloop.evaluate.stats import mcnemar, overlap, paired_bootstrap


def compare(task_type: str, a_name: str, a: Scored, b_name: str, b: Scored, n: int,
            n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One record per tested metric: the difference a - b, its CI, p-value and a plain verdict."""
    metrics = [PRIMARY[task_type]]
    if task_type == "classification":
        metrics.append("macro_f1")
    elif task_type == "extraction":
        metrics.insert(0, "exact_match")
    if task_type in FAITHFULNESS:
        metrics.append(FAITHFULNESS[task_type])
    out = []
    for m in metrics:
        if m not in a.stats or m not in b.stats:
            continue
        rec = {"a": a_name, "b": b_name, "metric": m}
        rec |= paired_bootstrap(a.stats[m], b.stats[m], n, n_boot, seed)
        rec["bootstrap_resamples"] = rec.pop("resamples")
        if m in ("accuracy", "exact_match") and "correct" in a.per_example \
                and "correct" in b.per_example:
            mc = mcnemar(a.per_example["correct"], b.per_example["correct"])
            rec |= {"p_value": mc["p_value"], "test": mc["test"],
                    "only_a_correct": mc["only_a_correct"],
                    "only_b_correct": mc["only_b_correct"],
                    "bootstrap_p_value": rec["p_value"]}
        rec["intervals_overlap"] = overlap(a.metrics[m]["ci"], b.metrics[m]["ci"])
        rec["verdict"] = verdict(rec)
        out.append(rec)
    return out


def verdict(rec: dict) -> str:
    """One sentence a reader can act on; says so plainly when the data cannot decide."""
    a, b, m, d = rec["a"], rec["b"], rec["metric"], rec["diff"]
    p = rec["p_value"]
    if p is None or d is None:
        return f"{a} vs {b} on {m}: not enough data to compare"
    if p < 0.05:
        better = a if (d > 0) != (m in LOWER_IS_BETTER) else b
        return (f"{better} is better on {m} by {abs(d):.3f} ({format_p(rec)})"
                + ("; the 95% intervals still overlap, so treat the size as rough"
                   if rec["intervals_overlap"] else ""))
    return (f"no significant difference on {m} ({a} - {b} = {d:+.3f}, {format_p(rec)}); "
            "small data is noisy: the intervals overlap" if rec["intervals_overlap"] else
            f"no significant difference on {m} ({a} - {b} = {d:+.3f}, {format_p(rec)})")


def format_p(rec: dict) -> str:
    """'p=0.012'; a bootstrap p of 0 is only a bound, 'p<0.001' for 1000 resamples."""
    p = rec["p_value"]
    if p == 0 and rec.get("test") == "paired_bootstrap" and rec.get("bootstrap_resamples"):
        return f"p<{1 / rec['bootstrap_resamples']:.2g}"
    return f"p={p:.3g}"
