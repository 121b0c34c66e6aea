"""Base-model selection by measurement on the user's own validation data (`tuneloop select`).

For each candidate, in its own process: bits per byte of the targets given the prompts
(tokenizer-independent), zero- and few-shot task metrics (the evaluation stage's own scoring),
parameters, load time, peak memory, latency per generated token, and the training estimator's
time and memory for this data set; optionally a short LoRA probe. The numbers are then ranked
by a weighted score (rank.py) and the winner can be written into the config (write.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tuneloop.config import Config, load_config
from tuneloop.console import progress
from tuneloop.data.load import load_splits
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.baselines import few_shot_prompts
from tuneloop.evaluate.scoring import PRIMARY
from tuneloop.models.catalog import CATALOG
from tuneloop.models.load import resolve_model
from tuneloop.records import label_set
from tuneloop.select import gpu
from tuneloop.select.measure import STAGES, measure
from tuneloop.select.rank import effective_weights, parse_weights, rank
from tuneloop.select.write import set_model_name

Report = Callable[[str], None]


def parse_memory(spec: str | None) -> float | None:
    """'8GB', '512MB', '8GiB' or a bare number of GB -> GB (2**30 bytes, as the estimator)."""
    if spec is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B?)?\s*", spec, re.IGNORECASE)
    if not m:
        raise TuneloopError(f"--max-memory {spec!r}: expected a size like 8GB or 512MB")
    unit = (m.group(2) or "GB").upper().replace("I", "").rstrip("B") or "G"
    scale = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 2**10}.get(unit)
    if scale is None:
        raise TuneloopError(f"--max-memory {spec!r}: unknown unit; use KB, MB, GB or TB")
    return float(m.group(1)) * scale


def parse_candidates(spec: str) -> list[str]:
    """Comma list of catalog names, model folders or hub ids; duplicates removed, order kept."""
    names = list(dict.fromkeys(c.strip() for c in spec.split(",") if c.strip()))
    if not names:
        raise TuneloopError("--candidates is empty; e.g. --candidates smollm2-135m-instruct,gemma3-270m")
    return names


def _candidate_name(c: str) -> str:
    """Folders are written as absolute paths: the config resolves names against its own folder."""
    p = Path(c).expanduser()
    return str(p.resolve()) if c not in CATALOG and p.is_dir() else c


def _precheck(candidate: str) -> dict | None:
    """A failed row for a folder that is missing or has no config.json, without a process."""
    if candidate in CATALOG:
        return None  # resolving may convert a GGUF: that belongs to the measured process
    try:
        resolve_model(candidate)
    except TuneloopError as e:
        return {"name": candidate, "status": "failed", "failed_stage": "resolve", "error": str(e)}
    return None


def _die_with_parent() -> None:
    """Linux: the measuring process gets SIGTERM when `tuneloop select` itself is killed."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _isolated(spec: dict, report: Report) -> dict:
    """measure() in a child process; a crash (even a segfault) becomes a failed row."""
    with tempfile.TemporaryDirectory(prefix="tuneloop-select-") as d:
        sp, op, ep = Path(d) / "spec.json", Path(d) / "out.json", Path(d) / "stderr.txt"
        sp.write_text(json.dumps(spec))
        env = os.environ | {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
        # OpenMP threads that spin while waiting waste the CPU when other processes share it:
        # measured here (2 cores, load ~8), zero-shot scoring on 2 spinning threads took 2.7-3.7x
        # the wall time and 4-5x the CPU time of one thread; passive waiting matched one thread.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with open(ep, "w") as errf:
            proc = subprocess.Popen([sys.executable, "-m", "tuneloop.select.measure", str(sp),
                                     str(op)], stdout=subprocess.PIPE, stderr=errf, text=True,
                                    env=env, preexec_fn=_die_with_parent)
            try:
                for line in proc.stdout or []:
                    try:
                        report(json.loads(line)["stage"])
                    except (ValueError, KeyError, TypeError):
                        pass  # a library printed to stdout; not ours
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if op.exists():
            return json.loads(op.read_text())
        tail = [ln for ln in ep.read_text(errors="replace").splitlines() if ln.strip()]
        return {"name": spec["candidate"], "status": "failed", "failed_stage": None,
                "error": f"measuring process exited with code {rc}"
                         + (f": {tail[-1]}" if tail else ""), "stderr_tail": tail[-20:]}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def flat_metrics(r: dict, primary: str) -> dict:
    """The numbers the ranking uses, from one measured result (None where not measured)."""
    q = r.get("quality") or {}

    def val(d: dict | None) -> float | None:
        return (d or {}).get("value")

    return {"bpb": val(q.get("bits_per_byte")),
            "zero_shot": val((q.get("zero_shot") or {}).get(primary)),
            "few_shot": val((q.get("few_shot") or {}).get(primary)),
            "adapt": (r.get("probe") or {}).get("bpb_drop_per_step"),
            "latency": (r.get("latency") or {}).get("s_per_token"),
            "memory": (r.get("train") or {}).get("estimated_peak_memory_gb"),
            "train_time": _train_minutes(r.get("train"))}


def _tokens_per_s(t: dict) -> float | None:
    return t.get("predicted_tokens_per_s") or t.get("measured_tokens_per_s")


def _train_minutes(t: dict | None) -> float | None:
    """The estimator's minutes, unrounded (it rounds to 0.01, which is 0 for tiny runs)."""
    if not t:
        return None
    if t.get("predicted_step_seconds") is not None:
        return round(t["predicted_step_seconds"] * t["steps"] / 60, 5)
    return round(t["planned_tokens"] / t["measured_tokens_per_s"] / 60, 5) \
        if t.get("measured_tokens_per_s") else None


def _gpu_rows(r: dict, cfg) -> list[dict]:
    t, tok = r["train"], r["tokens"]["train"]
    return gpu.extrapolate(r["params"], r["trainable_params"], r["arch"], t["planned_tokens"],
                           cfg.train.batch_size, tok["length_max"], cfg.method.name == "full")


def _spec(config: str | Path, overrides: list[str] | None, max_examples: int | None,
          few_shot_examples: int | None) -> tuple[Config, dict]:
    """(config, what every measuring process needs): examples, labels, few-shot prompts."""
    cfg = load_config(config, overrides)
    splits = load_splits(cfg)
    val = _sample(splits.validation, max_examples, cfg.seed)
    if not val:
        raise TuneloopError(f"{config}: no validation examples to measure on; set data.validation "
                            "or data.validation_fraction above 0 (with at least 10 rows)")
    labels = label_set(splits.train, cfg.task.labels) or None
    if cfg.task.type == "classification" and labels:
        cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"labels": labels})})
    shots = None
    # k solved examples make a prompt k+1 times longer: on a CPU the few-shot pass costs more
    # than everything else together, so it runs on the first `few_shot_examples` only.
    shot_ids = [e.id for e in _sample(val, few_shot_examples, cfg.seed)]
    if cfg.eval.few_shot_k > 0 and splits.train and shot_ids:
        by_id = {e.id: e for e in val}
        # Prompts are text, the same for every candidate: retrieve once, here.
        shots = [[{"role": m.role, "content": m.content} for m in p]
                 for p in few_shot_prompts([by_id[i] for i in shot_ids], splits.train,
                                           cfg.eval.few_shot_k, cfg.task)]
    return cfg, {"config": cfg.model_dump(mode="json"), "labels": labels,
                 "validation": [e.to_dict() for e in val],
                 "train": [e.to_dict() for e in splits.train], "few_shot_prompts": shots,
                 "few_shot_ids": shot_ids if shots else None}


def _sample(examples: list, n: int | None, seed: int) -> list:
    """A seeded random subset of n examples in file order (all when n is None or larger):
    the first n rows of a file sorted by label would cover only a few labels."""
    if n is None or n >= len(examples):
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), max(n, 0)))
    return [e for i, e in enumerate(examples) if i in keep]


def run_select(config: str | Path, candidates: list[str], max_memory: str | None = None,
               probe_steps: int = 0, weights: str | None = None, max_examples: int | None = 200,
               few_shot_examples: int | None = 50, overrides: list[str] | None = None,
               quiet: bool = False, isolate: bool = True, write: bool = False) -> dict:
    """Measure and rank candidate base models on the config's validation split."""
    t_start = time.perf_counter()
    w = parse_weights(weights)  # fail on a bad flag before minutes of measuring
    limit_gb = parse_memory(max_memory)
    if probe_steps < 0:
        raise TuneloopError("--probe-steps must be 0 or more")
    cfg, spec = _spec(config, overrides, max_examples, few_shot_examples)
    spec |= {"max_memory_gb": limit_gb, "probe_steps": probe_steps}
    shots, val = spec["few_shot_prompts"], spec["validation"]
    stages = [s for s in STAGES if (s != "probe" or probe_steps) and (s != "few_shot" or shots)]
    results = []
    with progress(quiet) as bar:
        for c in candidates:
            task = bar.add_task(f"{c}: start", total=len(stages))

            def report(stage: str, task=task, c=c) -> None:
                done = stages.index(stage) if stage in stages else len(stages)
                bar.update(task, completed=done, description=f"{c}: {stage}")

            s = spec | {"candidate": c}
            cpu0 = _cpu_seconds()
            r = _precheck(c) or (_isolated(s, report) if isolate else measure(s, report))
            # CPU seconds do not depend on how many other processes share the machine.
            r["cpu_s"] = round(_cpu_seconds() - cpu0, 1)
            bar.update(task, completed=len(stages), description=f"{c}: {r['status']}")
            results.append(r)
    primary = PRIMARY[cfg.task.type]
    ok = [r | {"metrics": flat_metrics(r, primary)} for r in results if r["status"] == "ok"]
    for r in ok:
        r["gpu"] = _gpu_rows(r, cfg)
        r["cpu_train_tflops"] = round(gpu.achieved_tflops(
            r["params"], _tokens_per_s(r["train"]) or 0.0, cfg.method.name == "full"), 4)
    ranked = rank(ok, w)
    others = [r for r in results if r["status"] != "ok"]
    res = {"config": str(config), "task": cfg.task.type, "primary_metric": primary,
           "split": "validation", "examples": len(val), "few_shot_k": cfg.eval.few_shot_k,
           "few_shot_examples": len(shots or []),
           "weights": effective_weights(w, ok) if ok else w, "max_memory_gb": limit_gb,
           "probe_steps": probe_steps, "candidates": ranked + others,
           "winner": ranked[0]["name"] if ranked else None,
           "assumptions": [gpu.ASSUMPTIONS,
                           "peak_rss_gb: process peak RSS (VmHWM) of the candidate's own "
                           "process during load and scoring; train memory and minutes: "
                           "train.estimate's prediction for the planned run (process RSS)",
                           "latency: batch-1 greedy decoding, prefill excluded"],
           "seconds": None}
    if write and ranked:
        res["written"] = set_model_name(config, _candidate_name(ranked[0]["name"]))
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    return res
