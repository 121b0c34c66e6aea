"""Training throughput: tuneloop vs TRL SFTTrainer + peft, same model, data, LoRA and examples.

Usage:  .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--reps 2] [--micro-batch 4]
        (--steps 0: all 512 examples)

Data: PubMedQA (../shared/data/pubmedqa, MIT): user = question + first abstract passage,
assistant = the abstract's conclusion; 512 training and 24 validation examples of varied length
(loss on the answer only in both trainers). Each timed run trains one epoch over the same
`steps x batch` examples (the first ones of a seeded shuffle of the 512), in its own process, so
peak RSS is per run and a run cannot warm the next. Runs alternate tuneloop, TRL, tuneloop, TRL,
... so load from other work on a shared machine hits both alike.

Both take optimizer steps of 8 examples. tuneloop runs them as micro-batches of
`--micro-batch` examples with gradient accumulation (its loss is token-weighted over the whole
step, so the update is the one a batch of 8 gives). That is a speed/memory dial: each
micro-batch pays a fixed cost (thousands of small kernels, each waking the OpenMP threads), so
larger ones run faster while smaller ones hold fewer activations; 4 is the default here. Peak
RSS is read when training ends, before the validation loss (which reloads the saved model) in
both workers.

OpenMP settings come from the environment and apply to both workers alike (tuneloop's default
is OMP_WAIT_POLICY=PASSIVE; pass it explicitly, as the docs do, so TRL's worker gets it too).

Both compute in the precision tuneloop's placement picks (`model.dtype: auto`): bf16 autocast
where the CPU has AMX/avx512_bf16 (TRL's default `bf16=True`), else fp32 (TRL's bf16 would be
emulated there). Everything else in TRL is its default (collation, gradient checkpointing, its
fused loss, metrics). Validation loss of both final adapters is computed by one function.

MFU counts the useful matmul FLOPs of frozen-base LoRA per real token: forward 2*N_body and
input-gradient backward 2*N_body (frozen weights need no weight gradient), 6*N_lora for the
adapter, and 4*N_head per *target* token (the LM head is only needed where there is a label);
attention score FLOPs (<5% at these lengths) are left out. Peaks are measured in this run.
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


def examples(n_train: int = 512, n_val: int = 24) -> tuple[list[dict], list[dict]]:
    """Chat records from PubMedQA, shuffled with a fixed seed."""
    rows = list(json.loads(DATA.read_text()).values())
    random.Random(0).shuffle(rows)
    recs = [{"messages": [
        {"role": "user", "content": f"Question: {r['QUESTION']}\n\nContext: {r['CONTEXTS'][0]}"},
        {"role": "assistant", "content": r["LONG_ANSWER"]}]} for r in rows]
    return recs[:n_train], recs[n_train:n_train + n_val]


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
    """Token-weighted validation loss on answer tokens: one function for both trainers."""
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


def run_tuneloop(train: list[dict], val: list[dict], workdir: Path) -> dict:
    """One tuneloop run via its public train() (packing on)."""
    import yaml

    from tuneloop.config import load_config
    from tuneloop.runs import load_run_model
    from tuneloop.train.recipe import train as do_train

    for name, recs in (("train", train), ("val", val)):
        with open(workdir / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
    cfg = {"data": {"train": "train.jsonl", "validation": "val.jsonl", "format": "chat"},
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
            "val_loss": val_loss(model, tok, val), "flops": flops_per_run(
                model, s["tokens_seen"], data["target_tokens"]), "peak_rss_gb": rss}


def run_trl(train: list[dict], val: list[dict], workdir: Path) -> dict:
    """One TRL SFTTrainer + peft run with its default collation (prompt-completion data)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuneloop.models.load import choose_placement, load_model, load_tokenizer, resolve_model

    path = resolve_model(MODEL)
    tok = load_tokenizer(path)
    bf16 = choose_placement().precision == "bf16"
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
                            for r in train])
    args = SFTConfig(output_dir=str(workdir / "trl"), num_train_epochs=1,
                     per_device_train_batch_size=HP["batch_size"], learning_rate=HP["learning_rate"],
                     lr_scheduler_type="cosine", warmup_steps=HP["warmup_ratio"],
                     max_grad_norm=HP["max_grad_norm"], max_length=HP["max_seq_len"],
                     bf16=bf16, use_cpu=True, report_to=[], save_strategy="no", seed=0,
                     disable_tqdm=True, logging_steps=10**6)
    peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=load_model(path), args=args, train_dataset=ds, processing_class=tok,
                         peft_config=peft_cfg)
    seen = {"tokens": 0, "positions": 0, "targets": 0}
    collate = trainer.data_collator

    def counting(features):
        b = collate(features)
        seen["tokens"] += int(b["attention_mask"].sum())
        seen["positions"] += b["input_ids"].numel()
        seen["targets"] += int((b["labels"][:, 1:] != -100).sum())
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
    torch.set_grad_enabled(True)
    return {"seconds": clock.seconds, "tokens": seen["tokens"], "targets": seen["targets"],
            "padding_fraction": 1 - seen["tokens"] / max(seen["positions"], 1),
            "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
            "val_loss": val_loss(model, tok, val),
            "flops": flops_per_run(model, seen["tokens"], seen["targets"]), "peak_rss_gb": rss}


def worker(kind: str, steps: int, micro: int) -> None:
    """Run one trainer in this process and print its figures as JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train, val = examples()
    if steps:
        train = train[:steps * HP["batch_size"]]
    with tempfile.TemporaryDirectory() as d:
        HP["micro_batch"] = micro
        res = (run_tuneloop if kind == "tuneloop" else run_trl)(train, val, Path(d))
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run (0: all 512 examples)")
    ap.add_argument("--reps", type=int, default=2, help="runs per trainer, alternating")
    ap.add_argument("--micro-batch", type=int, default=4, choices=[1, 2, 4, 8],
                    help="tuneloop's examples per micro-batch (steps stay 8 examples)")
    ap.add_argument("--worker", choices=["tuneloop", "trl"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.steps, a.micro_batch)
    peaks = peak_flops()
    print(f"matmul peak here: fp32 {peaks['fp32']:.3f} TFLOP/s, bf16 {peaks['bf16']:.4f} TFLOP/s "
          f"({os.cpu_count()} CPUs visible)", flush=True)
    runs: dict[str, list[dict]] = {"tuneloop": [], "trl": []}
    for rep in range(a.reps):
        for kind in ("tuneloop", "trl"):
            out = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(a.steps),
                                  "--micro-batch", str(a.micro_batch)],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{kind} run failed:\n{out.stderr[-3000:]}")
            r = json.loads(line[-1][7:])
            runs[kind].append(r)
            print(f"rep {rep + 1} {kind:8s}: {r['tokens'] / r['seconds']:7.1f} real tok/s, "
                  f"{r['seconds']:6.1f} s, padding {r['padding_fraction']:.1%}, "
                  f"peak RSS {r['peak_rss_gb']:.2f} GB, val loss {r['val_loss']:.4f}", flush=True)
    med = {}
    for kind, rs in runs.items():
        tps = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        flops = statistics.median(r["flops"] / r["seconds"] for r in rs)
        med[kind] = {"tok_s": tps, "flop_s": flops,
                     "rss": max(r["peak_rss_gb"] for r in rs), "val": rs[-1]["val_loss"],
                     "pad": rs[-1]["padding_fraction"]}
        print(f"{kind:8s} median {med[kind]['tok_s']:.1f} real tok/s, "
              f"MFU fp32 {med[kind]['flop_s'] / 1e12 / peaks['fp32']:.1%}, "
              f"MFU bf16 {med[kind]['flop_s'] / 1e12 / peaks['bf16']:.1%}")
    tl, trl = med["tuneloop"], med["trl"]
    print(f"speedup_vs_trl={tl['tok_s'] / trl['tok_s']:.2f} "
          f"mfu_bf16={tl['flop_s'] / 1e12 / peaks['bf16']:.3f} "
          f"mfu_fp32={tl['flop_s'] / 1e12 / peaks['fp32']:.3f} "
          f"peak_rss_gb={tl['rss']:.2f} val_loss_ratio={tl['val'] / trl['val']:.4f}")


if __name__ == "__main__":
    main()
