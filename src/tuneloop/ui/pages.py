"""What each page shows, as plain data: the HTML templates draw it and /api/... returns it.

A page function returns a dict; its "charts" entry (SVG strings drawn here) is for the HTML
page only and is left out of the JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.ui import charts, evaluation
from tuneloop.ui import monitor as mon
from tuneloop.ui import review as rv
from tuneloop.ui.project import Project, read_json


def _champion(project: Project) -> dict[str, Any] | None:
    aliases = project.registry.aliases()
    return {"champion": aliases.get("champion"), "challenger": aliases.get("challenger")} if aliases else None


def overview(project: Project, store_ok: bool) -> dict[str, Any]:
    """Counts and latest state of every stage, with links."""
    runs = project.runs()
    status: dict[str, int] = {}
    for r in runs:
        status[r["status"]] = status.get(r["status"], 0) + 1
    evals = project.evals()
    headline = None
    if evals:
        res = read_json(evals[0]["path"] / "eval" / "eval.json")  # not the predictions: a headline
        m = res.get("primary_metric")
        syst = {
            k: (v.get("metrics", {}).get(m) or {}).get("value") for k, v in res.get("systems", {}).items()
        }
        base = {k: v for k, v in syst.items() if not k.startswith("finetuned") and v is not None}
        best = max(base, key=lambda k: base[k], default=None)
        headline = {
            "run": evals[0]["name"],
            "metric": m,
            "finetuned": syst.get("finetuned"),
            "best_baseline": best,
            "best_baseline_value": base.get(best) if best else None,
        }
    traffic = mon.totals(project.store) if store_ok else None
    decisions = project.decisions()
    return {
        "project": str(project.root),
        "config": str(project.config_file),
        "task": project.cfg.task.type,
        "model": project.cfg.model.name,
        "runs": {"total": len(runs), "by_status": status, "latest": runs[:5]},
        "registry": {"versions": len(project.registry.versions()), "aliases": project.registry.aliases()},
        "evaluation": headline,
        "traffic": traffic,
        "ratings": rv.agreement(project.store) if store_ok else None,
        "last_decision": decisions[0] if decisions else None,
    }


def runs(project: Project) -> dict[str, Any]:
    return {"runs": project.runs(), "dir": str(project.runs_dir)}


def run_charts(curves: dict[str, list]) -> dict[str, str]:
    """Loss (training and validation) and learning-rate curves of a run."""
    vals = [v for _, v in curves["loss"] + curves["val_loss"]]
    log_y = bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 20  # a loss falling by decades
    loss = charts.line_chart(
        [("train loss", curves["loss"]), ("val loss", curves["val_loss"])],
        title="loss",
        x_label="step",
        chart_id="loss-chart",
        log_y=log_y,
    )
    lr = charts.line_chart(
        [("learning rate", curves["lr"])], title="learning rate", x_label="step", chart_id="lr-chart"
    )
    return {"loss": loss, "lr": lr}


def run(project: Project, name: str) -> dict[str, Any]:
    d = project.run_detail(name)
    d["charts"] = run_charts(d["curves"])
    d["evaluated"] = any(e["name"] == name for e in project.evals())
    return d


def evaluation_page(
    project: Project, run_name: str | None, flt: str, page: int, query: str
) -> dict[str, Any]:
    evals = project.evals()
    if not evals:
        return {"runs": [], "run": None}
    names = [e["name"] for e in evals]
    if run_name and run_name not in names:
        raise TuneloopError(
            f"run {run_name!r} has no evaluation (eval/eval.json); evaluated runs: {', '.join(names[:10])}"
        )
    run_name = run_name or names[0]
    d = evaluation.page_data(project.run_path(run_name), flt, page, query)
    primary = d["systems"]["primary"]
    bars = [
        (
            r["system"],
            (r["metrics"].get(primary) or {}).get("value"),
            tuple((r["metrics"].get(primary) or {}).get("ci") or ()) or None,
        )
        for r in d["systems"]["rows"]
    ]
    ch = {"systems": charts.bar_chart(bars, title=f"{primary} by system (95% CI)")}
    curves = project.learning_curves()
    if curves and curves[0].get("points"):
        c = curves[0]
        m = c["metric"]
        pts = [(float(i), p["metrics"][m]["value"]) for i, p in enumerate(c["points"])]
        bands = [(float(i), *(p["metrics"][m].get("ci") or (None, None))) for i, p in enumerate(c["points"])]
        ch["curve"] = charts.line_chart(
            [(m, pts)],
            title=f"learning curve ({c['dir']})",
            x_label="training examples",
            x_labels=[str(p["train_examples"]) for p in c["points"]],
            bands=bands,
        )
        d["learning_curve"] = c
    if d["histograms"]:
        ch["histograms"] = {
            s: charts.bar_chart(
                [(f"{i / len(h):.1f}–{(i + 1) / len(h):.1f}", float(v), None) for i, v in enumerate(h)],
                title=f"{s}: per-example {primary}",
                width=300,
                bar_height=10,
            )
            for s, h in d["histograms"].items()
        }
    return d | {"runs": names, "run": run_name, "charts": ch}


def audit_result(report) -> dict[str, Any]:
    """An AuditReport as page data (findings with the records they name)."""
    unit = report.recommendation.get("token_unit", "tokens")
    return {
        "path": str(report.path),
        "records": report.records,
        "score": report.score,
        "recommendation": report.recommendation,
        "label_counts": report.label_counts,
        "findings": [
            {
                "check": f.check,
                "severity": f.severity,
                "summary": f.summary,
                "n": len(f.ids),
                "ids": f.ids[:50],
                "locations": f.locations[:10],
            }
            for f in report.findings
        ],
        "length_unit": unit,
        "length_histogram": length_bins(report.lengths),
    }


def length_bins(lengths: list[int], most: int = 16) -> list[tuple[str, int]]:
    """Counts of whole-number lengths in at most `most` bins of equal integer width."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // most))
    counts = [0] * ((hi - lo) // width + 1)
    for n in lengths:
        counts[(n - lo) // width] += 1
    return [
        (str(lo + i * width) if width == 1 else f"{lo + i * width}–{lo + (i + 1) * width - 1}", c)
        for i, c in enumerate(counts)
    ]


def data_charts(d: dict[str, Any]) -> dict[str, str]:
    out = {
        "lengths": charts.bar_chart(
            [(k, float(v), None) for k, v in d["length_histogram"]],
            title=f"length ({d['length_unit']} per record)",
            bar_height=12,
        )
    }
    if d["label_counts"]:
        out["labels"] = charts.bar_chart(
            [(k, float(v), None) for k, v in list(d["label_counts"].items())[:60]],
            title="examples per label",
            bar_height=12,
        )
    return out


def registry_page(project: Project) -> dict[str, Any]:
    reg = project.registry
    aliases = reg.aliases()
    rows = []
    for v in reg.versions():
        m = v.metrics
        ev = _version_eval(v.path)
        rows.append(
            {
                "id": v.id,
                "aliases": [a for a, x in aliases.items() if x == v.id],
                "created": v.created,
                "parent": v.parent,
                "method": (v.config.get("method") or {}).get("name"),
                "base_model": v.base_model,
                "data_hash": v.data_hash[:12],
                "val_loss": m.get("best_val_loss", m.get("val_loss")),
                "eval": ev,
                "note": v.note,
                "kind": v.kind,
            }
        )
    history = reg.history()[::-1]
    for h in history:
        ev = h.get("evidence") or {}
        h["reason"] = ev.get("reason") or ("gate: " + ev["decision"] if ev.get("decision") else "")
        h["by"] = ev.get("by", "")
    stack = reg.champion_stack()
    candidates = [r["id"] for r in rows[::-1] if "champion" not in r["aliases"]]
    return {
        "root": str(reg.root),
        "aliases": aliases,
        "versions": rows[::-1],
        "history": history,
        "rollback_to": stack[-2] if len(stack) > 1 else None,
        "promote_default": candidates[0] if candidates else None,
    }


def _version_eval(path: Path) -> dict[str, Any] | None:
    ev = read_json(path / "eval.json")
    m = ev.get("primary_metric")
    if not m:
        return None
    v = ev.get("systems", {}).get("finetuned", {}).get("metrics", {}).get(m) or {}
    return {"metric": m, "value": v.get("value"), "ci": v.get("ci")}


def version_page(project: Project, ref: str) -> dict[str, Any]:
    v = project.registry.get(ref)
    prov = read_json(v.path / "provenance.json")
    aliases = project.registry.aliases()
    return {
        "version": v.as_dict() | {"aliases": [a for a, x in aliases.items() if x == v.id]},
        "provenance": {
            k: prov.get(k) for k in ("source_run", "parent", "data_hash", "created", "note", "base_model")
        },
        "eval": _version_eval(v.path),
        "card": _model_card(v.path),
        "files": sorted(p.relative_to(v.path).as_posix() for p in v.path.rglob("*") if p.is_file())[:100],
        "history": [h for h in project.registry.history() if h.get("to") == v.id or h.get("from") == v.id][
            ::-1
        ],
    }


def _model_card(folder: Path) -> str | None:
    """The version's model card: its README.md, else one written from its files (the registry's
    own card writer, when this tuneloop has it)."""
    readme = folder / "README.md"
    if readme.is_file():
        return readme.read_text(encoding="utf-8", errors="replace")[:20000]
    try:
        from tuneloop.registry.card import model_card
    except ImportError:
        return None
    try:
        return model_card(folder)[:20000]
    except Exception:  # a card is a nicety: a version with odd files still shows its page
        return None


def monitor_page(project: Project, job, window_note: str, store_ok: bool) -> dict[str, Any]:
    mcfg = project.cfg.monitor
    traffic = mon.traffic(project.store) if store_ok else None
    history = mon.signal_history(project.loop_logs(), mcfg.model_dump())
    ch: dict[str, Any] = {}
    if traffic and traffic["series"]:
        labels = [p["label"] for p in traffic["series"]]

        def ser(key: str) -> list:
            return [(float(i), p[key]) for i, p in enumerate(traffic["series"]) if p[key] is not None]

        ch["requests"] = charts.line_chart(
            [("requests", ser("requests"))],
            title="requests per bucket",
            x_labels=labels,
            chart_id="requests-chart",
        )
        ch["errors"] = charts.line_chart(
            [("error rate", ser("error_rate"))], title="error rate", x_labels=labels
        )
        ch["latency"] = charts.line_chart(
            [("latency ms", ser("latency_ms"))], title="mean latency (ms)", x_labels=labels
        )
        ch["rating"] = charts.line_chart(
            [("rating", ser("rating"))], title="feedback rating (0–1)", x_labels=labels
        )
    hp, hl = history["points"], history["labels"]
    if hl:
        ch["mmd"] = charts.line_chart(
            [("MMD p-value", hp["mmd_p"])],
            title="embedding MMD p-value (drift below)",
            x_labels=hl,
            thresholds=[(mcfg.mmd_p_value, f"p = {mcfg.mmd_p_value}")],
        )
        rnd = [r["random_auc"] for r in history["rows"] if r.get("random_auc") is not None]
        thr = (max(rnd) if rnd else 0.5) + mcfg.domain_auc_margin
        ch["auc"] = charts.line_chart(
            [("domain AUC", hp["domain_auc"])],
            title="domain classifier AUC (drift above)",
            x_labels=hl,
            thresholds=[(thr, f"random + {mcfg.domain_auc_margin}")],
        )
        ch["novel"] = charts.line_chart(
            [("novel-term rate", hp["novel_rate"])],
            title="novel-term rate",
            x_labels=hl,
            thresholds=[(mcfg.novel_term_rate, str(mcfg.novel_term_rate))],
        )
        ch["quality"] = charts.line_chart(
            [("quality drop", hp["quality_drop"])],
            title="feedback quality drop",
            x_labels=hl,
            thresholds=[(mcfg.quality_drop, str(mcfg.quality_drop))],
        )
    state = job.as_dict() if job is not None else None  # one snapshot (the job may finish)
    result = job.result if state is not None and state["status"] == "done" else None
    if result and result.get("series"):
        s = result["series"]
        labels = [p["start"][5:16].replace("T", " ") for p in s]
        for key, title in (
            ("distance", "distance to nearest training input"),
            ("novel_rate", "novel-term rate"),
            ("perplexity", "input perplexity"),
            ("output_chars", "output length (chars)"),
        ):
            pts = [(float(i), p[key]) for i, p in enumerate(s) if p.get(key) is not None]
            if pts:
                ch[f"window_{key}"] = charts.line_chart([(key, pts)], title=title, x_labels=labels)
        q = [(float(i), p["quality"]["value"]) for i, p in enumerate(s) if p["quality"]["value"] is not None]
        if q:
            ch["window_quality"] = charts.line_chart(
                [("quality", q)],
                title="feedback quality (95% CI)",
                x_labels=labels,
                bands=[
                    (float(i), *p["quality"]["ci"])
                    for i, p in enumerate(s)
                    if p["quality"]["value"] is not None
                ],
            )
    return {
        "traffic": traffic,
        "history": history,
        "thresholds": mcfg.model_dump(),
        "job": state,
        "result": result,
        "window_note": window_note,
        "decisions": project.decisions(),
        "charts": ch,
    }
