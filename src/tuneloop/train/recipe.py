"""The training recipe, top to bottom: setup -> train -> save -> cleanup.

Built on Accelerate, so the same code runs on a laptop CPU (bf16 autocast where the CPU has
AMX), one GPU, or `accelerate launch` / `tuneloop train --nproc N` with DDP.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneloop.config import Config
from tuneloop.data.load import load_splits
from tuneloop.records import fingerprint
from tuneloop.errors import TuneloopError
from tuneloop.models.load import choose_placement, load_tokenizer, resolve_model
from tuneloop.models.tokens import IGNORE, Encoded, encode_all, ensure_template
from tuneloop.runs import environment, new_run_dir, write_json
from tuneloop.train import checkpoint
from tuneloop.train.batches import BatchPlan, collate, eval_batches
from tuneloop.train.cpu.prepare import prepare_cpu_model, release_freed_memory
from tuneloop.train.loss import TargetLoss
from tuneloop.train.methods import count_parameters, load_base, wrap
from tuneloop.train.packing import collate_packed, use_packed_attention


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


def total_steps(cfg: Config, plan: BatchPlan) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * plan.per_epoch / cfg.train.grad_accum))


def micro_batch(items: list[Encoded], pad_id: int, cfg: Config) -> dict[str, torch.Tensor]:
    """One micro-batch: packed rows (train.packing) or right-padded rows."""
    if cfg.train.packing:
        return collate_packed(items)
    return collate(items, pad_id)


def validation_loss(model, loss_fn: TargetLoss, items: list[Encoded], batch_size: int, pad_id: int,
                    accelerator) -> float:
    """Token-weighted mean loss on assistant tokens over the whole validation set."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device)
    shard = items[accelerator.process_index::accelerator.num_processes]
    with torch.no_grad():
        for batch in eval_batches(shard, batch_size, pad_id):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                loss_sum, n = loss_fn(model, batch)
            total += torch.stack([loss_sum.float(), n.float()])
    model.train()
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1].clamp(min=1)).item()


def train(cfg: Config, resume: Path | None = None, quiet: bool = False) -> tuple[Path, dict]:
    """Fine-tune per `cfg`; returns (run folder, summary). `resume` continues a run folder."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    # ---- setup -----------------------------------------------------------------------------
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    # Accelerate keeps its precision in a process-wide singleton; a second train() in the same
    # process with another precision (fp32 then bf16) would be refused. The process group
    # (PartialState) is kept, so DDP is unaffected.
    AcceleratorState._reset_state()
    acc = Accelerator(cpu=placement.device == "cpu", mixed_precision=placement.mixed_precision)
    set_seed(cfg.seed)
    splits = load_splits(cfg)
    model_path = resolve_model(cfg.model.name) if acc.is_main_process else None
    acc.wait_for_everyone()
    model_path = model_path or resolve_model(cfg.model.name)
    tok = load_tokenizer(model_path)
    ensure_template(tok)
    train_items, train_rep = encode_all(tok, splits.train, cfg.model.max_seq_len, cfg.train.loss_on)
    val_items, val_rep = encode_all(tok, splits.validation, cfg.model.max_seq_len, cfg.train.loss_on)
    model = wrap(load_base(model_path, placement, cfg.method), cfg.method)
    if cfg.train.packing:
        # Otherwise the model's own attention isolates the examples through a block-diagonal
        # mask it builds from the restarting position_ids: the same numbers, more compute.
        use_packed_attention(model, cfg.model.max_seq_len)
    if placement.device == "cpu":
        prepare_cpu_model(model, placement.precision)
    if cfg.train.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and restores the RNG for dropout.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_fn = TargetLoss(model)  # before acc.prepare: it hooks the unwrapped decoder
    if cfg.train.packing and not loss_fn.selective:
        raise TuneloopError(f"train.packing does not work with method {cfg.method.name!r} (its "
                            "virtual tokens would span packed examples); set train.packing: false")
    trainable, total_params = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate,
                                  weight_decay=cfg.train.weight_decay)
    plan = BatchPlan(len(train_items), cfg.train.batch_size, acc.num_processes,
                     acc.process_index, cfg.seed,
                     lengths=[len(e.input_ids) for e in train_items]
                     if cfg.train.group_by_length and not cfg.train.packing else None)
    steps = total_steps(cfg, plan)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * steps), steps)
    model, optimizer = acc.prepare(model, optimizer)
    run = Path(resume) if resume else (new_run_dir(cfg) if acc.is_main_process else None)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        run = Path(broadcast_object_list([str(run) if run else None])[0])
    state = LoopState()
    if resume:
        ckpt = checkpoint.latest(run / "checkpoints")
        if ckpt is not None:
            state = LoopState(**checkpoint.load(ckpt, acc.unwrap_model(model), optimizer, scheduler))
            _truncate_metrics(run / "metrics.jsonl", state.step)
    elif acc.is_main_process:
        (run / "config.yaml").write_text(cfg.to_yaml())
        write_json(run / "environment.json", environment(placement) | {"processes": acc.num_processes})
        write_json(run / "data.json", {
            "format": splits.format, "counts": splits.describe(), "skipped": splits.skipped[:50],
            "fingerprint": {"train": fingerprint(splits.train),
                            "validation": fingerprint(splits.validation),
                            "test": fingerprint(splits.test)},
            "tokens": {"train": train_rep.as_dict(), "validation": val_rep.as_dict()}})
        tok.save_pretrained(run / "tokenizer")

    # ---- train -----------------------------------------------------------------------------
    log = _Logger(run / "metrics.jsonl", acc.is_main_process)
    best_weights = None
    ga = cfg.train.grad_accum
    show = acc.is_main_process and not quiet
    bar, task = _progress(show, steps, state.step)
    t0 = time.perf_counter() - state.elapsed
    model.train()
    stopped_early = False
    train_loss = None
    in_step, rng_at_step = False, None
    try:
        while state.step < steps:
            rng_at_step, in_step = checkpoint.rng_state(), True
            tokens, positions, batches = 0, 0, []
            for micro in range(ga):
                items = [train_items[i] for i in plan.indices(state.step * ga + micro)]
                tokens += sum(len(e.input_ids) for e in items)
                batch = micro_batch(items, tok.pad_token_id, cfg)
                positions += batch["input_ids"].numel()
                batches.append({k: v.to(acc.device) for k, v in batch.items()})
            # Token-weighted over the whole optimizer step (every micro-batch, every process):
            # N processes with global batch B then follow the same trajectory as one with B.
            n_step = sum((b["labels"][:, 1:] != IGNORE).sum() for b in batches).float()
            if acc.num_processes > 1:
                n_step = acc.reduce(n_step, "sum")
            n_step = n_step.clamp(min=1)
            step_sum = torch.zeros((), device=acc.device)
            for micro, batch in enumerate(batches):
                sync = nullcontext() if micro == ga - 1 else acc.no_sync(model)
                with sync:
                    loss_sum, _ = loss_fn(model, batch)
                    # DDP averages gradients over processes; scale back to a global token sum.
                    acc.backward(loss_sum * acc.num_processes / n_step)
                step_sum += loss_sum.detach().float()
            grad_norm = None
            if cfg.train.max_grad_norm:
                grad_norm = float(acc.clip_grad_norm_(params, cfg.train.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if placement.device == "cpu":
                release_freed_memory()
            state.step += 1
            in_step = False
            state.tokens += tokens * acc.num_processes
            state.positions += positions * acc.num_processes
            state.elapsed = time.perf_counter() - t0
            train_loss = (acc.reduce(step_sum, "sum") / n_step).item()
            lr = scheduler.get_last_lr()[0]
            log.write({"step": state.step, "epoch": round(plan.epoch_of(state.step * ga), 4),
                       "loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                       "tokens_per_s": state.tokens / max(state.elapsed, 1e-9),
                       "elapsed_s": round(state.elapsed, 3)})
            if bar:
                bar.update(task, completed=state.step, loss=train_loss, lr=lr,
                           tps=state.tokens / max(state.elapsed, 1e-9))
            if val_items and (state.step % cfg.train.eval_every == 0 or state.step == steps):
                val = validation_loss(model, loss_fn, val_items, cfg.eval.batch_size,
                                      tok.pad_token_id, acc)
                state.last_val = val
                log.write({"step": state.step, "val_loss": val, "val_ppl": math.exp(min(val, 50))})
                if val < state.best_val - 1e-6:
                    state.best_val, state.best_step, state.bad_evals = val, state.step, 0
                    if cfg.train.early_stopping_patience:
                        best_weights = checkpoint.trainable_state(acc.unwrap_model(model))
                else:
                    state.bad_evals += 1
                    pat = cfg.train.early_stopping_patience
                    if pat and state.bad_evals >= pat:
                        stopped_early = True
            if acc.is_main_process and (state.step % cfg.train.save_every == 0 or stopped_early):
                checkpoint.save(run / "checkpoints", state.step, acc.unwrap_model(model),
                                optimizer, scheduler, state.__dict__)
            if stopped_early:
                break
    except KeyboardInterrupt:
        # Save where the last completed step left off, with the RNG as it was then, so a
        # resume replays the interrupted step exactly.
        if acc.is_main_process:
            if in_step:  # the RNG has moved on inside the unfinished step
                checkpoint.set_rng_state(rng_at_step)
            checkpoint.save(run / "checkpoints", state.step, acc.unwrap_model(model),
                            optimizer, scheduler, state.__dict__)
            from tuneloop.console import err
            err.print(f"Interrupted at step {state.step}; resume with "
                      f"`tuneloop train --resume {run}`")
        raise
    finally:
        if bar:
            bar.stop()

    # ---- save ------------------------------------------------------------------------------
    unwrapped = acc.unwrap_model(model)
    if best_weights is not None:
        checkpoint.load_trainable(unwrapped, best_weights)
    summary = {
        "run_dir": str(run), "method": cfg.method.name, "model": cfg.model.name,
        "steps": state.step, "planned_steps": steps, "epochs": round(plan.epoch_of(state.step * ga), 3),
        "train_loss": train_loss,
        "val_loss": state.last_val, "val_ppl": math.exp(state.last_val) if state.last_val else None,
        "best_val_loss": None if math.isinf(state.best_val) else state.best_val,
        "best_step": state.best_step, "stopped_early": stopped_early,
        "weights": "best" if best_weights is not None else "final",
        "tokens_seen": state.tokens, "train_seconds": round(state.elapsed, 2),
        "tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
        "padding_fraction": round(1 - state.tokens / max(state.positions, 1), 4),
        "trainable_params": trainable, "total_params": total_params,
        "examples": {"train": len(train_items), "validation": len(val_items)},
        "skipped": len(splits.skipped),
        "truncated": {"train": train_rep.truncated, "validation": val_rep.truncated},
        "device": placement.device, "precision": placement.precision,
        "processes": acc.num_processes, "seed": cfg.seed}
    if acc.is_main_process:
        target = run / ("model" if cfg.method.name == "full" else "adapter")
        unwrapped.save_pretrained(target, safe_serialization=True)
        write_json(run / "summary.json", summary)
    acc.wait_for_everyone()
    # ---- cleanup ---------------------------------------------------------------------------
    acc.end_training()
    return run, summary


class _Logger:
    """Appends metrics.jsonl lines, flushed each time so a crash loses nothing written."""

    def __init__(self, path: Path, enabled: bool):
        self.f = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, rec: dict) -> None:
        if self.f:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from: one consistent history."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _progress(show: bool, total: int, done: int):
    if not show:
        return None, None
    from rich.progress import TextColumn

    from tuneloop.console import progress

    bar = progress(False, TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.1e} "
                                     "{task.fields[tps]:.0f} tok/s"))
    task = bar.add_task("train", total=total, completed=done, loss=float("nan"), lr=0.0, tps=0.0)
    bar.start()
    return bar, task
