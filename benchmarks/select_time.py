"""Wall time of `tuneloop select` with the two bundled models on 200 validation examples.

    .venv/bin/python benchmarks/select_time.py [--project examples/support-intents] [--n 200]
        [--threads N] [--probe-steps 0] [--few-shot-examples 50] [--out select.json]
    .venv/bin/python benchmarks/select_time.py --domains [--n 60]

--domains instead builds two generation projects in a temporary folder from ../shared/data,
where the target is real text rather than a label: PubMedQA question + abstract -> the
expert's conclusion (medical), and Self-Instruct user-oriented instruction -> the human-written
output (general), and prints each model's bits per byte on each: which domain separates them.

The example projects hold out only 10% of train for validation (30 rows for support-intents),
so the benchmark points data.validation at the project's 200-row test.csv (real banking77
messages) to time 200 validation examples. Each candidate runs in its own process, as the CLI
does. The machine's load average is printed before and after: other processes on a shared
CPU slow every figure down. Target: <= 10 minutes on the 2-core CPU.

Measured figures: see docs/select.md (with the exact command and the load average then).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = ["smollm2-135m-instruct", "gemma3-270m"]


def _cpu() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _domain_projects(root: Path, n: int) -> dict[str, Path]:
    """prompt/completion projects (n validation + 40 train rows each) from the shared data."""
    import yaml

    data = Path(os.environ.get("TUNELOOP_DATA", ROOT.parent / "shared" / "data"))
    pqa = json.loads((data / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8"))
    medical = []
    for rec in pqa.values():
        abstract = " ".join(" ".join(rec["CONTEXTS"]).split())[:450]
        medical.append({"prompt": f"Question: {rec['QUESTION']}\nAbstract: {abstract}\n\n"
                                  "State the study's conclusion.", "completion": rec["LONG_ANSWER"]})
    general = []
    for line in (data / "self_instruct" / "user_oriented_instructions.jsonl").open(encoding="utf-8"):
        t = json.loads(line)
        inst = t["instances"][0]
        general.append({"prompt": (t["instruction"] + ("\n\n" + inst["input"] if inst["input"]
                                                         else "")), "completion": inst["output"]})
    out = {}
    for name, rows in (("medical", medical), ("general", general)):
        d = root / name
        d.mkdir(parents=True)
        for split, part in (("train", rows[n:n + 40]), ("validation", rows[:n])):
            (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        cfg = {"data": {"train": "train.jsonl", "validation": "validation.jsonl"},
               "task": {"type": "generation"}, "model": {"max_seq_len": 384},
               "train": {"epochs": 1, "batch_size": 8},
               "eval": {"batch_size": 8, "few_shot_k": 0, "max_new_tokens": 32}}
        (d / "tuneloop.yaml").write_text(yaml.safe_dump(cfg))
        out[name] = d
    return out


def domains(n: int) -> None:
    """Each model's bits per byte on medical vs general text targets (and the task metric)."""
    import tempfile

    from tuneloop.select.run import run_select

    with tempfile.TemporaryDirectory() as tmp:
        for name, proj in _domain_projects(Path(tmp), n).items():
            t0 = time.perf_counter()
            res = run_select(proj, CANDIDATES, max_examples=n, quiet=not sys.stderr.isatty())
            print(f"{name}: {res['examples']} validation examples, {time.perf_counter() - t0:.0f} s")
            for c in res["candidates"]:
                if c["status"] != "ok":
                    print(f"  {c['name']}: {c['status']}: {c['error']}")
                    continue
                b = c["quality"]["bits_per_byte"]
                print(f"  {c['name']}: bits/byte {b['value']:.3f} [{b['ci'][0]:.3f}, "
                      f"{b['ci'][1]:.3f}], zero-shot {res['primary_metric']} "
                      f"{c['metrics']['zero_shot']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", default=str(ROOT / "examples" / "support-intents"))
    ap.add_argument("--n", type=int, default=200, help="validation examples")
    ap.add_argument("--validation", default="test.csv",
                    help="file (relative to the project) used as the validation split")
    ap.add_argument("--threads", type=int, default=None, help="OMP/torch threads per candidate")
    ap.add_argument("--probe-steps", type=int, default=0)
    ap.add_argument("--few-shot-examples", type=int, default=50)
    ap.add_argument("--out", default=None, help="also write the full JSON result here")
    ap.add_argument("--domains", action="store_true", help="medical vs general bits per byte")
    args = ap.parse_args()
    if args.domains:
        domains(args.n if args.n != 200 else 60)
        return
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the measuring processes

    from tuneloop.models.load import resolve_model
    from tuneloop.select.run import run_select

    for c in CANDIDATES:  # GGUF conversion happens once; it is not what this times
        resolve_model(c)
    load0 = os.getloadavg()
    cpu0 = _cpu()
    t0 = time.perf_counter()
    res = run_select(args.project, CANDIDATES, probe_steps=args.probe_steps, max_examples=args.n,
                     few_shot_examples=args.few_shot_examples,
                     overrides=[f"data.validation={args.validation}"], quiet=not sys.stderr.isatty())
    wall = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    load1 = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    print(f"project {args.project}: {res['examples']} validation examples, few-shot k="
          f"{res['few_shot_k']} on {res['few_shot_examples']}, probe steps {args.probe_steps}, threads "
          f"{args.threads or 'default'}, {os.cpu_count()} CPUs")
    for c in res["candidates"]:
        print(f"  {c['name']}: {c['status']}, {c['seconds']:.1f} s wall in its process, "
              f"{c['cpu_s']:.0f} CPU s"
              + (f", score {c['score']:.3f}, bpb {c['metrics']['bpb']:.3f}" if c["status"] == "ok"
                 else f": {c['error']}"))
        if c.get("stage_seconds"):
            print("    stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in c["stage_seconds"].items()))
    print(f"winner {res['winner']}; total wall time {wall:.1f} s ({wall / 60:.2f} min; target "
          f"<= 10 min: {'met' if wall <= 600 else 'MISSED'})")
    print(f"CPU time (user+sys, this process and the measuring processes): {cpu:.0f} s; on an "
          f"idle {os.cpu_count()}-core machine the wall time would lie between "
          f"{cpu / (os.cpu_count() or 1) / 60:.1f} and {cpu / 60:.1f} min")
    print(f"load average 1/5/15 min: before {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
          f"after {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} (other processes share the CPU)")


if __name__ == "__main__":
    main()
