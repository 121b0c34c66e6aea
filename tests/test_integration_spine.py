"""The spine end to end on the real bundled model, through the CLI as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support-intents"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneloop", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.integration
def test_train_generate_export_on_the_bundled_model(tmp_path):
    res = _cli("train", str(EXAMPLE), "--json", "--set", "train.max_steps=2",
               "--set", f"output.dir={tmp_path}", "--set", "output.name=real")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    run = tmp_path / "real"
    assert summary["steps"] == 2 and summary["val_loss"] is not None
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 1_000_000
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0 for r in recs if "loss" in r)

    res = _cli("generate", str(run), "I still have not received my new card", "--json",
               "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["reply"].strip()

    res = _cli("export", str(run), "--merge", str(tmp_path / "merged"), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["max_logit_diff"] < out["tolerance"]
    assert (tmp_path / "merged" / "model.safetensors").exists()
