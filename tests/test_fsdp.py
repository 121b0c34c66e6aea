"""Two CPU processes with FSDP2 (gloo) follow the same trajectory as one with the same global batch.

Accelerate (1.15) runs no FSDP on CPU: `ACCELERATE_USE_FSDP=true` there gives plain DDP. So on
CPU tuneloop shards the model itself with torch's `fully_shard` (train/step.py `shard`), for
both commands a user would type: `tuneloop train --nproc 2 --fsdp`, and `accelerate launch`
with examples/accelerate/fsdp2-cpu-2proc.yaml.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_ddp import COMMON, _metrics
from tuneloop.config import load_config
from tuneloop.train.recipe import train

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "examples" / "accelerate" / "fsdp2-cpu-2proc.yaml"
LAUNCHES = {
    "nproc": lambda project: ["-m", "tuneloop", "train", str(project), "--nproc", "2", "--fsdp"],
    "accelerate": lambda project: ["-m", "accelerate.commands.launch", "--config_file",
                                   str(CPU_CONFIG), "-m", "tuneloop", "train", str(project)],
}


@pytest.mark.parametrize("launch", LAUNCHES)
def test_fsdp_on_two_cpu_processes_matches_one_with_the_same_global_batch(tiny_project, launch):
    one, one_summary = train(load_config(tiny_project, COMMON + ["train.batch_size=4",
                                                                "output.name=one"]), quiet=True)
    two_only = ["train.batch_size=2", "train.save_every=2", "output.name=fsdp"]
    args = [a for kv in COMMON + two_only for a in ("--set", kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *LAUNCHES[launch](tiny_project), "--quiet", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tiny_project.parent / "runs" / "fsdp"
    summary = json.loads((two / "summary.json").read_text())
    # Read off the model after training: its parameters were DTensor shards (FSDP2), not DDP
    # copies (without tuneloop's own sharding this said "ddp": Accelerate's CPU fallback).
    assert (summary["processes"], summary["distributed"]) == (2, "fsdp2")
    assert one_summary["distributed"] == "none"
    loss1, val1 = _metrics(one)
    loss2, val2 = _metrics(two)
    assert len(loss1) == len(loss2) == 3
    assert loss2 == pytest.approx(loss1, abs=1e-4)
    assert val2 == pytest.approx(val1, abs=1e-4)
    # Checkpoints of sharded state are not wired yet: skipped, and said so, not written torn.
    assert "checkpoints are skipped" in proc.stderr
    assert not (two / "checkpoints").exists()
    # The adapter was gathered from the shards: whole LoRA matrices, the same as one process's.
    from safetensors.torch import load_file

    a1 = load_file(one / "adapter" / "adapter_model.safetensors")
    a2 = load_file(two / "adapter" / "adapter_model.safetensors")
    assert a1.keys() == a2.keys() and a1
    for k in a1:
        assert a2[k].shape == a1[k].shape
        assert (a2[k] - a1[k]).abs().max().item() < 1e-4, k


def test_fsdp_without_several_processes_is_refused(tiny_project):
    proc = subprocess.run([sys.executable, "-m", "tuneloop", "train", str(tiny_project), "--fsdp"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--nproc 2" in proc.stderr + proc.stdout
