"""`tuneloop train`: parse, call the training recipe, print.

Heavy imports (torch, transformers) sit inside the command so `tuneloop --help` stays fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import out, print_json
from tuneloop.errors import TuneloopError
from tuneloop.options import JsonOpt, QuietOpt, SetOpt


def train(
    config: Annotated[Path | None, typer.Argument(
        help="tuneloop.yaml or the folder holding it (default: the current folder; with --resume, "
             "the run's own config.yaml).", show_default=False)] = None,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print resolved config, data/token statistics and the measured cost "
        "estimate; do not train.")] = False,
    resume: Annotated[Path | None, typer.Option(
        help="Continue a run folder from its latest checkpoint.")] = None,
    nproc: Annotated[int, typer.Option(
        help="Processes for data-parallel training (DDP via torch.distributed).")] = 1,
    fsdp: Annotated[bool, typer.Option(
        "--fsdp", help="With --nproc N: shard parameters, gradients and optimizer state across "
        "the processes (FSDP2) instead of keeping a full copy in each (DDP).")] = False,
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

    overrides = list(set_ or []) + (["data.skip_invalid=true"] if skip_invalid else [])
    if config is None:
        config = Path(resume) / "config.yaml" if resume is not None else Path(".")
    cfg = load_config(config, overrides)
    if fsdp and nproc < 2 and "LOCAL_RANK" not in os.environ:
        raise TuneloopError("--fsdp shards the model across processes: add --nproc 2 (or more)")
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        raise typer.Exit(_launch(nproc, fsdp))
    if dry_run:
        from tuneloop.train.estimate import dry_run as do_dry_run

        res = do_dry_run(cfg)
        if json_:
            print_json(res)
        else:
            out.print_json(data=res)
        return
    from tuneloop.train.recipe import train as do_train

    if resume is not None and not Path(resume).is_dir():
        raise TuneloopError(f"--resume {resume}: no such run folder")
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


def _launch(nproc: int, fsdp: bool = False) -> int:
    """Re-run this `train` command as N DDP processes (torch.distributed.run; gloo on CPU).

    `fsdp` asks for FSDP2 in Accelerate's own words (ACCELERATE_USE_FSDP, FSDP_VERSION), which
    the workers inherit: Accelerate acts on them on GPUs, tuneloop itself on CPU.
    """
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
    env = {"FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", **os.environ,  # each decoder layer
           "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"} if fsdp else None
    return subprocess.call(cmd, env=env)


def register(app: typer.Typer) -> None:
    """Mount `tuneloop train`."""
    app.command()(train)
