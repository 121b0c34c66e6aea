"""Export parity and speed: each bundled model x each GGUF type, as `tuneloop export` makes them.

For every (run, quant): file size, write time, transformers' load time of the GGUF, greedy
agreement with the run on N test prompts, the task metric of both with 95% CIs and their
paired difference, and generation speed: llama.cpp (llama-cpp-python, else llama-cpp-py-sync,
when installed; see benchmarks/_llamacpp.py) against tuneloop's own decoder (models/generate.py,
what `tuneloop serve` runs), on the same prompts, one prompt at a time, on this machine.

    .venv/bin/python benchmarks/export_parity.py --n 50                      # both bundled models
    .venv/bin/python benchmarks/export_parity.py --run runs/lora-... --quants f16,q8_0 --n 20

Without --run, each bundled model gets a LoRA adapter whose B matrices are zero (so the merged
model is the base model) over the support-intents example: this measures the export itself.
Pass real runs to measure fine-tunes. q4_k_m needs llama-cpp-python (the [export] extra).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _llamacpp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "support-intents"


def zero_lora_run(model: str, root: Path) -> Path:
    """A run folder whose adapter changes nothing: the export of the base model itself."""
    import yaml
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.load import chat_tokenizer, load_model, resolve_model

    base = resolve_model(model)
    run = root / f"zero-lora-{model}"
    peft = get_peft_model(load_model(base), LoraConfig(r=16, lora_alpha=32,
                                                       target_modules="all-linear"))
    peft.save_pretrained(run / "adapter")
    chat_tokenizer(base).save_pretrained(run / "tokenizer")
    cfg = yaml.safe_load((EXAMPLE / "tuneloop.yaml").read_text())
    cfg["model"]["name"] = model
    for k in ("train", "test"):
        cfg["data"][k] = str(EXAMPLE / cfg["data"][k])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def tuneloop_speed(run: Path, prompts, max_new: int) -> float:
    """New tokens per second of tuneloop's greedy decoder, one prompt at a time (fp32)."""
    from tuneloop.models.generate import generate_with_counts
    from tuneloop.models.load import Placement
    from tuneloop.runs import load_run_model

    model, tok, _ = load_run_model(run, Placement("cpu", "fp32"))
    generate_with_counts(model, tok, prompts[:1], max_new, 1)  # warm-up
    t0 = time.perf_counter()
    _, counts = generate_with_counts(model, tok, prompts, max_new, 1)
    return sum(counts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", type=Path, help="run folder (repeatable)")
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m",
                    help="bundled models to use without --run")
    ap.add_argument("--quants", default="f16,q8_0,q4_k_m")
    ap.add_argument("--n", type=int, default=50, help="test prompts per check")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (on a busy shared CPU one thread beats oversubscribed cores)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tuneloop.errors import TuneloopError
    from tuneloop.export import parity
    from tuneloop.export.exporter import export_run
    from tuneloop.export.parity import NEAR_TIE, ParityError, max_new_tokens, parity_examples
    from tuneloop.runs import read_run_config

    reader = "llama-cpp-python" if parity.llama_cpp_available() else _llamacpp.unavailable()
    if reader is None:  # the export's own llama.cpp check (check_parity), on llama-cpp-py-sync
        parity.llama_cpp_available = lambda: True
        parity.llama_cpp_answers = functools.partial(_llamacpp.parity_answers, threads=args.threads)
        reader = "llama-cpp-py-sync"
    work = Path(tempfile.mkdtemp(prefix="export-parity-"))
    runs = args.run or [zero_lora_run(m, work) for m in args.models.split(",")]
    print(f"{os.cpu_count()} CPUs, torch threads {args.threads}, llama.cpp: {reader}, N={args.n}")
    # agree: identical greedy answers, near ties (see tuneloop.export.parity) counted as equal
    header = (f"{'run':34} {'quant':7} {'MB':>7} {'write s':>7} {'load s':>6} {'agree':>6} "
              f"{'metric (run)':>24} {'metric (gguf)':>24} {'diff [95% CI]':>24} "
              f"{'llama.cpp tok/s':>15} {'tuneloop tok/s':>14}")
    print(header)
    metric = "-"
    for run in runs:
        cfg = read_run_config(run)
        examples, _ = parity_examples(cfg, args.n)
        prompts = [e.prompt_messages for e in examples]
        speed_tl = None
        for quant in args.quants.split(","):
            out = work / f"{run.name}-{quant}"
            failed = ""
            try:
                res = export_run(run, out, "gguf", quant, parity_n=args.n)
            except ParityError as e:  # still a measurement: print it, marked
                res, failed = {"gguf": e.result["gguf"], "parity": e.result}, " PARITY FAILED"
            except TuneloopError as e:
                print(f"{run.name[:34]:34} {quant:7} skipped: {str(e)[:110]}")
                continue
            shutil.rmtree(out, ignore_errors=True)  # hundreds of MB per file; the figures are what we keep
            g, p = res["gguf"], res["parity"]
            tr = p["transformers"]
            lc = p.get("llama_cpp") or {}
            if speed_tl is None:
                from tuneloop.models.load import chat_tokenizer

                tok = chat_tokenizer(str(run / "tokenizer"))
                speed_tl = tuneloop_speed(run, prompts, max_new_tokens(cfg, tok, examples))

            def fmt(m):
                return f"{m['value']:.3f} [{m['ci'][0]:.2f},{m['ci'][1]:.2f}]"

            d, metric = tr["metric_diff"], tr["metric"]
            print(f"{run.name[:34]:34} {quant:7} {g['bytes'] / 1e6:7.1f} {g['write_s']:7.1f} "
                  f"{tr['load_s']:6.1f} {tr['agreement_with_ties']:6.0%} {fmt(tr['run_metric']):>24} "
                  f"{fmt(tr['file_metric']):>24} "
                  f"{d['diff']:+.3f} [{d['ci'][0]:+.2f},{d['ci'][1]:+.2f}]".ljust(150)
                  + f" {lc.get('tokens_per_s') or '-':>15} {speed_tl:14.1f}{failed}")
            for d in tr["disagreements"][:3]:
                print(f"{'':34} differs on {d['id']} (run's margin {d['run_margin']} logits"
                      f"{', a near tie' if (d['run_margin'] or 9) < NEAR_TIE else ''}): "
                      f"run {d['run'][:50]!r} | gguf {d['file'][:50]!r}")
            if lc:
                print(f"{'':34} {'':7} llama.cpp: agreement {lc['agreement']:.0%}, "
                      f"{lc['metric']} {fmt(lc['file_metric'])}, load {lc['load_s']} s")
            sys.stdout.flush()
    print(f"metric: {metric} of the greedy answers (task metric, 95% bootstrap CIs)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
