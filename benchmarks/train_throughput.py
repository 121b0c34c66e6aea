"""Training throughput: tuneloop vs TRL SFTTrainer + peft (its defaults, and at its best), same
model, data, LoRA and examples.

Usage:  .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--reps 2] [--micro-batch 4]
        (--steps 0: all 512 examples)

Data: PubMedQA (../shared/data/pubmedqa, MIT): user = question + first abstract passage,
assistant = the abstract's conclusion; 512 training and 100 validation examples of varied length
(loss on the answer only in all trainers; the longest example is 407 tokens, under the 512
limit, so nothing is truncated). Each timed run trains one epoch over the same `steps x batch`
examples (the first ones of a seeded shuffle of the 512), in its own process, so peak RSS is per
run and a run cannot warm the next. Runs alternate tuneloop, trl, trl_best, tuneloop, ... so load
from other work on a shared machine hits all alike.

Three trainers:

* `tuneloop`: its public train(), packing on. Optimizer steps of 8 examples, run as
  micro-batches of `--micro-batch` examples with gradient accumulation (its loss is
  token-weighted over the whole step, so the update is the one a batch of 8 gives). That is a
  speed/memory dial: each micro-batch pays a fixed cost (thousands of small kernels, each waking
  the OpenMP threads), so larger ones run faster while smaller ones hold fewer activations.
* `trl`: SFTTrainer with its defaults (collation with padding, gradient checkpointing, fp32
  frozen weights, its loss and metrics), one batch of 8 per step; only the precision is set
  (below).
* `trl_best`: SFTTrainer with the settings TRL documents for speed and memory (SFTConfig's
  docstring in TRL 1.16; its docs page "Reducing Memory Usage", sections padding-free and packing):
  `gradient_checkpointing=False` (SFTConfig turns it on by default; it recomputes the forward);
  `padding_free=True` (each micro-batch flattened into one row with per-example position_ids,
  no padding; packing with strategy "bfd" would switch the same padding-free collation on, but
  packs rows to `max_length` tokens, so a step would no longer be 8 examples); the model loaded
  by TRL itself in the dtype tuneloop stores frozen weights in (`model_init_kwargs` dtype:
  bf16 where tuneloop computes in bf16, else fp32; peft keeps the adapters in fp32); and the
  same micro-batches and gradient accumulation as tuneloop (`--micro-batch`). TRL's docs say
  padding-free needs FlashAttention, which does not exist on CPU; with transformers' sdpa it is
  still exact there, because TRL's training forward passes `use_cache=False` and no attention
  mask, and transformers then derives a block-diagonal causal mask from the position_ids
  (checked: the flattened row's logits match each example run alone). That mask spans the whole
  flattened row (row length squared), which is the price TRL pays on CPU for padding-free.
  `padding_free` without packing requires `max_length=None`; no example reaches 512 tokens.

OpenMP settings come from the environment and apply to all workers alike (tuneloop's CLI sets
OMP_WAIT_POLICY=PASSIVE; pass it explicitly, as the docs do, so the TRL workers get it too);
each worker reports what it ran with.

Precision: tuneloop's placement (`model.dtype: auto`) computes under bf16 autocast where the CPU
has AMX/avx512_bf16, else in fp32 (bf16 would be emulated there); both TRL runs use the same
(`bf16=` that choice). The summary JSON names the CPU kind as the kernels see it (amx,
avx512_bf16 or avx2-only: tuneloop.models.cpu) and, per trainer, the compute dtype and the
frozen weights' dtype. An AVX2-only machine can be measured on a newer one by capping the ISA
of every worker: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
(the kind then reads "avx2-only (ISA capped)", bf16 is emulated and all three train in fp32).

Timing covers training only (tuneloop's train_seconds, TRL's on_train_begin..on_train_end).
Peak RSS is read when training ends. Validation loss is computed after both, by one function
for all trainers, on the saved adapter over the fp32 base: tuneloop's run gets no validation
split of its own (so it does no evaluation during training), and TRL's adapters are saved and
reloaded the way tuneloop's are.

MFU counts the useful matmul FLOPs of frozen-base LoRA per real token: forward 2*N_body and
input-gradient backward 2*N_body (frozen weights need no weight gradient), 6*N_lora for the
adapter, and 4*N_head per *target* token (the LM head is only needed where there is a label);
attention score FLOPs (<5% at these lengths) are left out. It is divided by the matmul peak,
measured in this run, of the dtype the trainer computed in (bf16 under bf16 autocast, else fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pubmedqa" / "ori_pqal.json"
MODEL = "smollm2-135m-instruct"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
HP = {"learning_rate": 2e-4, "warmup_ratio": 0.0,  # the two round a warm-up ratio differently
      "max_grad_norm": 1.0, "batch_size": 8, "micro_batch": 4,
      "max_seq_len": 512}


KINDS = ("tuneloop", "trl", "trl_best")


def examples(n_train: int = 512, n_val: int = 100) -> tuple[list[dict], list[dict]]:
    """Chat records from PubMedQA, shuffled with a fixed seed."""
    rows = list(json.loads(DATA.read_text()).values())
    random.Random(0).shuffle(rows)
    recs = [{"messages": [
        {"role": "user", "content": f"Question: {r['QUESTION']}\n\nContext: {r['CONTEXTS'][0]}"},
        {"role": "assistant", "content": r["LONG_ANSWER"]}]} for r in rows]
    return recs[:n_train], recs[n_train:n_train + n_val]


def cpu_kind() -> str:
    """amx | avx512_bf16 | avx512 | avx2-only | other, as the kernels see it (ISA caps honoured:
    tuneloop.models.cpu), with " (ISA capped)" when env variables hold them below the chip."""
    from tuneloop.models.cpu import cpu_kind as kind
    from tuneloop.models.cpu import isa_capped

    return kind() + (" (ISA capped)" if isa_capped() else "")


def peak_flops() -> dict[str, float]:
    """Matmul peak of this machine (TFLOP/s), fp32 and bf16, best of a few timed products."""
    import torch

    res = {}
    for name, dtype, size in (("fp32", torch.float32, 2048), ("bf16", torch.bfloat16, 2048)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        t = time.perf_counter()
        a @ b
        one = time.perf_counter() - t
        if one > 2:  # emulated bf16: shrink so the probe stays short
            size = max(128, int(size * (1.0 / one) ** (1 / 3)))
            a, b = a[:size, :size].contiguous(), b[:size, :size].contiguous()
        best = float("inf")
        for _ in range(5 if one < 0.5 else 2):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        res[name] = 2 * size**3 / best / 1e12
    return res


def flops_per_run(model, tokens: int, targets: int) -> float:
    """Useful FLOPs of a frozen-base LoRA run (see the module docstring)."""
    head = model.get_output_embeddings().weight.numel()
    emb = model.get_input_embeddings().weight.numel()
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    body = total - lora - emb - (0 if tied else head)
    return tokens * (4 * body + 6 * lora) + targets * 4 * head


def val_loss(model, tok, val: list[dict]) -> float:
    """Token-weighted validation loss on answer tokens: one function for all trainers."""
    import torch

    from tuneloop.models.tokens import encode_all
    from tuneloop.records import Example, Message
    from tuneloop.train.batches import eval_batches
    from tuneloop.train.loss import TargetLoss

    exs = [Example(id=str(i), messages=[Message(m["role"], m["content"]) for m in r["messages"]])
           for i, r in enumerate(val)]
    items, _ = encode_all(tok, exs, HP["max_seq_len"])
    loss, s, n = TargetLoss(model), 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in eval_batches(items, 16, tok.pad_token_id):
            a, b = loss(model, batch)
            s, n = s + float(a), n + int(b)
    return s / n


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _dtype_name(dtype) -> str:
    return {"torch.bfloat16": "bf16", "torch.float32": "fp32", "torch.float16": "fp16"}.get(
        str(dtype), str(dtype))


def _threads() -> dict:
    import torch

    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads()}


def run_tuneloop(train: list[dict], val: list[dict], workdir: Path) -> dict:
    """One tuneloop run via its public train() (packing on, no validation during training)."""
    import yaml

    from tuneloop.config import load_config
    from tuneloop.runs import load_run_model
    from tuneloop.train.cpu import prepare
    from tuneloop.train.recipe import train as do_train

    cast: dict[str, str] = {}
    to_compute = prepare.frozen_to_compute_dtype

    def recording(model, precision):  # note which dtype the frozen weights were stored in
        n = to_compute(model, precision)
        cast["frozen"] = _dtype_name(next(p.dtype for p in model.parameters() if not p.requires_grad))
        return n

    prepare.frozen_to_compute_dtype = recording
    with open(workdir / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in train)
    # No validation file and no split: train() then evaluates nothing, so the validation set
    # costs neither time nor memory in the run; val_loss() below scores it for all trainers.
    cfg = {"data": {"train": "train.jsonl", "format": "chat", "validation_fraction": 0.0},
           "model": {"name": MODEL, "max_seq_len": HP["max_seq_len"]},
           "method": {"name": "lora", **LORA},
           "train": {"epochs": 1, "batch_size": HP["micro_batch"],
                     "grad_accum": HP["batch_size"] // HP["micro_batch"],
                     "learning_rate": HP["learning_rate"],
                     "warmup_ratio": HP["warmup_ratio"], "max_grad_norm": HP["max_grad_norm"],
                     "eval_every": 10**6, "save_every": 10**6, "packing": True},
           "output": {"dir": "runs", "name": "tl"}, "seed": 0}
    (workdir / "tuneloop.yaml").write_text(yaml.safe_dump(cfg))
    run, s = do_train(load_config(workdir / "tuneloop.yaml"), quiet=True)
    rss = _rss_gb()
    model, tok, _ = load_run_model(run)
    data = json.loads((run / "data.json").read_text())["tokens"]["train"]
    return {"seconds": s["train_seconds"], "tokens": s["tokens_seen"],
            "targets": data["target_tokens"], "padding_fraction": s["padding_fraction"],
            "compute_dtype": s["precision"], "frozen_dtype": cast.get("frozen", "fp32"),
            "examples": s["examples"], "threads": _threads(),
            "val_loss": val_loss(model, tok, val), "flops": flops_per_run(
                model, s["tokens_seen"], data["target_tokens"]), "peak_rss_gb": rss}


def run_trl(train: list[dict], val: list[dict], workdir: Path, best: bool = False) -> dict:
    """One TRL SFTTrainer + peft run on prompt-completion data: its defaults, or (best) the
    settings its docs give for speed (see the module docstring)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuneloop.models.load import choose_placement, load_model, load_tokenizer, resolve_model

    path = resolve_model(MODEL)
    tok = load_tokenizer(path)
    bf16 = choose_placement().precision == "bf16"
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
                            for r in train])
    common = dict(output_dir=str(workdir / "trl"), num_train_epochs=1,
                  learning_rate=HP["learning_rate"], lr_scheduler_type="cosine",
                  warmup_steps=HP["warmup_ratio"], max_grad_norm=HP["max_grad_norm"], bf16=bf16,
                  use_cpu=True, report_to=[], save_strategy="no", seed=0, disable_tqdm=True,
                  logging_steps=10**6)
    if best:
        args = SFTConfig(**common, per_device_train_batch_size=HP["micro_batch"],
                         gradient_accumulation_steps=HP["batch_size"] // HP["micro_batch"],
                         gradient_checkpointing=False, padding_free=True, max_length=None,
                         model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"})
        model = str(path)  # TRL loads it, in model_init_kwargs' dtype
    else:
        args = SFTConfig(**common, per_device_train_batch_size=HP["batch_size"],
                         max_length=HP["max_seq_len"])
        model = load_model(path)  # fp32
    peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=peft_cfg)
    longest = max(len(x) for x in trainer.train_dataset["input_ids"])
    if best and longest > HP["max_seq_len"]:  # padding_free without packing does not truncate
        sys.exit(f"an example has {longest} tokens, over max_seq_len {HP['max_seq_len']}")
    seen = {"tokens": 0, "positions": 0, "targets": 0, "batch": None}
    collate = trainer.data_collator

    def counting(features):
        b = collate(features)
        mask = b.get("attention_mask")
        seen["tokens"] += int(mask.sum()) if mask is not None else b["input_ids"].numel()
        seen["positions"] += b["input_ids"].numel()
        seen["targets"] += int((b["labels"][:, 1:] != -100).sum())
        if seen["batch"] is None:  # what the model is fed: keys and shapes of the first batch
            seen["batch"] = {k: list(v.shape) if hasattr(v, "shape") else v for k, v in b.items()}
        return b

    trainer.data_collator = counting

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.t

    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    rss = _rss_gb()
    model = trainer.model
    frozen = next(p.dtype for p in model.parameters() if not p.requires_grad)
    adapter = next(p.dtype for n, p in model.named_parameters() if "lora_" in n)
    base = model.get_base_model()  # transformers 5 renamed gradient to activation checkpointing
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    settings = {"gradient_checkpointing": args.gradient_checkpointing,
                "model_gradient_checkpointing": bool(base.is_gradient_checkpointing
                                                     if checkpointing is None else checkpointing),
                "padding_free": trainer.padding_free, "packing": args.packing,
                "max_length": args.max_length, "bf16": args.bf16,
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "model_init_kwargs": args.model_init_kwargs,
                "attn_implementation": model.config._attn_implementation,
                "first_batch": seen["batch"], "longest_example": longest}
    flops = flops_per_run(model, seen["tokens"], seen["targets"])
    # Validation as for tuneloop's run: the saved adapter on the fp32 base, in fp32.
    model.save_pretrained(workdir / "adapter")
    del trainer, model
    torch.set_grad_enabled(True)
    scored = PeftModel.from_pretrained(load_model(path), workdir / "adapter")
    return {"seconds": clock.seconds, "tokens": seen["tokens"], "targets": seen["targets"],
            "padding_fraction": 1 - seen["tokens"] / max(seen["positions"], 1),
            "compute_dtype": "bf16" if args.bf16 else "fp32", "frozen_dtype": _dtype_name(frozen),
            "adapter_dtype": _dtype_name(adapter), "settings": settings, "threads": _threads(),
            "val_loss": val_loss(scored, tok, val), "flops": flops, "peak_rss_gb": rss}


def worker(kind: str, steps: int, micro: int) -> None:
    """Run one trainer in this process and print its figures as JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train, val = examples()
    if steps:
        train = train[:steps * HP["batch_size"]]
    with tempfile.TemporaryDirectory() as d:
        HP["micro_batch"] = micro
        res = (run_tuneloop(train, val, Path(d)) if kind == "tuneloop"
               else run_trl(train, val, Path(d), best=kind == "trl_best"))
    res["val_examples"] = len(val)
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run (0: all 512 examples)")
    ap.add_argument("--reps", type=int, default=2, help="runs per trainer, alternating")
    ap.add_argument("--micro-batch", type=int, default=4, choices=[1, 2, 4, 8],
                    help="examples per micro-batch for tuneloop and trl_best (steps stay 8 examples)")
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.steps, a.micro_batch)
    kind_of_cpu = cpu_kind()
    peaks = peak_flops()
    print(f"CPU kind {kind_of_cpu}; matmul peak here: fp32 {peaks['fp32']:.3f} TFLOP/s, "
          f"bf16 {peaks['bf16']:.4f} TFLOP/s ({os.cpu_count()} CPUs visible)", flush=True)
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    for rep in range(a.reps):
        for kind in KINDS:
            out = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(a.steps),
                                  "--micro-batch", str(a.micro_batch)],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{kind} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
            r = json.loads(line[-1][7:])
            runs[kind].append(r)
            print(f"rep {rep + 1} {kind:8s}: {r['tokens'] / r['seconds']:7.1f} real tok/s, "
                  f"{r['seconds']:6.1f} s, padding {r['padding_fraction']:.1%}, "
                  f"peak RSS {r['peak_rss_gb']:.2f} GB, val loss {r['val_loss']:.4f} "
                  f"({r['compute_dtype']} compute, {r['frozen_dtype']} frozen weights)", flush=True)
    med = {}
    for kind, rs in runs.items():
        dtype = rs[-1]["compute_dtype"]
        flop_s = statistics.median(r["flops"] / r["seconds"] for r in rs)
        med[kind] = {"tok_s": statistics.median(r["tokens"] / r["seconds"] for r in rs),
                     "mfu": flop_s / 1e12 / peaks[dtype], "compute_dtype": dtype,
                     "frozen_dtype": rs[-1]["frozen_dtype"],
                     "peak_rss_gb": max(r["peak_rss_gb"] for r in rs),
                     "val_loss": rs[-1]["val_loss"], "padding_fraction": rs[-1]["padding_fraction"]}
        if "settings" in rs[-1]:
            med[kind]["settings"] = rs[-1]["settings"]
        print(f"{kind:8s} median {med[kind]['tok_s']:.1f} real tok/s, "
              f"MFU {med[kind]['mfu']:.1%} of the {dtype} peak")
    tl, trl, best = med["tuneloop"], med["trl"], med["trl_best"]
    ratios = {"speedup_vs_trl": tl["tok_s"] / trl["tok_s"],
              "speedup_vs_trl_best": tl["tok_s"] / best["tok_s"],
              "val_loss_ratio_vs_trl_best": tl["val_loss"] / best["val_loss"],
              "val_loss_ratio_vs_trl": tl["val_loss"] / trl["val_loss"]}
    print(json.dumps({"cpu_kind": kind_of_cpu, "cpus": os.cpu_count(),
                      "peak_tflops": peaks, "steps": a.steps, "reps": a.reps,
                      "micro_batch": a.micro_batch, "val_examples": runs["tuneloop"][-1]["val_examples"],
                      "trainers": med, **ratios}))
    print(f"speedup_vs_trl={ratios['speedup_vs_trl']:.2f} "
          f"speedup_vs_trl_best={ratios['speedup_vs_trl_best']:.2f} "
          f"mfu={tl['mfu']:.3f} peak_rss_gb={tl['peak_rss_gb']:.2f} "
          f"val_loss_ratio={ratios['val_loss_ratio_vs_trl_best']:.4f}")


if __name__ == "__main__":
    main()
