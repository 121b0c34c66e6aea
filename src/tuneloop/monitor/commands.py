"""CLI for the loop after shipping: `monitor`, `retrain`, `gate` and `loop` (for cron)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import JsonOpt, QuietOpt, err, out, print_json

ConfigArg = Annotated[Path, typer.Argument(help="tuneloop.yaml or its folder.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config key, e.g. --set monitor.min_requests=50 (repeatable).")]
WindowOpt = Annotated[str | None, typer.Option(
    "--window", help="Traffic window ending now, e.g. 24h, 7d (default: monitor.window).")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also write an HTML drift report here.")]
PplOpt = Annotated[bool, typer.Option(
    "--perplexity/--no-perplexity", help="Score input perplexity under the champion (loads it).")]


def _cfg(config: Path, set_: list[str] | None):
    from tuneloop.config import load_config

    return load_config(config, set_)


def _print_monitor(res: dict) -> None:
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

    cfg = _cfg(config, set_)
    res = run_monitor(cfg, window, perplexity=perplexity, quiet=quiet or json_)
    if html:
        from tuneloop.monitor.report import write_html

        write_html(res, html)
        res["html"] = str(html)
    if json_:
        print_json(res)
    else:
        _print_monitor(res)
        if html:
            out.print(f"written: {html}")
    if res["drift"]:
        raise typer.Exit(1)


def _print_gate(d: dict) -> None:
    out.print(f"{d['challenger']} vs {d['champion']} ({d['metric']}):")
    for r in d["reasons"]:
        out.print(f"  - {r}")
    word = "promoted" if d["promoted"] else ("would promote" if d["decision"] == "promote" else "kept")
    out.print(f"decision: {d['decision']} ({word}); evidence: {d['record']}")


def retrain_cmd(config: ConfigArg = Path("."),
                gate: Annotated[bool, typer.Option(
                    "--gate/--no-gate", help="Run the champion/challenger gate after training.")] = True,
                set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Build the new data set (feedback corrections + retrain.fresh + a replay sample of the
    champion's training data), audit it, fine-tune from the champion's adapter, register the
    run as `challenger` and (unless --no-gate) run the gate.

    Exit codes: **0** promoted (or --no-gate), **1** challenger not promoted, **2** error.
    """
    from tuneloop.retrain.gate import run_gate
    from tuneloop.retrain.retrain import retrain

    cfg = _cfg(config, set_)
    res = retrain(cfg, quiet=quiet or json_)
    if not json_:
        c = res["data"]["counts"]
        out.print(f"challenger {res['challenger']} (from {res['parent']}): {c['train']} training rows "
                  f"({c['feedback']} feedback, {c['fresh']} fresh, {c['replay']} replay; "
                  f"{c['fresh_eval']} held out); audit dropped {res['audit']['dropped']}; "
                  f"{res['seconds']} s")
    if gate:
        res["gate"] = run_gate(cfg, quiet=quiet or json_)
    if json_:
        print_json(res)
    elif gate:
        _print_gate(res["gate"])
    if gate and not res["gate"]["promoted"]:
        raise typer.Exit(1)


def gate_cmd(config: ConfigArg = Path("."),
             fresh: Annotated[str | None, typer.Option(
                 help="Fresh eval file (default: the slice the challenger's retrain held out).")] = None,
             dry_run: Annotated[bool, typer.Option(
                 "--dry-run", help="Decide and record, but do not promote.")] = False,
             set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Champion vs challenger on the frozen (hash-pinned) eval set and the fresh slice; promote
    the challenger only if a paired test shows it better by retrain.margin on the fresh slice
    with no significant regression on the frozen set. The evidence goes to REGISTRY/decisions/.

    Exit codes: **0** promoted (or would be, with --dry-run), **1** kept the champion, **2** error.
    """
    from tuneloop.retrain.gate import run_gate

    d = run_gate(_cfg(config, set_), fresh, promote=not dry_run, quiet=quiet or json_)
    print_json(d) if json_ else _print_gate(d)
    if d["decision"] != "promote":
        raise typer.Exit(1)


def loop_cmd(config: ConfigArg = Path("."), window: WindowOpt = None, html: HtmlOpt = None,
             force: Annotated[bool, typer.Option(
                 "--force", help="Retrain even when the monitor finds no drift.")] = False,
             set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """One turn of the loop, for cron or a systemd timer: monitor; on drift, retrain from the
    champion and gate the challenger. Writes OUTPUT_DIR/loop/TIMESTAMP.json.

    Exit codes: **0** no drift, or drift and a challenger promoted; **1** drift but the champion
    kept (a person should look); **2** error.
    """
    import time

    from tuneloop.monitor.check import run_monitor
    from tuneloop.retrain.gate import run_gate
    from tuneloop.retrain.retrain import retrain
    from tuneloop.runs import write_json

    cfg = _cfg(config, set_)
    q = quiet or json_
    res: dict = {"monitor": run_monitor(cfg, window, quiet=q)}
    if html:
        from tuneloop.monitor.report import write_html

        write_html(res["monitor"], html)
    mon = res["monitor"]
    if not q:
        _print_monitor(mon)
    code = 0
    if mon["drift"] or force:
        res["retrain"] = retrain(cfg, quiet=q)
        res["gate"] = run_gate(cfg, quiet=q)
        code = 0 if res["gate"]["promoted"] else 1
        if not q:
            _print_gate(res["gate"])
    elif not q:
        err.print("no drift: nothing to retrain")
    res["action"] = ("promoted" if res.get("gate", {}).get("promoted") else
                     "kept_champion" if "gate" in res else "none")
    log = Path(cfg.output.dir) / "loop" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(log, res)
    res["log"] = str(log)
    if json_:
        print_json(res)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Mount monitor, retrain, gate and loop on the main app."""
    app.command("monitor")(monitor_cmd)
    app.command("retrain")(retrain_cmd)
    app.command("gate")(gate_cmd)
    app.command("loop")(loop_cmd)
