"""Cost before training: measured, not guessed.

Runs two real optimizer steps of the configured model and method on this machine (a median-
length batch for time, the longest batch for peak memory) and scales by the planned tokens.
"""

from __future__ import annotations

import gc
import time

import psutil
import torch

from tuneloop.config import Config
from tuneloop.models.tokens import Encoded
from tuneloop.train.batches import collate


def _step(model, opt, batch) -> float:
    t = time.perf_counter()
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def estimate(cfg: Config, model_path: str, items: list[Encoded], steps: int, placement) -> dict:
    """Predicted wall time and peak memory of the run, from a micro-benchmark on this machine."""
    from tuneloop.models.load import load_model
    from tuneloop.train.methods import count_parameters, wrap

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    model = wrap(load_model(model_path, placement), cfg.method)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    bs = cfg.train.batch_size
    by_len = sorted(items, key=lambda e: len(e.input_ids))
    mid = by_len[max(0, len(by_len) // 2 - bs // 2):][:bs]
    longest = by_len[-bs:]
    dev = placement.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(placement.precision)
    ctx = torch.autocast(dev, dtype=dtype) if dtype else torch.autocast(dev, enabled=False)

    def run(batch_items, model=model, opt=opt):
        b = {k: v.to(dev) for k, v in collate(batch_items, 0).items()}
        with ctx:
            return _step(model, opt, b), int(b["attention_mask"].sum())

    run(mid)  # warm-up: allocations, kernels
    sec, toks = run(mid)
    run(longest)
    peak = max(proc.memory_info().rss, rss0)
    if dev == "cuda":
        peak = torch.cuda.max_memory_allocated()
    trainable, total = count_parameters(model)
    total_tokens = sum(len(e.input_ids) for e in items) / max(1, len(items)) * bs \
        * cfg.train.grad_accum * steps
    seconds = total_tokens * sec / max(toks, 1)
    del model, opt
    gc.collect()
    return {"steps": steps, "planned_tokens": int(total_tokens),
            "measured_step_seconds": round(sec * cfg.train.grad_accum, 3),
            "measured_tokens_per_s": round(toks / sec, 1),
            "estimated_train_minutes": round(seconds / 60, 2),
            "estimated_peak_memory_gb": round(peak / 2**30, 2),
            "memory_kind": "gpu_allocated" if dev == "cuda" else "process_rss",
            "trainable_params": trainable, "total_params": total,
            "device": dev, "precision": placement.precision,
            "note": "from 2 timed steps on this machine; evaluation time not included"}


def dry_run(cfg: Config) -> dict:
    """What `train --dry-run` prints: resolved config, data and token statistics, cost."""
    from tuneloop.data.load import load_splits
    from tuneloop.models.load import choose_placement, load_tokenizer, resolve_model
    from tuneloop.models.tokens import encode_all, ensure_template
    from tuneloop.train.batches import BatchPlan
    from tuneloop.train.loop import total_steps

    splits = load_splits(cfg)
    path = resolve_model(cfg.model.name)
    tok = load_tokenizer(path)
    ensure_template(tok)
    items, rep = encode_all(tok, splits.train, cfg.model.max_seq_len, cfg.train.loss_on)
    _, vrep = encode_all(tok, splits.validation, cfg.model.max_seq_len, cfg.train.loss_on)
    steps = total_steps(cfg, BatchPlan(len(items), cfg.train.batch_size, 1, 0, cfg.seed))
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    return {"config": cfg.model_dump(mode="json"), "data": splits.describe(),
            "format": splits.format, "skipped": splits.skipped[:20],
            "tokens": {"train": rep.as_dict(), "validation": vrep.as_dict()},
            "estimate": estimate(cfg, path, items, steps, placement)}
