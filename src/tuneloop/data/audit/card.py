"""The data card: Markdown, self-contained HTML (inline SVG charts) and JSON of one audit."""

from __future__ import annotations

import html
import json
from typing import Any

from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.lengths import histogram
from tuneloop.data.audit.run import AuditReport

ICON = {"error": "✖", "warning": "▲", "info": "·"}


def to_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str)


SHOWN = 5  # locations per finding in the cards; --json lists up to 50


def _ids(ids: list[str], limit: int = 12) -> str:
    more = f" … (+{len(ids) - limit})" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def _own_id(loc: dict[str, str]) -> str:
    """' (id X)' when the record has its own id; a default id is the line, already shown."""
    return "" if loc["where"].rsplit(":", 1)[-1] == loc["id"] else f" (id {loc['id']})"


def _more(f: Finding) -> str:
    n = len(f.evidence.get("problems") or []) or len(set(f.ids))
    return f"… and {n - SHOWN} more (`--json` lists them)" if n > SHOWN else ""


def _md_code(text: str) -> str:
    return "`" + (text.replace("`", "'") or " ") + "`"


def to_markdown(report: AuditReport) -> str:
    """A data card a reviewer can read in a minute: score, findings, recommendation."""
    rec = report.recommendation
    lines = [f"# Data card: {report.path.name}", "",
             f"**{report.records} records · score {report.score}/100**", "",
             "## Findings", "", "| | check | records | what |", "|---|---|---|---|"]
    for f in report.findings:
        lines.append(f"| {ICON[f.severity]} {f.severity} | `{f.check}` | {len(f.ids)} | "
                     f"{f.summary.replace('|', '/')} |")
    if any(f.locations for f in report.findings):
        lines += ["", "## Records to look at", ""]
    for f in report.findings:
        if not f.locations:
            continue
        lines += [f"**{ICON[f.severity]} `{f.check}`**: {_ids(f.ids)}", ""]
        for loc in f.locations[:SHOWN]:
            problem = f" {loc['problem']}:" if loc.get("problem") else ""
            lines.append(f"- {_md_code(loc['where'])}{_own_id(loc)}{problem} "
                         f"{_md_code(loc['text'])}")
        lines += [f"- {_more(f)}"] if _more(f) else []
        lines.append("")
    lines += ["", "## Recommendation", "",
              f"- epochs **{rec['epochs']}**, learning rate **{rec['learning_rate']:g}**, "
              f"LoRA rank **{rec['lora_rank']}** (alpha {rec['lora_alpha']})",
              f"- {rec['usable_records']} usable records → ~{rec['training_tokens']:,} training "
              f"{rec['token_unit']}", f"- why: {rec['why']}", ""]
    if report.label_counts:
        lines += ["## Labels", "", "| label | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in report.label_counts.items()]
    return "\n".join(lines) + "\n"


def _bars_svg(pairs: list[tuple[str, int]], title: str, width: int = 640) -> str:
    """A horizontal bar chart as inline SVG (no plotting library, no external files)."""
    if not pairs:
        return ""
    top = max(v for _, v in pairs) or 1
    row, label_w = 16, 180
    h = row * len(pairs) + 24
    parts = [f'<svg width="{width}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="12" font-weight="bold">{html.escape(title)}</text>']
    for i, (k, v) in enumerate(pairs):
        y = 20 + i * row
        w = int((width - label_w - 50) * v / top)
        parts.append(f'<text x="{label_w - 4}" y="{y + 11}" text-anchor="end" font-size="11">'
                     f'{html.escape(str(k))[:28]}</text><rect x="{label_w}" y="{y}" width="{w}" '
                     f'height="{row - 3}" fill="#4a7bd0"/><text x="{label_w + w + 4}" '
                     f'y="{y + 11}" font-size="11">{v}</text>')
    return "".join(parts) + "</svg>"


def _histogram_pairs(lengths: list[int]) -> list[tuple[str, int]]:
    h = histogram(lengths)
    e = h["edges"]
    return [(f"{e[i]:g}–{e[i + 1]:g}", c) for i, c in enumerate(h["counts"])]


def _html_locations(f: Finding) -> str:
    """The first few records of a finding: file:line, what is wrong, and the text itself."""
    if not f.locations:
        return f"<br><small>{html.escape(_ids(f.ids))}</small>" if f.ids else ""
    items = "".join(
        f"<li><code>{html.escape(loc['where'])}</code>{html.escape(_own_id(loc))} "
        f"{html.escape(loc.get('problem', ''))} <code>{html.escape(loc['text'])}</code></li>"
        for loc in f.locations[:SHOWN])
    more = f"<li>{html.escape(_more(f).replace('`', ''))}</li>" if _more(f) else ""
    return f"<ul class='where'>{items}{more}</ul>"


def to_html(report: AuditReport) -> str:
    """One self-contained HTML page: the Markdown content plus a length and a label chart."""
    unit = report.recommendation.get("token_unit", "tokens")
    rows = "".join(
        f"<tr class='{f.severity}'><td>{ICON[f.severity]} {f.severity}</td>"
        f"<td><code>{html.escape(f.check)}</code></td><td>{len(f.ids)}</td>"
        f"<td>{html.escape(f.summary)}{_html_locations(f)}</td></tr>"
        for f in report.findings)
    rec: dict[str, Any] = report.recommendation
    charts = _bars_svg(_histogram_pairs(report.lengths), f"Length ({unit} per record)")
    charts += _bars_svg(list(report.label_counts.items())[:60], "Examples per label")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Data card: {html.escape(report.path.name)}</title><style>
body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:4px;
vertical-align:top;text-align:left}}.error td:first-child{{color:#b00}}
.warning td:first-child{{color:#a60}}.score{{font-size:2em;font-weight:bold}}
ul.where{{margin:.3em 0;padding-left:1.2em;font-size:.9em}}code{{word-break:break-all}}</style></head>
<body><h1>Data card: {html.escape(report.path.name)}</h1>
<p class="score">{report.score}/100</p><p>{report.records} records</p>
<h2>Findings</h2><table><tr><th></th><th>check</th><th>records</th><th>what</th></tr>{rows}
</table><h2>Recommendation</h2><p>epochs <b>{rec['epochs']}</b>, learning rate
<b>{rec['learning_rate']:g}</b>, LoRA rank <b>{rec['lora_rank']}</b>; {rec['usable_records']}
usable records, about {rec['training_tokens']:,} training {unit}.</p>
<p><small>{html.escape(rec['why'])}</small></p><h2>Charts</h2>{charts}</body></html>
"""
