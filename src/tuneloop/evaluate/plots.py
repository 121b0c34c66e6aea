"""Matplotlib figures as PNG bytes: learning curve, systems bar chart, confusion matrix.

Figures are made with matplotlib's object API (`Figure`), not pyplot: no global backend to
select, no figure registry to close, safe from any thread. The PNG bytes are the same as
pyplot's Agg output.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure


def subplots(*args, figsize: tuple[float, float] | None = None, **kwargs):
    """(figure, axes) like pyplot.subplots, without pyplot's global state."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG (110 dpi, tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a data: URI, for self-contained HTML reports."""
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def curve_png(curve: dict) -> bytes:
    """Metric against training examples, with 95% interval bars."""
    m = curve["metric"]
    xs = [p["train_examples"] for p in curve["points"]]
    ys = [p["metrics"][m]["value"] for p in curve["points"]]
    lo = [y - p["metrics"][m]["ci"][0] for y, p in zip(ys, curve["points"], strict=True)]
    hi = [p["metrics"][m]["ci"][1] - y for y, p in zip(ys, curve["points"], strict=True)]
    fig, ax = subplots(figsize=(5.5, 3.5))
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4)
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("training examples")
    ax.set_ylabel(m)
    ax.set_title(f"learning curve ({curve['test_examples']} test examples, 95% CI)")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def systems_png(result: dict, metric: str) -> bytes:
    """One bar per system for `metric`, with its 95% interval."""
    names = [k for k, s in result["systems"].items() if metric in s["metrics"]]
    vals = [result["systems"][k]["metrics"][metric]["value"] for k in names]
    cis = [result["systems"][k]["metrics"][metric]["ci"] for k in names]
    err = np.array([[v - c[0], c[1] - v] for v, c in zip(vals, cis, strict=True)]).T
    fig, ax = subplots(figsize=(5.5, 3.2))
    ax.bar(names, vals, yerr=err, capsize=5, color="#4c78a8")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by system (95% CI)")
    ax.tick_params(axis="x", labelrotation=15)
    return png_bytes(fig)


def confusion_png(confusion: dict) -> bytes:
    """Heat map of the confusion matrix (rows gold, columns predicted)."""
    mat = np.array(confusion["matrix"])
    n = len(confusion["columns"])
    fig, ax = subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * len(mat)))
    ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(n), confusion["columns"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(mat)), confusion["labels"], fontsize=7)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if mat[i, j]:
                ax.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] > mat.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    return png_bytes(fig)
