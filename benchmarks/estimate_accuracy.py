"""How close `tuneloop train --dry-run` comes to measured step time and peak memory.

Usage:  .venv/bin/python benchmarks/estimate_accuracy.py [--steps 3] [--recalibrate]

Three configs on each bundled model (SmolLM2-135M-Instruct, Gemma 3 270M) and PubMedQA chat data (see
train_throughput.py): LoRA batch 2 padded, LoRA batch 4 packed, LoRA r=8 batch 4 on short
question-only prompts. For each, the dry-run prediction (cached machine calibration, no model
steps) is compared with a real run in its own process: step time is the mean of steps 2..N
(step 1 warms up), memory the process's peak RSS. Target: within 15% on both, for each
bundled model (--models, both by default) and CPU kind (cap the ISA with
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 to measure an
AVX2-only machine; the calibration cache keys the kind).

Measured 2026-12-01 (2-core AMD EPYC, fresh calibration, --steps 6): avx512_bf16 (bf16) step
time -4% to -14%, peak memory -13% to +7%, worst_error=14.3% within_15pct=True; AVX2-capped
(fp32) step time -1% to -17%, memory -19% to +8%, worst_error=19.4% within_15pct=False
(docs/scale-out.md). On 2026-11-30, before the probe took the mean of its steps instead of
the fastest, every step time was 14-23% low (worst 23.3%).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import MODEL, examples  # noqa: E402

CONFIGS = {
    "lora-b2-padded": {"train": {"batch_size": 2}, "data": "context"},
    "lora-b4-packed": {"train": {"batch_size": 4, "packing": True}, "data": "context"},
    "lora-r8-b4-short": {"train": {"batch_size": 4}, "method": {"r": 8, "alpha": 16},
                         "data": "question"},
}


def _project(root: Path, name: str, steps: int, model: str = MODEL) -> Path:
    spec = CONFIGS[name]
    train, _ = examples()
    if spec["data"] == "question":  # short prompts: drop the abstract passage
        for r in train:
            r["messages"][0]["content"] = r["messages"][0]["content"].split("\n\nContext:")[0]
    root.mkdir(parents=True)
    with open(root / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in train)
    cfg = {"data": {"train": "train.jsonl", "format": "chat", "validation_fraction": 0},
           "model": {"name": model, "max_seq_len": 512},
           "method": {"name": "lora", **spec.get("method", {})},
           "train": {"max_steps": steps, "eval_every": 10**6, "save_every": 10**6,
                     **spec["train"]},
           "output": {"dir": "runs", "name": "run"}, "seed": 0}
    (root / "tuneloop.yaml").write_text(yaml.safe_dump(cfg))
    return root / "tuneloop.yaml"


def measure(config: Path) -> None:
    """Worker: train, print mean step time (steps 2..N) and peak RSS."""
    from tuneloop.config import load_config
    from tuneloop.train.recipe import train

    run, _ = train(load_config(config), quiet=True)
    el = [json.loads(x)["elapsed_s"] for x in (run / "metrics.jsonl").read_text().splitlines()
          if "elapsed_s" in x]
    print("RESULT " + json.dumps({"step_seconds": (el[-1] - el[0]) / (len(el) - 1),
                                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--models", default=f"{MODEL},gemma3-270m",
                    help="comma list of bundled models (both by default)")
    ap.add_argument("--recalibrate", action="store_true", help="re-run the machine calibration first")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return measure(a.worker)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    from tuneloop.config import load_config
    from tuneloop.models.load import choose_placement
    from tuneloop.train.calibrate import calibration
    from tuneloop.train.estimate import dry_run

    if a.recalibrate:  # on a shared machine the load changes: calibrate under today's load
        from tuneloop.models.load import resolve_model

        for model in models:
            cal = calibration(choose_placement(), refresh=True, model_path=resolve_model(model))
            print(f"calibrated {model}: {cal['flops_per_s'] / 1e9:.1f} GFLOP/s, "
                  f"{cal['seconds_per_param'] * 1e9:.1f} s per 1e9 params per step, "
                  f"activation factor {cal['activation_factor']:.2f}", flush=True)
    from tuneloop.models.cpu import cpu_kind, isa_capped

    print(f"CPU kind {cpu_kind()}{' (ISA capped)' if isa_capped() else ''}, precision "
          f"{choose_placement().precision}", flush=True)
    worst = 0.0
    with tempfile.TemporaryDirectory() as d:
        for model, name in ((m, n) for m in models for n in CONFIGS):
            config = _project(Path(d) / f"{model}-{name}", name, a.steps, model)
            est = dry_run(load_config(config))["estimate"]
            out = subprocess.run([sys.executable, __file__, "--worker", str(config)],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            m = json.loads(line[-1][7:])
            et = est["predicted_step_seconds"] / m["step_seconds"] - 1
            em = est["estimated_peak_memory_gb"] / m["peak_gb"] - 1
            worst = max(worst, abs(et), abs(em))
            print(f"{model[:8]} {name:18s} step: predicted {est['predicted_step_seconds']:7.2f} s, measured "
                  f"{m['step_seconds']:7.2f} s ({et:+.0%});  peak: predicted "
                  f"{est['estimated_peak_memory_gb']:.2f} GB, measured {m['peak_gb']:.2f} GB ({em:+.0%})"
                  f"  [calibration cached: {est['calibration']['cached']}]", flush=True)
    print(f"worst_error={worst:.1%} within_15pct={worst <= 0.15} cpu_kind={cpu_kind()}")


if __name__ == "__main__":
    main()
