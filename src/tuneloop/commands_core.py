"""Core commands: quickstart, train, generate, chat, export, config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import JsonOpt, QuietOpt, out, print_json

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config key, e.g. --set train.learning_rate=1e-4 (repeatable).")]

config_app = typer.Typer(help="Inspect and validate tuneloop.yaml.", no_args_is_help=True)


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of tuneloop.yaml (every key, its type, default and meaning)."""
    from tuneloop.config import json_schema

    sys.stdout.write(json_schema() + "\n")


@config_app.command("show")
def config_show(config: Annotated[Path, typer.Argument(help="tuneloop.yaml or its folder.")],
                set_: SetOpt = None) -> None:
    """Validate CONFIG and print it resolved (defaults filled in, paths made absolute)."""
    from tuneloop.config import load_config

    sys.stdout.write(load_config(config, set_).to_yaml())


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
    t.add_column("accuracy", justify="right")
    t.add_column("macro-F1", justify="right")
    for name, m in res["systems"].items():
        label = "base model, prompted with the labels" if name == "base" else "fine-tuned (LoRA)"
        t.add_row(label, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}")
    out.print(t)
    out.print(f"run folder: {res['run_dir']}")
    out.print(f"next: tuneloop generate {res['run_dir']} \"my card still hasn't arrived\"")


def train(
    config: Annotated[Path | None, typer.Argument(
        help="tuneloop.yaml (or its folder). Optional with --resume.")] = None,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print resolved config, data/token statistics and the measured cost "
        "estimate; do not train.")] = False,
    resume: Annotated[Path | None, typer.Option(
        help="Continue a run folder from its latest checkpoint.")] = None,
    nproc: Annotated[int, typer.Option(
        help="Processes for data-parallel training (DDP via torch.distributed).")] = 1,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Skip invalid records and report how many.")] = False,
    json_: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Fine-tune a model with LoRA (default), DoRA, IA3, prefix/prompt tuning or fully.

    Writes a run folder: config.yaml, metrics.jsonl, summary.json, adapter/ (safetensors),
    data.json (fingerprints), environment.json, checkpoints/. Ctrl-C saves a checkpoint;
    `--resume RUN` continues to the same final metrics as an uninterrupted run.
    Also works as `accelerate launch -m tuneloop train CONFIG`.
    """
    from tuneloop.config import load_config
    from tuneloop.errors import TuneloopError

    overrides = list(set_ or []) + (["data.skip_invalid=true"] if skip_invalid else [])
    if config is None and resume is None:
        raise TuneloopError("give a CONFIG (tuneloop.yaml) or --resume RUN_FOLDER")
    cfg = load_config(config if config is not None else Path(resume) / "config.yaml", overrides)
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        raise typer.Exit(_launch(nproc))
    if dry_run:
        from tuneloop.train.estimate import dry_run as do_dry_run

        res = do_dry_run(cfg)
        if json_:
            print_json(res)
        else:
            out.print_json(data=res)
        return
    from tuneloop.train.recipe import train as do_train

    run, summary = do_train(cfg, resume=resume, quiet=quiet or json_)
    if json_:
        print_json(summary)
    else:
        skipped = f", {summary.get('skipped', 0)} invalid records skipped" \
            if summary.get("skipped") else ""
        val = summary["val_loss"]
        val_text = "n/a (no validation split)" if val is None else f"{val:.4f}"
        out.print(f"done: {summary['steps']} steps, train loss {summary['train_loss']:.4f}, "
                  f"val loss {val_text}{skipped}\nrun folder: {run}")


def _launch(nproc: int) -> int:
    """Re-run this `train` command as N DDP processes (torch.distributed.run; gloo on CPU)."""
    args = sys.argv[sys.argv.index("train") + 1:]
    # Drop --nproc: the workers see LOCAL_RANK instead, and torchrun's own argument parser
    # would read "--nproc" as an ambiguous abbreviation of its --nproc-per-node.
    keep, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            keep.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "tuneloop", "train", *keep]
    return subprocess.call(cmd)


def generate(
    run: Annotated[Path, typer.Argument(help="A run folder from `tuneloop train`.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply.")] = 128,
    system: Annotated[str | None, typer.Option(help="Optional system message.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Reply to one message with the fine-tuned model (base + adapter)."""
    from tuneloop.records import Message
    from tuneloop.evaluate.runner import generate as gen
    from tuneloop.runs import load_run_model

    model, tok, cfg = load_run_model(run)
    msgs = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    if cfg.task.system_prompt and not system:
        msgs.insert(0, Message("system", cfg.task.system_prompt))
    reply = gen(model, tok, [msgs], max_new_tokens)[0]
    print_json({"reply": reply}) if json_ else out.print(reply, markup=False, highlight=False)


def chat(run: Annotated[Path, typer.Argument(help="A run folder from `tuneloop train`.")],
         max_new_tokens: Annotated[int, typer.Option(help="Longest reply.")] = 256) -> None:
    """Talk to the fine-tuned model in the terminal (empty line or Ctrl-D to quit)."""
    from tuneloop.records import Message
    from tuneloop.evaluate.runner import generate as gen
    from tuneloop.runs import load_run_model

    model, tok, cfg = load_run_model(run)
    history = [Message("system", cfg.task.system_prompt)] if cfg.task.system_prompt else []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append(Message("user", line))
        reply = gen(model, tok, [history], max_new_tokens)[0]
        history.append(Message("assistant", reply))
        out.print(f"model> {reply}", markup=False, highlight=False)


def export(run: Annotated[Path, typer.Argument(help="A run folder from `tuneloop train`.")],
           merge: Annotated[Path, typer.Option(
               "--merge", help="Output folder for merged safetensors + tokenizer.")],
           json_: JsonOpt = False) -> None:
    """Merge the adapter into the base weights; plain transformers loads the result.

    Checks parity: the largest logit difference between adapter and merged model must stay
    under the stated tolerance, else the export is reported as failed (exit 2).
    """
    from tuneloop.export.merge import export_merged

    res = export_merged(run, merge)
    if json_:
        print_json(res)
    else:
        out.print(f"wrote {res['out']}; max logit difference {res['max_logit_diff']:.2e} "
                  f"(tolerance {res['tolerance']:.0e})")


def register(app: typer.Typer) -> None:
    app.command()(quickstart)
    app.command()(train)
    app.command()(generate)
    app.command()(chat)
    app.command()(export)
    app.add_typer(config_app, name="config")

