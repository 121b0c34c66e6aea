"""Uncertainty: percentile bootstrap intervals, paired bootstrap and McNemar's exact test.

Everything resamples examples (the unit that varies between test sets), with a fixed seed so
the same predictions always give the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import binomtest

Stat = Callable[[np.ndarray], float]  # maps a vector of example indices to a metric value


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(stat: Stat, n: int, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile (1-alpha) interval of `stat` over resamples of the n examples."""
    if n == 0:
        return (float("nan"), float("nan"))
    vals = np.array([stat(ix) for ix in _indices(n, n_boot, seed)], dtype=float)
    vals = vals[~np.isnan(vals)]
    if not len(vals):
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def mean_stat(values: np.ndarray) -> Stat:
    """Statistic for a per-example score: the mean (NaN entries, e.g. no content, skipped)."""
    v = np.asarray(values, dtype=float)
    return lambda ix: float(np.nanmean(v[ix])) if np.any(~np.isnan(v[ix])) else float("nan")


def ratio_stat(num: np.ndarray, den: np.ndarray) -> Stat:
    """Statistic sum(num)/sum(den), e.g. bits per byte over resampled examples."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return lambda ix: float(a[ix].sum() / max(b[ix].sum(), 1e-12))


def metric_with_ci(stat: Stat, n: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """{"value": point estimate on all examples, "ci": [lo, hi]}."""
    value = stat(np.arange(n)) if n else float("nan")
    lo, hi = bootstrap_ci(stat, n, n_boot, seed=seed)
    return {"value": _r(value), "ci": [_r(lo), _r(hi)]}


def paired_bootstrap(stat_a: Stat, stat_b: Stat, n: int, n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """Difference a - b with its interval and a two-sided p-value, same resamples for both."""
    idx = _indices(n, n_boot, seed)
    full = np.arange(n)
    diffs = np.array([stat_a(ix) - stat_b(ix) for ix in idx], dtype=float)
    diffs = diffs[~np.isnan(diffs)]
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (np.nan, np.nan)
    # Share of resamples on the other side of zero, doubled: a bootstrap p-value.
    p = 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)) if len(diffs) else np.nan
    # A resampled p of 0 only says p < 1/resamples; `resamples` lets readers say so.
    return {"diff": _r(stat_a(full) - stat_b(full)), "ci": [_r(lo), _r(hi)],
            "p_value": _r(min(1.0, float(p))), "test": "paired_bootstrap",
            "resamples": int(len(diffs))}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired right/wrong outcomes (binomial on discordant pairs)."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    p = binomtest(only_a, n, 0.5).pvalue if n else 1.0
    # Exact p-values can be tiny (74 vs 6 discordant pairs: ~1e-15); keep 6 significant
    # figures rather than rounding to 6 decimals, which printed them as p=0.
    return {"only_a_correct": only_a, "only_b_correct": only_b,
            "p_value": float(f"{float(p):.6g}"), "test": "mcnemar_exact"}


def overlap(ci_a: list[float], ci_b: list[float]) -> bool:
    """Whether two intervals overlap (small data: then say the difference is not established).
    An interval that could not be computed (None) is treated as overlapping."""
    if None in (*ci_a, *ci_b):
        return True
    return not (ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0])


def _r(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 6)
