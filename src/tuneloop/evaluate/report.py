"""`tuneloop report`: one evaluation as self-contained HTML (plots embedded), Markdown and JSON.

Sections: systems x metrics with 95% intervals, paired comparisons, cost, learning curve,
confusion matrix, the worst errors with their inputs, human ratings, seed variance, and the
answers sampled during training (`train.sample_every`: RUN/samples.jsonl).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from tuneloop.errors import TuneloopError
from tuneloop.evaluate.plots import confusion_png, curve_png, png_data_uri, systems_png
from tuneloop.files import atomic_write_text, write_json
from tuneloop.train.samples import FILE as SAMPLES_FILE
from tuneloop.train.samples import read_samples


def read_eval(path: str | Path) -> tuple[dict, list[dict], Path]:
    """eval.json and predictions from a run folder or an eval folder."""
    p = Path(path)
    d = p / "eval" if (p / "eval" / "eval.json").exists() else p
    if not (d / "eval.json").exists():
        raise TuneloopError(f"{p}: no eval.json; run `tuneloop eval {p}` first")
    preds = []
    if (d / "predictions.jsonl").exists():
        preds = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines() if x]
    return json.loads((d / "eval.json").read_text()), preds, d


def fmt_metric(m: dict | None) -> str:
    """A metric as `value [lo, hi]` (3 decimals), or n/a."""
    if not m or m.get("value") is None:
        return "n/a"
    lo, hi = m["ci"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m['value']:.3f}"


def worst_errors(result: dict, preds: list[dict], system: str = "finetuned",
                 k: int = 10) -> list[dict]:
    """The system's k worst examples: confident wrong labels, or lowest text scores."""
    rows = [p for p in preds if p["system"] == system] or \
        [p for p in preds if p["system"] == next(iter(result["systems"]), None)]
    metric = result["primary_metric"]
    if result["task"] == "classification":
        wrong = [p for p in rows if not p.get("correct")]
        wrong.sort(key=lambda p: -(p.get("confidence") or 0))
        return wrong[:k]
    key = "f1" if metric == "f1" else metric
    scored = [p for p in rows if p.get(key) is not None]
    return sorted(scored, key=lambda p: p[key])[:k]


def build_report(run: str | Path, curve_dir: str | Path | None = None,
                 out: Path | None = None) -> dict:
    """Write report.html, report.md and report.json next to eval.json; returns their paths."""
    result, preds, d = read_eval(run)
    out = out or d / "report"
    out.mkdir(parents=True, exist_ok=True)
    curve = None
    if curve_dir:
        curve = json.loads((Path(curve_dir) / "curve.json").read_text())
    ratings_f = d / "review" / "ratings.json"
    ratings = json.loads(ratings_f.read_text()) if ratings_f.exists() else None
    errors = worst_errors(result, preds)
    who = "finetuned" if "finetuned" in result["systems"] else next(iter(result["systems"]), "")
    report = {"eval": result, "worst_errors": errors, "worst_errors_system": who,
              "curve": curve, "review": ratings,
              "samples": training_samples(read_samples(d.parent / SAMPLES_FILE))}
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    atomic_write_text(out / "report.html", to_html(report))
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md"),
            "json": str(out / "report.json")}


def training_samples(rows: list[dict]) -> dict | None:
    """samples.jsonl rows as {split, steps, prompts: [{id, prompt, reference, outputs}]}, each
    prompt's outputs in `steps` order ("" where a step lacks it); None without rows."""
    if not rows:
        return None
    steps = sorted({r["step"] for r in rows})
    prompts: dict[str, dict] = {}
    for r in rows:
        p = prompts.setdefault(str(r["id"]), {"id": str(r["id"]), "prompt": r["prompt"],
                                              "reference": r["reference"], "by_step": {}})
        p["by_step"][r["step"]] = r["output"]
    return {"split": rows[0].get("split", "validation"), "steps": steps,
            "prompts": [{"id": p["id"], "prompt": p["prompt"], "reference": p["reference"],
                         "outputs": [p["by_step"].get(s, "") for s in steps]}
                        for p in prompts.values()]}


def _md_cell(text: str, limit: int = 200) -> str:
    """Text fit for one Markdown table cell: one line, pipes escaped, shortened."""
    one = " ".join(str(text).split())
    one = one if len(one) <= limit else one[:limit - 1] + "…"
    return one.replace("|", "\\|") or "(empty)"


def metric_names(result: dict) -> list[str]:
    """Every metric any system of an eval result has, in first-seen order."""
    names: list[str] = []
    for s in result["systems"].values():
        names += [m for m in s["metrics"] if m not in names]
    return names


def markdown(rep: dict) -> str:
    """The report as Markdown (tables + lists; no images)."""
    r = rep["eval"]
    metrics = metric_names(r)
    lines = [f"# Evaluation: {r['task']} ({r['examples']} {r['split']} examples, "
             f"model {r['model']})", "", "## Systems (value [95% CI])", "",
             "| system | " + " | ".join(metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for name, s in r["systems"].items():
        lines.append(f"| {name} | " + " | ".join(fmt_metric(s["metrics"].get(m)) for m in metrics)
                     + " |")
    lines += ["", "## Comparisons (paired, same examples)", ""]
    lines += [f"- {c['verdict']} (diff {c['diff']:+.3f}, 95% CI [{c['ci'][0]:.3f}, "
              f"{c['ci'][1]:.3f}], {c['test']})" for c in r["comparisons"]] or ["- none"]
    lines += ["", "## Cost", "", "| system | latency s/example | tokens/query |", "|---|---|---|"]
    for name, s in r["systems"].items():
        c = s["cost"]
        lines.append(f"| {name} | {c.get('latency_s_per_example')} | "
                     f"{c.get('tokens_per_query')} |")
    if r.get("seed_variance"):
        lines += ["", "## Seed variance (fine-tuned)", ""]
        lines += [f"- {m}: mean {v['mean']:.3f}, sd {v['std']:.3f}, values {v['values']}"
                  for m, v in r["seed_variance"].items()]
    if rep.get("curve"):
        lines += ["", "## Learning curve", "", f"| train examples | {rep['curve']['metric']} |",
                  "|---|---|"]
        lines += [f"| {p['train_examples']} | {fmt_metric(p['metrics'][rep['curve']['metric']])} |"
                  for p in rep["curve"]["points"]]
    if rep.get("review"):
        lines += ["", "## Human review", ""]
        lines += [f"- {s}: mean rating {fmt_metric(v['mean_rating'])} over {v['n']} ratings"
                  for s, v in rep["review"]["systems"].items()]
    det = r.get("details", {})
    per = (det.get("finetuned") or next(iter(det.values()), {})).get("per_class")
    if per:
        lines += ["", "## Per class (finetuned, or the first system)", "",
                  "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | "
                  f"{v['support']} |" for k, v in per.items()]
    lines += ["", f"## Worst errors ({rep.get('worst_errors_system', 'finetuned')})", ""]
    for e in rep["worst_errors"]:
        inp = " ".join(str(e["input"]).split())[:300]
        lines.append(f"- **{e['id']}**: expected `{e['reference'][:120]}`, got "
                     f"`{str(e.get('generated') or e['prediction'])[:120]}`; input: {inp}")
    if rep.get("samples"):
        lines += _samples_md(rep["samples"])
    return "\n".join(lines) + "\n"


def _samples_md(smp: dict) -> list[str]:
    lines = ["", f"## Samples during training ({smp['split']} prompts, greedy)", ""]
    for p in smp["prompts"]:
        lines += [f"### {p['id']}", "", f"Prompt: {_md_cell(p['prompt'], 300)}", "",
                  "| step | output | = reference |", "|---|---|---|",
                  f"| reference | {_md_cell(p['reference'])} | |"]
        lines += [f"| {step} | {_md_cell(out)} | {'yes' if _same(out, p['reference']) else ''} |"
                  for step, out in zip(smp["steps"], p["outputs"], strict=True)]
        lines.append("")
    return lines


def _same(output: str, reference: str) -> bool:
    return " ".join(str(output).split()) == " ".join(str(reference).split())


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="{png_data_uri(png)}">'


def to_html(rep: dict) -> str:
    """Self-contained HTML: the Markdown sections as tables plus embedded PNG plots."""
    r = rep["eval"]
    metrics = metric_names(r)
    e = html.escape
    rows = "".join(f"<tr><th>{e(n)}</th>" + "".join(
        f"<td>{e(fmt_metric(s['metrics'].get(m)))}</td>" for m in metrics) + "</tr>"
        for n, s in r["systems"].items())
    parts = [f"<h1>Evaluation: {e(r['task'])}</h1><p>{r['examples']} {e(r['split'])} examples;"
             f" model {e(r['model'])}; 95% bootstrap intervals.</p>",
             "<h2>Systems</h2><table><tr><th>system</th>"
             + "".join(f"<th>{e(m)}</th>" for m in metrics) + f"</tr>{rows}</table>",
             _img(systems_png(r, r["primary_metric"]), "systems")]
    parts.append("<h2>Comparisons</h2><ul>" + "".join(
        f"<li>{e(c['verdict'])} (diff {c['diff']:+.3f}, CI [{c['ci'][0]:.3f}, "
        f"{c['ci'][1]:.3f}], {e(c['test'])})</li>" for c in r["comparisons"]) + "</ul>")
    parts.append("<h2>Cost</h2><table><tr><th>system</th><th>cost</th></tr>" + "".join(
        f"<tr><th>{e(n)}</th><td>{e(json.dumps(s['cost']))}</td></tr>"
        for n, s in r["systems"].items()) + "</table>")
    if r.get("seed_variance"):
        parts.append("<h2>Seed variance</h2><ul>" + "".join(
            f"<li>{e(m)}: mean {v['mean']:.3f}, sd {v['std']:.3f}</li>"
            for m, v in r["seed_variance"].items()) + "</ul>")
    if rep.get("curve"):
        parts.append("<h2>Learning curve</h2>" + _img(curve_png(rep["curve"]), "curve"))
    det = r.get("details", {})
    sysd = det.get("finetuned") or next(iter(det.values()), {})
    if "confusion" in sysd:
        parts.append("<h2>Confusion matrix</h2>" + _img(confusion_png(sysd["confusion"]),
                                                         "confusion"))
    if rep.get("review"):
        parts.append("<h2>Human review</h2><ul>" + "".join(
            f"<li>{e(s)}: {e(fmt_metric(v['mean_rating']))} (n={v['n']})</li>"
            for s, v in rep["review"]["systems"].items()) + "</ul>")
    who = e(rep.get("worst_errors_system", ""))
    parts.append(f"<h2>Worst errors ({who})</h2><table><tr><th>id</th><th>input</th>"
                 "<th>expected</th>"
                 "<th>output</th></tr>" + "".join(
                     f"<tr><td>{e(str(x['id']))}</td><td>{e(str(x['input'])[:600])}</td>"
                     f"<td>{e(x['reference'])}</td>"
                     f"<td>{e(str(x.get('generated') or x['prediction']))}</td></tr>"
                     for x in rep["worst_errors"]) + "</table>")
    if rep.get("samples"):
        parts.append(_samples_html(rep["samples"]))
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;"
             "font-size:13px;vertical-align:top}td.out{white-space:pre-wrap}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tuneloop report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _samples_html(smp: dict) -> str:
    """One table per prompt: the reference, then the output at each sampled step."""
    e = html.escape
    parts = [f"<h2>Samples during training</h2><p>The first {len(smp['prompts'])} "
             f"{e(smp['split'])} prompts, answered greedily at steps "
             f"{e(', '.join(map(str, smp['steps'])))}.</p>"]
    for p in smp["prompts"]:
        rows = "".join(f"<tr><th>{step}</th><td class='out'>{e(out)}</td>"
                       f"<td>{'yes' if _same(out, p['reference']) else ''}</td></tr>"
                       for step, out in zip(smp["steps"], p["outputs"], strict=True))
        parts.append(f"<h3>{e(p['id'])}</h3><p>{e(p['prompt'])}</p><table><tr><th>step</th>"
                     "<th>output</th><th>= reference</th></tr><tr><th>reference</th>"
                     f"<td class='out'>{e(p['reference'])}</td><td></td></tr>{rows}</table>")
    return "".join(parts)
