"""The drift report: one self-contained HTML page (plots embedded) from a monitor result."""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path

from tuneloop.evaluate.plots import png_bytes, png_data_uri, subplots
from tuneloop.files import atomic_write_text

_SERIES = [("requests", "requests"), ("distance", "distance to nearest training input"),
           ("novel_rate", "novel-term rate"), ("perplexity", "input perplexity"),
           ("output_chars", "output length (chars)"), ("quality", "feedback quality (95% CI)")]


def series_png(series: list[dict]) -> bytes:
    """One small panel per signal over the time buckets; quality with its interval."""
    xs = [datetime.fromisoformat(p["start"]) for p in series]
    fig, axes = subplots(len(_SERIES), 1, figsize=(7, 1.7 * len(_SERIES)), sharex=True)
    for ax, (key, title) in zip(axes, _SERIES, strict=True):
        if key == "quality":
            pts = [(x, p["quality"]) for x, p in zip(xs, series, strict=True)
                   if p["quality"]["value"] is not None]
            if pts:
                v = [q["value"] for _, q in pts]
                lo = [q["value"] - q["ci"][0] for _, q in pts]
                hi = [q["ci"][1] - q["value"] for _, q in pts]
                ax.errorbar([x for x, _ in pts], v, yerr=[lo, hi], marker="o", capsize=3)
            ax.set_ylim(-0.05, 1.05)
        else:
            ys = [p.get(key) for p in series]
            ax.plot([x for x, y in zip(xs, ys, strict=True) if y is not None],
                    [y for y in ys if y is not None], marker="o")
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return png_bytes(fig)


def _row(name: str, value: str, flag: bool | None) -> str:
    mark = {True: "<b style='color:#b00'>drift</b>", False: "ok", None: ""}[flag]
    return f"<tr><td>{name}</td><td>{html.escape(value)}</td><td>{mark}</td></tr>"


def to_html(res: dict) -> str:
    """The monitor result as an HTML page: verdict, signal table, time series, drifted inputs."""
    e = html.escape
    s = res.get("signals", {})
    rows = []
    if "embedding_mmd" in s:
        m, d, n = s["embedding_mmd"], s["domain_classifier"], s["novel_terms"]
        rows += [_row("embedding MMD²", f"{m['mmd2']} (permutation p={m['p_value']})", m.get("drift")),
                 _row("domain classifier ROC AUC", f"{d['auc']} (random {d['random_auc']} at "
                      f"p{d.get('percentile', 95):g})", d.get("drift")),
                 _row("novel-term rate", f"{n['rate']} of {n['tokens']} words; top: "
                      + ", ".join(f"{w} ({c})" for w, c in n["top"][:10]), n.get("drift"))]
    if "perplexity" in s:
        p = s["perplexity"]
        rows.append(_row("input perplexity (median)", f"{p['ref_median']} -> {p['cur_median']} "
                         f"(Mann-Whitney p={p['p_value']})", None))
    if "output" in s:
        o = s["output"]
        rows.append(_row("output length (chars, median)", f"{o['length_chars']['ref_median']} -> "
                         f"{o['length_chars']['cur_median']}", None))
        if "parse_failures" in o:
            pf = o["parse_failures"]
            rows.append(_row("parse failures", f"{pf['value']} {pf['ci']} (n={pf['n']})", None))
    if "quality" in s:
        q = s["quality"]
        rows.append(_row("feedback quality", f"{q['current']['value']} {q['current']['ci']} "
                         f"(n={q['current']['n']}); baseline {q['baseline']} ({q['baseline_source']})",
                         q.get("drop") is not None and q["drop"] > res["thresholds"]["quality_drop"]))
    img = ""
    if res.get("series"):
        uri = png_data_uri(series_png(res["series"]))
        img = f"<h2>Over time</h2><img alt='signals over time' src='{uri}'>"
    drifted = "".join(
        f"<tr><td>{x['distance']}</td><td>{e(x['input'])}</td><td>{e(', '.join(x['novel_terms']))}"
        f"</td><td>{e(x['output'])}</td><td>{e(x['created'][:19])}</td></tr>"
        for x in res.get("most_drifted", []))
    verdict = {"drift": "DRIFT", "no_drift": "no drift", "insufficient_data": "no verdict"}[res["verdict"]]
    reasons = "".join(f"<li>{e(r)}</li>" for r in res["reasons"])
    w = res["window"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneloop drift report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .6em;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}table{{border-collapse:collapse}}</style>
</head><body><h1>Drift report: {e(verdict)}</h1>
<p>Window {e(w['spec'])} ({e(w['since'][:19])} to {e(w['until'][:19])}): {res['requests']} requests,
{res['feedback']} feedback; champion {e(str(res['champion']))}; reference
{e(str(res.get('reference', {}).get('source', '-')))}.</p><ul>{reasons}</ul>
<h2>Signals</h2><table><tr><th>signal</th><th>value</th><th></th></tr>{''.join(rows)}</table>
{img}<h2>Most drifted inputs</h2><p>Ranked by distance (1 - cosine) to the nearest training
input.</p><table><tr><th>distance</th><th>input</th><th>novel terms</th><th>output</th><th>time</th></tr>
{drifted}</table></body></html>
"""


def write_html(res: dict, path: str | Path) -> Path:
    """Write the report atomically; returns its path."""
    path = Path(path)
    atomic_write_text(path, to_html(res))
    return path
