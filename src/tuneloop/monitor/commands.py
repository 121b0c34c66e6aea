"""`tuneloop monitor`: drift and quality of the served traffic against the training data.

Heavy imports sit inside the command so `tuneloop --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.config import load_config
from tuneloop.console import out, print_json
from tuneloop.options import ConfigArg, JsonOpt, QuietOpt, SetOpt

WindowOpt = Annotated[str | None, typer.Option(
    "--window", help="Traffic window ending now, e.g. 24h, 7d (default: monitor.window).")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also write an HTML drift report here.")]
PplOpt = Annotated[bool, typer.Option(
    "--perplexity/--no-perplexity", help="Score input perplexity under the champion (loads it).")]


def print_monitor(res: dict) -> None:
    """The monitor's verdict and each drift signal, one line each."""
    s = res["signals"]
    out.print(f"window {res['window']['spec']}: {res['requests']} requests, {res['feedback']} feedback; "
              f"champion {res['champion']}")
    if "embedding_mmd" in s:
        e, d, n = s["embedding_mmd"], s["domain_classifier"], s["novel_terms"]
        out.print(f"  embedding MMD² {e['mmd2']} p={e['p_value']}")
        out.print(f"  domain classifier AUC {d['auc']} (random {d['random_auc']})")
        out.print(f"  novel-term rate {n['rate']}: {', '.join(w for w, _ in n['top'][:8])}")
    if "perplexity" in s:
        p = s["perplexity"]
        out.print(f"  input perplexity median {p['ref_median']} -> {p['cur_median']} (p={p['p_value']})")
    if "output" in s and "parse_failures" in s["output"]:
        out.print(f"  parse failures {s['output']['parse_failures']['value']}")
    if "quality" in s:
        q = s["quality"]
        out.print(f"  feedback quality {q['current']['value']} {q['current']['ci']} "
                  f"(baseline {q['baseline']})")
    verdict = {"drift": "[red]DRIFT[/red]", "no_drift": "[green]no drift[/green]",
               "insufficient_data": "[yellow]no verdict[/yellow]"}[res["verdict"]]
    out.print(f"{verdict}" + "".join(f"\n  - {r}" for r in res["reasons"]))


def monitor_cmd(config: ConfigArg = Path("."), window: WindowOpt = None, html: HtmlOpt = None,
                perplexity: PplOpt = True, set_: SetOpt = None, json_: JsonOpt = False,
                quiet: QuietOpt = False) -> None:
    """Compare recent traffic with the champion's training data: input embedding drift (MMD
    with a permutation p-value; a domain classifier's ROC AUC against a random baseline),
    novel-term rate, input perplexity, output length and parse failures, and feedback quality
    over time. Thresholds come from the `monitor` section.

    Exit codes: **0** no drift (or too few requests for a verdict), **1** drift, **2** error.
    """
    from tuneloop.monitor.check import run_monitor

    cfg = load_config(config, set_)
    res = run_monitor(cfg, window, perplexity=perplexity, quiet=quiet or json_)
    if html:
        from tuneloop.monitor.report import write_html

        write_html(res, html)
        res["html"] = str(html)
    if json_:
        print_json(res)
    else:
        print_monitor(res)
        if html:
            out.print(f"written: {html}")
    if res["drift"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount `tuneloop monitor`."""
    app.command("monitor")(monitor_cmd)
