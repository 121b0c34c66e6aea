"""Cost before training: predicted from the planned batches and a cached machine calibration.

Nothing of the real model is loaded or run: its config gives the matmul sizes, the planned
micro-batches (packing, padding and targets included) give the step FLOPs and the largest
activation footprint, and calibrate.py turns those into seconds and bytes for this machine.
`benchmarks/estimate_accuracy.py` checks the predictions against measured runs.
"""

from __future__ import annotations

from tuneloop.config import Config
from tuneloop.data.load import load_splits
from tuneloop.models.load import choose_placement, load_tokenizer_for
from tuneloop.models.tokens import IGNORE, Encoded, encode_all
from tuneloop.train.batches import BatchPlan, micro_batch, plan_for, total_steps
from tuneloop.train.calibrate import (
    calibration,
    head_chunk_bytes,
    meta_model,
    model_sizes,
    saved_activation_bytes,
    step_flops,
)
from tuneloop.train.cpu.prepare import cpu_kernels
from tuneloop.train.methods import count_parameters

# Import note: transformers (and peft under it) load inside functions. Importing peft writes
# os.environ (TORCHINDUCTOR_CACHE_DIR), and importing a tuneloop module must change nothing
# process-wide; it also keeps `tuneloop select`'s parent process light.

SAMPLE_STEPS = 200  # planned steps whose batch shapes are averaged (all, for shorter runs)


def _batch_shapes(cfg: Config, items: list[Encoded], plan: BatchPlan, steps: int) -> list[dict]:
    """Positions, row width and targets of the planned micro-batches (up to SAMPLE_STEPS)."""
    shapes = []
    for k in range(min(steps, SAMPLE_STEPS) * cfg.train.grad_accum):
        chosen = [items[i] for i in plan.indices(k)]
        b = micro_batch(chosen, 0, cfg)
        rows, width = b["input_ids"].shape
        lengths = [len(e.input_ids) for e in chosen]
        # Attention span per position: the row width, or for a packed row (attention per
        # example) the token-weighted example length.
        span = sum(n * n for n in lengths) / max(1, sum(lengths)) if cfg.train.packing else width
        shapes.append({"rows": rows, "width": width, "span": span, "positions": rows * width,
                       "tokens": sum(lengths), "targets": int((b["labels"][:, 1:] != IGNORE).sum())})
    return shapes


def _forward_again(sizes: dict[str, int], shape: dict) -> float:
    """Gradient checkpointing recomputes the body's forward once more in the backward pass."""
    attn = 4 * sizes["layers"] * sizes["attn_width"] * shape["span"]
    return shape["positions"] * (2 * sizes["body"] + attn)


def estimate(cfg: Config, model_path: str, items: list[Encoded], steps: int, placement,
             plan: BatchPlan | None = None) -> dict:
    """Predicted step time, run time and peak memory of the run on this machine."""
    from transformers import AutoConfig  # why: see the module's import note

    plan = plan or plan_for(cfg, items)
    config = AutoConfig.from_pretrained(model_path)
    sizes = model_sizes(config)
    model = meta_model(config, cfg.method)
    trainable, total = count_parameters(model)
    full = cfg.method.name == "full"
    lora = 0 if full else trainable
    cal = calibration(placement, model_path=model_path, kernels=cfg.train.cpu_kernels)
    rate = cal["flops_per_s"]
    shapes = _batch_shapes(cfg, items, plan, steps)
    fixed = cal["seconds_per_param"] * total
    gc = cfg.train.gradient_checkpointing
    micro_seconds = [(step_flops(sizes, full, lora, s["positions"], s["span"], s["targets"])
                      + (_forward_again(sizes, s) if gc else 0)) / rate + fixed for s in shapes]
    step_seconds = sum(micro_seconds) / len(micro_seconds) * cfg.train.grad_accum
    big = max(shapes, key=lambda s: s["positions"])
    rows, width = big["rows"], big["width"]
    if cfg.train.packing:  # saved activations grow with tokens: count rows of the mean span
        width = max(1, round(big["span"]))
        rows = max(1, round(big["positions"] / width))
    activations = saved_activation_bytes(model, rows, width) * cal["activation_factor"]
    if gc:  # roughly: one layer's activations at a time plus every layer's saved input
        activations = activations / sizes["layers"] + big["positions"] * sizes["hidden"] * 4 * sizes["layers"]
    half = placement.precision in ("bf16", "fp16")
    head = head_chunk_bytes(config.vocab_size, max(s["targets"] for s in shapes), half)
    if placement.device == "cuda" and half:
        weight_bytes = total * 2
    elif half and not full and cpu_kernels(config.model_type, placement, cfg.train.cpu_kernels):
        # the CPU kernels store the frozen linears in the compute dtype
        weight_bytes = (total - sizes["body"]) * 4 + sizes["body"] * 2
    else:
        weight_bytes = total * 4
    # AdamW keeps two fp32 moments per trainable weight, plus its gradient.
    state_bytes = trainable * 12
    base = cal["base_rss"] if placement.device == "cpu" else 0
    peak = base + weight_bytes + state_bytes + activations + head
    tokens = sum(s["tokens"] for s in shapes) / len(shapes) * cfg.train.grad_accum * steps
    tps = sum(s["tokens"] for s in shapes) / max(sum(micro_seconds), 1e-9)
    del model
    return {"steps": steps, "planned_tokens": int(tokens),
            "predicted_step_seconds": round(step_seconds, 3),
            "predicted_tokens_per_s": round(tps, 1),
            # old key, read by `tuneloop select`: the figure is now predicted, not stepped
            "measured_tokens_per_s": round(tps, 1),
            "estimated_train_minutes": round(step_seconds * steps / 60, 2),
            "estimated_peak_memory_gb": round(peak / 2**30, 2),
            "memory_kind": "gpu_allocated" if placement.device == "cuda" else "process_rss",
            "memory_breakdown_gb": {k: round(v / 2**30, 3) for k, v in (
                ("process", base), ("weights", weight_bytes), ("optimizer", state_bytes),
                ("activations", activations), ("lm_head_chunk", head))},
            "padding_fraction": round(1 - sum(s["tokens"] for s in shapes)
                                      / max(1, sum(s["positions"] for s in shapes)), 4),
            "trainable_params": trainable, "total_params": total,
            "device": placement.device, "precision": placement.precision,
            "calibration": {"train_tflops": round(rate / 1e12, 4),
                            "fixed_seconds_per_micro_batch": round(fixed, 3),
                            "activation_factor": round(cal["activation_factor"], 3),
                            "cached": cal["cached"]},
            "note": "predicted from the planned batches and a cached machine calibration; "
                    "evaluation time not included"}


def dry_run(cfg: Config) -> dict:
    """What `train --dry-run` prints: resolved config, data and token statistics, cost."""
    splits = load_splits(cfg)
    path, tok = load_tokenizer_for(cfg.model.name)
    items, rep = encode_all(tok, splits.train, cfg.model.max_seq_len, cfg.train.loss_on)
    _, vrep = encode_all(tok, splits.validation, cfg.model.max_seq_len, cfg.train.loss_on)
    plan = plan_for(cfg, items)
    steps = total_steps(cfg, plan)
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    return {"config": cfg.model_dump(mode="json"), "data": splits.describe(),
            "format": splits.format, "skipped": splits.skipped[:20],
            "tokens": {"train": rep.as_dict(), "validation": vrep.as_dict()},
            "estimate": estimate(cfg, path, items, steps, placement, plan)}
