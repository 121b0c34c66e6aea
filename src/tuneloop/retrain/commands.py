"""`tuneloop retrain | gate | loop`: re-tune on reviewed traffic, promote only on a significant win.

Heavy imports sit inside the commands so `tuneloop --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.config import load_config
from tuneloop.console import err, out, print_json
from tuneloop.monitor.commands import HtmlOpt, WindowOpt, print_monitor
from tuneloop.options import ConfigArg, JsonOpt, QuietOpt, SetOpt


def print_gate(d: dict) -> None:
    """The gate's decision with its reasons and where the evidence was written."""
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

    cfg = load_config(config, set_)
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
        print_gate(res["gate"])
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

    d = run_gate(load_config(config, set_), fresh, promote=not dry_run, quiet=quiet or json_)
    print_json(d) if json_ else print_gate(d)
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
    from tuneloop.retrain.loop import run_loop

    q = quiet or json_

    def report(stage: str, result: dict) -> None:
        if q:
            return
        if stage == "monitor":
            print_monitor(result)
            if not (result["drift"] or force):
                err.print("no drift: nothing to retrain")
        else:
            print_gate(result)

    res = run_loop(load_config(config, set_), window, force, html, q, report)
    if json_:
        print_json(res)
    if res["action"] == "kept_champion":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount retrain, gate and loop."""
    app.command("retrain")(retrain_cmd)
    app.command("gate")(gate_cmd)
    app.command("loop")(loop_cmd)
