"""Two CPU processes (DDP over gloo) follow the same trajectory as one with the same global batch."""

import json
import os
import subprocess
import sys

import pytest

from tuneloop.config import load_config
from tuneloop.train.recipe import train

COMMON = ["train.max_steps=3", "method.dropout=0", "model.dtype=fp32", "train.eval_every=3"]


def _metrics(run):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r]


def test_two_processes_match_one_with_the_same_global_batch(tiny_project):
    one, _ = train(load_config(tiny_project, COMMON + ["train.batch_size=4", "output.name=one"]),
                   quiet=True)
    args = [a for kv in COMMON + ["train.batch_size=2", "output.name=two"] for a in ("--set", kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tuneloop", "train", str(tiny_project), "--nproc", "2",
                           "--quiet", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tiny_project.parent / "runs" / "two"
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    loss1, val1 = _metrics(one)
    loss2, val2 = _metrics(two)
    assert len(loss1) == len(loss2) == 3
    assert loss2 == pytest.approx(loss1, abs=1e-4)
    assert val2 == pytest.approx(val1, abs=1e-4)


def test_qlora_is_refused_on_cpu_with_a_clear_error(tiny_project):
    from tuneloop.errors import TuneloopError

    cfg = load_config(tiny_project, ["method.quantize=4bit", "model.device=cpu", "output.name=q"])
    with pytest.raises(TuneloopError, match="needs a CUDA GPU"):
        train(cfg, quiet=True)
