"""The training recipe, top to bottom: setup -> fit -> save -> cleanup.

Built on Accelerate, so the same code runs on a laptop CPU (bf16 autocast where the CPU has
AMX), one GPU, or `accelerate launch` / `tuneloop train --nproc N` with DDP (`--fsdp`: FSDP2,
which on CPU tuneloop applies itself, see step.fsdp_on_cpu). Each optimizer step is
train/step.py's `train_step`, the one the cost probes measure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, set_seed

from tuneloop.config import Config
from tuneloop.console import err
from tuneloop.data.load import Splits, load_splits
from tuneloop.errors import TuneloopError
from tuneloop.files import write_json
from tuneloop.models.load import Placement, chat_tokenizer, choose_placement, resolve_model
from tuneloop.models.tokens import Encoded, EncodeReport, encode_all
from tuneloop.records import fingerprint
from tuneloop.runs import environment, new_run_dir
from tuneloop.train import checkpoint
from tuneloop.train.batches import BatchPlan, micro_batch, plan_for, total_steps
from tuneloop.train.loss import TargetLoss
from tuneloop.train.methods import count_parameters, load_base
from tuneloop.train.progress import MetricsLog, progress_bar, truncate_metrics
from tuneloop.train.samples import sampler_for
from tuneloop.train.step import (
    accelerator_for,
    fsdp_on_cpu,
    optimizer_for,
    parallelism,
    prepare_model,
    shard,
    sharded,
    train_step,
    validation_loss,
)


@dataclass
class LoopState:
    """Everything besides tensors that a resume must restore."""

    step: int = 0
    tokens: int = 0
    positions: int = 0  # tokens plus padding: what the model computed
    elapsed: float = 0.0
    best_val: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    last_val: float | None = None
    history: list = field(default_factory=list)


@dataclass
class Recipe:
    """What setup builds for fit, save and cleanup."""

    cfg: Config
    acc: Any  # accelerate.Accelerator
    placement: Placement
    splits: Splits
    tok: Any
    train_items: list[Encoded]
    val_items: list[Encoded]
    reports: dict[str, EncodeReport]
    model: Any  # prepared by the Accelerator
    loss_fn: TargetLoss
    optimizer: Any
    scheduler: Any
    plan: BatchPlan
    steps: int
    params: tuple[int, int]  # (trainable, total)
    run: Path
    state: LoopState


@dataclass
class Fit:
    """How fitting ended."""

    train_loss: float | None = None
    stopped_early: bool = False
    best_weights: dict | None = None  # trainable weights at the best validation loss


def train(cfg: Config, resume: Path | None = None, quiet: bool = False) -> tuple[Path, dict]:
    """Fine-tune per `cfg`; returns (run folder, summary). `resume` continues a run folder."""
    r = setup(cfg, resume)
    out = fit(r, quiet)
    summary = save(r, out)
    cleanup(r)
    return r.run, summary


def setup(cfg: Config, resume: Path | None) -> Recipe:
    """Data, tokens, model, optimizer, schedule and run folder; restores a checkpoint on resume."""
    # why: transformers.optimization imports peft, whose import writes os.environ
    # (TORCHINDUCTOR_CACHE_DIR); importing this module must change nothing process-wide.
    from transformers import get_cosine_schedule_with_warmup

    if resume:  # before the minutes of setup: a resume needs a checkpoint
        checkpoint.require(Path(resume) / "checkpoints")
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    acc = accelerator_for(placement)
    if resume and sharded(acc):
        raise TuneloopError(f"--resume {resume}: resuming is not wired for sharded parameters "
                            "(FSDP / ZeRO-3); resume without --fsdp (DDP or one process)")
    set_seed(cfg.seed)
    splits = load_splits(cfg)
    model_path = resolve_model(cfg.model.name) if acc.is_main_process else None
    acc.wait_for_everyone()  # the main process converts a GGUF once; the others then read it
    model_path = model_path or resolve_model(cfg.model.name)
    tok = chat_tokenizer(model_path)
    train_items, train_rep = encode_all(tok, splits.train, cfg.model.max_seq_len, cfg.train.loss_on)
    val_items, val_rep = encode_all(tok, splits.validation, cfg.model.max_seq_len, cfg.train.loss_on)
    model = prepare_model(load_base(model_path, placement, cfg.method), cfg.method, placement,
                          cfg.train, cfg.model.max_seq_len)
    loss_fn = TargetLoss(model)  # before acc.prepare: it hooks the unwrapped decoder
    if cfg.train.packing and not loss_fn.selective:
        raise TuneloopError(f"train.packing does not work with method {cfg.method.name!r} (its "
                            "virtual tokens would span packed examples); set train.packing: false")
    params = count_parameters(model)
    cpu_fsdp = fsdp_on_cpu(acc)
    if cpu_fsdp:
        model = shard(model, acc)  # before the optimizer: it must hold the shards
    optimizer = optimizer_for(model, cfg.train)
    plan = plan_for(cfg, train_items, acc.num_processes, acc.process_index)
    steps = total_steps(cfg, plan)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * steps), steps)
    if cpu_fsdp:  # the model stays as fully_shard made it: on CPU, prepare would add DDP
        optimizer = acc.prepare(optimizer)
    else:
        model, optimizer = acc.prepare(model, optimizer)
    r = Recipe(cfg, acc, placement, splits, tok, train_items, val_items,
               {"train": train_rep, "validation": val_rep}, model, loss_fn, optimizer, scheduler,
               plan, steps, params, _run_folder(cfg, resume, acc), LoopState())
    if resume:
        loop, used, skipped = checkpoint.restore(r.run / "checkpoints", acc.unwrap_model(model),
                                                 optimizer, scheduler)
        for why in skipped if acc.is_main_process else ():
            err.print(f"warning: skipping a corrupt checkpoint: {why}; resuming from {used}",
                      style="yellow", highlight=False, markup=False)
        r.state = LoopState(**loop)
        truncate_metrics(r.run / "metrics.jsonl", r.state.step)
    elif acc.is_main_process:
        _write_run_files(r)
    return r


def fit(r: Recipe, quiet: bool) -> Fit:
    """Optimizer steps until the plan (or early stopping) ends; checkpoints, evaluates, samples, logs."""
    cfg, acc, state = r.cfg, r.acc, r.state
    samples = sampler_for(cfg, acc, r.run, r.splits, r.tok, state.step)  # train.sample_every
    if samples:
        samples.at(r.model, state.step)  # step 0: the base model's answers
    log = MetricsLog(r.run / "metrics.jsonl", acc.is_main_process)
    bar, task = progress_bar(acc.is_main_process and not quiet, r.steps, state.step)
    t0 = time.perf_counter() - state.elapsed
    keep_checkpoints = not sharded(acc)
    if not keep_checkpoints and acc.is_main_process and r.steps >= cfg.train.save_every:
        err.print("checkpoints are skipped: the parameters and optimizer state are sharded "
                  "across processes (FSDP / ZeRO-3), and gathering them is not wired yet")
    out = Fit()
    r.model.train()
    rng_at_step = None
    try:
        while state.step < r.steps:
            rng_at_step = checkpoint.rng_state()
            batches, tokens, positions = _step_batches(r)
            out.train_loss, grad_norm = train_step(r.model, r.loss_fn, batches, r.optimizer,
                                                   r.scheduler, acc, cfg.train.max_grad_norm)
            state.step += 1
            rng_at_step = None  # the step is complete
            state.tokens += tokens * acc.num_processes
            state.positions += positions * acc.num_processes
            state.elapsed = time.perf_counter() - t0
            tps = state.tokens / max(state.elapsed, 1e-9)
            lr = r.scheduler.get_last_lr()[0]
            log.write({"step": state.step,
                       "epoch": round(r.plan.epoch_of(state.step * cfg.train.grad_accum), 4),
                       "loss": out.train_loss, "lr": lr, "grad_norm": grad_norm,
                       "tokens_per_s": tps, "elapsed_s": round(state.elapsed, 3)})
            if bar:
                bar.update(task, completed=state.step, loss=out.train_loss, lr=lr, tps=tps)
            if r.val_items and (state.step % cfg.train.eval_every == 0 or state.step == r.steps):
                _evaluate(r, log, out)
            if samples:
                samples.at(r.model, state.step)
            if acc.is_main_process and keep_checkpoints and (
                    state.step % cfg.train.save_every == 0 or out.stopped_early):
                _checkpoint(r)
            if out.stopped_early:
                break
        if samples:
            samples.at(r.model, state.step, last=True)
    except KeyboardInterrupt:
        _save_interrupted(r, rng_at_step)
        raise
    finally:
        if bar:
            bar.stop()
        log.close()
    return out


def save(r: Recipe, out: Fit) -> dict:
    """Write the adapter (or full model) and summary.json; returns the summary."""
    cfg, state, acc = r.cfg, r.state, r.acc
    unwrapped = acc.unwrap_model(r.model)
    if out.best_weights is not None:
        checkpoint.load_trainable(unwrapped, out.best_weights)
    distributed = parallelism(acc, r.model)
    # FSDP2 shards are gathered whole on every process (a collective), then saved by one.
    whole = {"state_dict": checkpoint.trainable_state(unwrapped)} if distributed == "fsdp2" else {}
    trainable, total_params = r.params
    reports = r.reports
    summary = {
        "run_dir": str(r.run), "method": cfg.method.name, "model": cfg.model.name,
        "steps": state.step, "planned_steps": r.steps,
        "epochs": round(r.plan.epoch_of(state.step * cfg.train.grad_accum), 3),
        "train_loss": out.train_loss,
        "val_loss": state.last_val, "val_ppl": math.exp(state.last_val) if state.last_val else None,
        "best_val_loss": None if math.isinf(state.best_val) else state.best_val,
        "best_step": state.best_step, "stopped_early": out.stopped_early,
        "weights": "best" if out.best_weights is not None else "final",
        "tokens_seen": state.tokens, "train_seconds": round(state.elapsed, 2),
        "tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
        "padding_fraction": round(1 - state.tokens / max(state.positions, 1), 4),
        "trainable_params": trainable, "total_params": total_params,
        "examples": {"train": len(r.train_items), "validation": len(r.val_items)},
        "skipped": len(r.splits.skipped),
        "truncated": {k: rep.truncated for k, rep in reports.items()},
        "device": r.placement.device, "precision": r.placement.precision,
        "processes": acc.num_processes, "distributed": distributed,
        "seed": cfg.seed}
    if acc.is_main_process:
        target = r.run / ("model" if cfg.method.name == "full" else "adapter")
        unwrapped.save_pretrained(target, safe_serialization=True, **whole)
        write_json(r.run / "summary.json", summary)
    acc.wait_for_everyone()
    return summary


def cleanup(r: Recipe) -> None:
    """Detach the loss hook and end the Accelerator's tracking (the process group stays)."""
    r.loss_fn.remove()
    r.acc.end_training()


def _run_folder(cfg: Config, resume: Path | None, acc) -> Path:
    """The resumed folder, or a new one made by the main process and shared with the others."""
    run = Path(resume) if resume else (new_run_dir(cfg) if acc.is_main_process else None)
    if acc.num_processes > 1:
        run = Path(broadcast_object_list([str(run) if run else None])[0])
    return run


def _write_run_files(r: Recipe) -> None:
    """config.yaml, environment.json, data.json and the tokenizer: what the run started from."""
    cfg, splits = r.cfg, r.splits
    (r.run / "config.yaml").write_text(cfg.to_yaml())
    write_json(r.run / "environment.json",
               environment(r.placement) | {"processes": r.acc.num_processes})
    write_json(r.run / "data.json", {
        "format": splits.format, "counts": splits.describe(), "skipped": splits.skipped[:50],
        "fingerprint": {"train": fingerprint(splits.train),
                        "validation": fingerprint(splits.validation),
                        "test": fingerprint(splits.test)},
        "tokens": {k: rep.as_dict() for k, rep in r.reports.items()}})
    r.tok.save_pretrained(r.run / "tokenizer")


def _step_batches(r: Recipe) -> tuple[list[dict[str, torch.Tensor]], int, int]:
    """This process's micro-batches for the next step, on its device; and their tokens, positions."""
    ga = r.cfg.train.grad_accum
    tokens, positions, batches = 0, 0, []
    for micro in range(ga):
        items = [r.train_items[i] for i in r.plan.indices(r.state.step * ga + micro)]
        tokens += sum(len(e.input_ids) for e in items)
        batch = micro_batch(items, r.tok.pad_token_id, r.cfg)
        positions += batch["input_ids"].numel()
        batches.append({k: v.to(r.acc.device) for k, v in batch.items()})
    return batches, tokens, positions


def _evaluate(r: Recipe, log: MetricsLog, out: Fit) -> None:
    """Validation loss; tracks the best weights and early stopping."""
    state, patience = r.state, r.cfg.train.early_stopping_patience
    val = validation_loss(r.model, r.loss_fn, r.val_items, r.cfg.eval.batch_size,
                          r.tok.pad_token_id, r.acc)
    state.last_val = val
    log.write({"step": state.step, "val_loss": val, "val_ppl": math.exp(min(val, 50))})
    if val < state.best_val - 1e-6:
        state.best_val, state.best_step, state.bad_evals = val, state.step, 0
        if patience:
            out.best_weights = checkpoint.trainable_state(r.acc.unwrap_model(r.model))
    else:
        state.bad_evals += 1
        out.stopped_early = bool(patience and state.bad_evals >= patience)


def _checkpoint(r: Recipe) -> None:
    checkpoint.save(r.run / "checkpoints", r.state.step, r.acc.unwrap_model(r.model),
                    r.optimizer, r.scheduler, r.state.__dict__)


def _save_interrupted(r: Recipe, rng_at_step: dict | None) -> None:
    """On Ctrl-C, checkpoint where the last completed step left off, so a resume replays the rest.

    Inside a step (`rng_at_step` given) the RNG is first put back to where the step began, so the
    replayed step draws the same dropout masks. If the update was already applied (the
    scheduler has moved past the last logged step) no consistent checkpoint can be written:
    the last periodic one stays the latest.
    """
    if not r.acc.is_main_process:
        return
    if sharded(r.acc):
        err.print(f"Interrupted at step {r.state.step}; no checkpoint: the parameters are sharded "
                  "across processes (FSDP / ZeRO-3), and gathering them is not wired yet")
        return
    if r.scheduler.last_epoch > r.state.step:
        err.print(f"Interrupted after step {r.state.step + 1} was applied but not recorded; "
                  f"resume with `tuneloop train --resume {r.run}` (from the last checkpoint)")
        return
    if rng_at_step is not None:
        checkpoint.set_rng_state(rng_at_step)
    _checkpoint(r)
    err.print(f"Interrupted at step {r.state.step}; resume with `tuneloop train --resume {r.run}`")
