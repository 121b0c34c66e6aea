"""Seconds to audit 1,000 and 10,000 real banking77 records, embeddings and tokenizer included.

Run: OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/audit_speed.py [--sizes 1000,10000]
Prints wall seconds and CPU seconds (all threads of this process): on a shared machine wall time
grows with the load while CPU seconds stay close to what the work costs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _banking77 import banking77  # noqa: E402

from tuneloop.config import parse_config  # noqa: E402
from tuneloop.data.audit import run_audit  # noqa: E402
from tuneloop.models.load import load_tokenizer, resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    args = ap.parse_args()
    rows = banking77()
    tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    from tuneloop.models.embed import embed

    embed(["warm up"])  # load MiniLM once, outside the timings
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for n in (int(x) for x in args.sizes.split(",")):
            path = Path(d) / f"b{n}.jsonl"
            path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                                    for t, lab in rows[:n]))
            cfg = parse_config({"data": {"train": str(path)},
                                "task": {"type": "classification"}})
            t0, c0 = time.perf_counter(), time.process_time()
            report = run_audit(path, cfg, tokenizer=tok)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            results[n] = secs
            print(f"audit {n:>6} records: {secs:6.1f} s wall, {cpu:6.1f} s CPU (with embeddings "
                  f"and tokenizer), score {report.score}, {len(report.findings)} findings")
    if len(results) >= 2:
        (a, ta), (b, tb) = sorted(results.items())[:2]
        print(f"growth: {b / a:.0f}x records -> {tb / ta:.1f}x time")


if __name__ == "__main__":
    main()
