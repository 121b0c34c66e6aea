"""Does `tuneloop select` rank the base models the way fine-tuning them ranks them?

    .venv/bin/python benchmarks/select_vs_finetune.py [--examples cuad-extract,pubmedqa-answers]
        [--steps 16] [--limit 40] [--out bench-select] [--reuse]

For each generative example: `tuneloop select` on the two bundled models (its ranking, bits
per byte and zero/few-shot metric on the validation split), then the same LoRA budget for
each model (the example's config with train.max_steps=--steps) and `tuneloop eval --baselines
none --limit N` of each fine-tune on the same first N test examples. Prints, per example,
both rankings and the fine-tuned primary metric of each model with its 95% CI and a paired
bootstrap of the difference on the same examples. --reuse skips any step whose output is
already in --out (the runs are examples/NAME/runs/sel{steps}-MODEL).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
TL = [str(ROOT / ".venv" / "bin" / "tuneloop")]


def _run(args: list[str], out: Path, reuse: bool) -> dict:
    if reuse and out.exists():
        return json.loads(out.read_text())
    print("$ tuneloop " + " ".join(args), file=sys.stderr, flush=True)
    res = subprocess.run(TL + args + ["--json"], capture_output=True, text=True, check=True)
    out.write_text(res.stdout)
    return json.loads(res.stdout)


def ci(c: list[float]) -> str:
    return f"[{c[0]:.3f}, {c[1]:.3f}]"


def per_example(eval_dir: Path, metric: str) -> dict[str, float]:
    """The fine-tune's per-example metric from predictions.jsonl, by example id."""
    rows = [json.loads(x) for x in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    return {r["id"]: r[metric] for r in rows if r["system"] == "finetuned"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default="cuad-extract,pubmedqa-answers")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("bench-select"))
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from tuneloop.evaluate.stats import mean_stat, paired_bootstrap

    for name in args.examples.split(","):
        ex = ROOT / "examples" / name
        sel = _run(["select", str(ex), "--candidates", ",".join(MODELS)],
                   args.out / f"{name}_select.json", args.reuse)
        primary = sel["primary_metric"]
        scores = {}
        for m in MODELS:
            run = ex / "runs" / f"sel{args.steps}-{m}"
            if not (args.reuse and run.exists()):
                subprocess.run(TL + ["train", str(ex), "--set", f"model.name={m}", "--set",
                                     f"train.max_steps={args.steps}", "--set",
                                     "train.sample_every=null", "--set",
                                     f"output.name={run.name}", "--quiet"], check=True)
            res = _run(["eval", str(run), "--baselines", "none", "--limit", str(args.limit)],
                       args.out / f"{name}_{m}_eval.json", args.reuse)
            scores[m] = (res["systems"]["finetuned"]["metrics"],
                         per_example(Path(res["eval_dir"]), primary))
        print(f"\n## {name}: primary metric {primary}; select on {sel['examples']} validation "
              f"examples, fine-tunes of {args.steps} steps on the first {args.limit} test examples")
        print("| model | select rank (score) | bits/byte [95% CI] | zero-shot | few-shot | "
              f"fine-tuned {primary} [95% CI] |")
        print("|---|---|---|---|---|---|")
        for c in sorted(sel["candidates"], key=lambda c: c["rank"] or 99):
            q = c["quality"]
            fs = (q.get("few_shot") or {}).get(primary, {}).get("value")
            ft = scores[c["name"]][0][primary]
            print(f"| {c['name']} | {c['rank']} ({c['score']:.3f}) | "
                  f"{q['bits_per_byte']['value']:.3f} {ci(q['bits_per_byte']['ci'])} | "
                  f"{q['zero_shot'][primary]['value']:.3f} | {fs if fs is None else f'{fs:.3f}'} | "
                  f"{ft['value']:.3f} {ci(ft['ci'])} |")
        a, b = (scores[m][1] for m in MODELS)
        ids = [i for i in a if i in b]
        va = np.array([a[i] for i in ids], dtype=float)
        vb = np.array([b[i] for i in ids], dtype=float)
        d = paired_bootstrap(mean_stat(va), mean_stat(vb), len(ids), 1000, 0)
        ft_winner = MODELS[0] if d["diff"] > 0 else MODELS[1]
        print(f"fine-tuned {MODELS[0]} - {MODELS[1]} = {d['diff']:+.3f} {ci(d['ci'])}, paired "
              f"bootstrap p={d['p_value']}; select picked {sel['winner']}, the fine-tunes rank "
              f"{ft_winner} first" + (" (not significant)" if d["p_value"] >= 0.05 else ""))


if __name__ == "__main__":
    main()
