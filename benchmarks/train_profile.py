"""Where a tuneloop LoRA step's time goes on this CPU: the profile behind the MFU figure.

    .venv/bin/python benchmarks/train_profile.py [--steps 3] [--micro-batch 4]

The same model, data, LoRA and step as benchmarks/train_throughput.py's `tuneloop` trainer
(SmolLM2-135M, PubMedQA examples, steps of 8 examples in micro-batches, packing, the CPU
kernels, the placement's precision), set up by train/step.py as the recipe does. One warm-up
step, then `--steps` steps under torch.profiler. Prints the ops by self CPU time and a split:
matmul (mm/addmm/bmm/linear kernels), attention, and everything else (elementwise, norms,
copies, optimizer), each as a share of the step, and the matmul rate actually achieved
against this machine's matmul peak in the same dtype. MFU below 50% is the non-matmul share
plus matmuls running below peak on these shapes; the split says which.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import MODEL, examples, peak_flops  # noqa: E402

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_int_mm", "aten::linear_backward")
ATTENTION = ("flash_attention", "scaled_dot_product", "_efficient_attention")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=4)
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from tuneloop.config import MethodConfig, TrainConfig
    from tuneloop.models.cpu import cpu_kind, isa_capped
    from tuneloop.models.load import choose_placement, load_model, load_tokenizer, resolve_model
    from tuneloop.models.tokens import encode, ensure_template
    from tuneloop.records import Example, Message
    from tuneloop.train.loss import TargetLoss
    from tuneloop.train.packing import collate_packed
    from tuneloop.train.step import accelerator_for, optimizer_for, prepare_model, train_step

    placement = choose_placement()
    acc = accelerator_for(placement)
    path = resolve_model(MODEL)
    tok = load_tokenizer(path)
    ensure_template(tok)
    train = TrainConfig(packing=True, batch_size=args.micro_batch, learning_rate=2e-4)
    model = prepare_model(load_model(path, placement), MethodConfig(), placement, train, 512)
    loss_fn = TargetLoss(model)
    opt = optimizer_for(model, train)
    model, opt = acc.prepare(model, opt)
    recs, _ = examples(8 * (args.steps + 1), 0)
    items = [encode(tok, Example(str(i), [Message(**m) for m in r["messages"]]), 512)
             for i, r in enumerate(recs)]
    steps = [[collate_packed(items[s + m:s + m + args.micro_batch])
              for m in range(0, 8, args.micro_batch)] for s in range(0, len(items), 8)]
    model.train()
    train_step(model, loss_fn, steps[0], opt, None, acc, 1.0)  # warm-up
    tokens = sum(int(b["input_ids"].numel()) for st in steps[1:] for b in st)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for st in steps[1:]:
            train_step(model, loss_fn, st, opt, None, acc, 1.0)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMUL)
    attn = sum(e.self_cpu_time_total for e in events if any(a in e.key for a in ATTENTION))
    print(events.table(sort_by="self_cpu_time_total", row_limit=18))
    dtype = "bf16" if placement.precision == "bf16" else "fp32"
    peak = peak_flops()[dtype]
    # Useful matmul FLOPs per token, as train_throughput counts them (frozen base: forward and
    # input-gradient backward; LoRA and head terms are small at r=16).
    n_body = sum(p.numel() for n, p in model.named_parameters()
                 if p.dim() == 2 and "embed" not in n and "lora" not in n)
    flops = 4 * n_body * tokens
    print(f"CPU kind {cpu_kind()}{' (ISA capped)' if isa_capped() else ''}, {dtype}, "
          f"{args.steps} steps, {tokens} tokens, {wall:.1f} s under the profiler "
          f"({tokens / wall:.0f} tokens/s)")
    print(f"share of op time: matmul {mm / total:.0%}, attention {attn / total:.0%}, "
          f"everything else {1 - (mm + attn) / total:.0%}")
    print(f"matmul rate inside matmul ops: {flops / (mm / 1e6) / 1e12:.3f} TFLOP/s vs the "
          f"{dtype} peak {peak:.3f} TFLOP/s ({flops / (mm / 1e6) / 1e12 / peak:.0%}); "
          f"MFU of the whole step {flops / wall / 1e12 / peak:.0%}")


if __name__ == "__main__":
    main()
