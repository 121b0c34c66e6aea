"""Commands for workflows that span stages: `quickstart` and `curve`.

Heavy imports sit inside the commands so `tuneloop --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import out, print_json
from tuneloop.evaluate.commands import BootOpt, LimitOpt
from tuneloop.options import ConfigArg, JsonOpt, QuietOpt, SetOpt


def quickstart(set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Fine-tune the bundled SmolLM2-135M-Instruct on 10 banking77 intents and compare it
    with the prompted base model on a held-out test slice (a few minutes on a laptop CPU).

    Runs go to ./runs. Example: tuneloop quickstart --set train.epochs=1
    """
    from tuneloop.recipes.quickstart import run_quickstart

    overrides = [f"output.dir={Path.cwd() / 'runs'}"] + list(set_ or [])
    res = run_quickstart(overrides, quiet=quiet or json_)
    if json_:
        print_json(res)
        return
    from rich.table import Table

    t = Table(title=f"support-intents: {res['test_examples']} held-out messages")
    t.add_column("system")
    t.add_column("accuracy [95% CI]", justify="right")
    t.add_column("macro-F1", justify="right")
    for name, m in res["systems"].items():
        label = "base model, prompted with the labels" if name == "base" else "fine-tuned (LoRA)"
        lo, hi = m["accuracy_ci"]
        t.add_row(label, f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]", f"{m['macro_f1']:.3f}")
    out.print(t)
    sec = res["seconds"]
    out.print(f"wall time {sec['wall'] / 60:.1f} min: base model {sec['base_scoring_and_load']:.0f} s,"
              f" training {sec['train']:.0f} s ({res['train']['steps']} steps), fine-tuned "
              f"scoring {sec['finetuned_scoring']:.0f} s")
    out.print(f"run folder: {res['run_dir']}")
    out.print(f"next: tuneloop generate {res['run_dir']} \"my card still hasn't arrived\"")


def curve_cmd(
    config: ConfigArg = Path("."),
    sizes: Annotated[str, typer.Option(help="Training-set sizes, e.g. 50,100,200,400.")]
    = "50,100,200,400",
    limit: LimitOpt = None, bootstrap: BootOpt = 1000,
    set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Learning curve: one fine-tune per nested training subset, the metric (95% CI) against
    the number of examples; writes curve.json and curve.png."""
    from tuneloop.recipes.curve import parse_sizes, run_curve

    res = run_curve(config, parse_sizes(sizes), limit, set_, bootstrap, quiet=quiet or json_)
    if json_:
        print_json(res)
        return
    from tuneloop.evaluate.report import fmt_metric

    for p in res["points"]:
        out.print(f"{p['train_examples']:>6} examples: {res['metric']} "
                  f"{fmt_metric(p['metrics'][res['metric']])}")
    out.print(f"written: {res['curve_dir']}/curve.json, curve.png")


def register(app: typer.Typer) -> None:
    """Mount `quickstart` and `curve`."""
    app.command()(quickstart)
    app.command("curve")(curve_cmd)
