"""`train.sample_every`: answers to fixed validation prompts while training, and in the report.

The learnable tiny model learns the two-label task in about 20 steps, so its sampled answers go
from noise at step 0 to the reference labels at the last step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_classification_project, write_rows
from tuneloop.config import load_config
from tuneloop.evaluate.report import build_report
from tuneloop.train import progress
from tuneloop.train.recipe import train

EVERY, PROMPTS, STEPS = 4, 3, 20
SAMPLED = [f"train.sample_every={EVERY}", f"train.sample_prompts={PROMPTS}"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, learnable_model) -> Path:
    """Train rows 0..39, validation rows 200..207 in their own file; 20 steps that learn."""
    root = tmp_path_factory.mktemp("samples-proj")
    write_rows(root / "validation.jsonl", range(200, 208))
    return write_classification_project(
        root, learnable_model, data={"validation": "validation.jsonl"},
        train={"max_steps": STEPS, "learning_rate": 1e-2, "save_every": 5},
        eval={"max_new_tokens": 8})


@pytest.fixture(scope="module")
def sampled(project) -> Path:
    run, _ = train(load_config(project, SAMPLED + ["output.name=sampled"]), quiet=True)
    return run


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]


def _metrics(run: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in recs]


def test_samples_at_step_zero_every_n_and_the_last(sampled):
    rows = _rows(sampled)
    steps = sorted({r["step"] for r in rows})
    assert steps == [0, 4, 8, 12, 16, 20]
    first_ids = [r["id"] for r in rows if r["step"] == 0]
    assert first_ids == ["1", "2", "3"]  # the first validation rows (ids: 1-based row numbers)
    for s in steps:  # the same fixed prompts, in the same order, at every step
        at = [r for r in rows if r["step"] == s]
        assert [r["id"] for r in at] == first_ids
        assert all(r["split"] == "validation" and "Text:" in r["prompt"] for r in at)
    last = [r for r in rows if r["step"] == STEPS]
    assert [r["output"] for r in last] == [r["reference"] for r in last]  # the form was learnt
    assert [r["output"] for r in rows if r["step"] == 0] != [r["reference"] for r in last]


def test_sampling_does_not_change_training(sampled, project):
    plain, _ = train(load_config(project, ["output.name=plain"]), quiet=True)
    assert not (plain / "samples.jsonl").exists()
    assert _metrics(plain) == _metrics(sampled)  # bit for bit: same losses, same val losses
    a = load_file(str(plain / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(sampled / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_writes_each_step_once(sampled, project, monkeypatch):
    # Crash after step 9 is logged: samples at 0, 4 and 8 are written, the checkpoint is step
    # 5's; the resumed run drops step 8's rows, replays it, and ends with the same samples.
    real = progress.MetricsLog.write

    def write(self, rec):
        real(self, rec)
        if rec.get("step") == 9 and "loss" in rec:
            raise RuntimeError("simulated crash")

    cfg = load_config(project, SAMPLED + ["output.name=cut"])
    monkeypatch.setattr(progress.MetricsLog, "write", write)
    with pytest.raises(RuntimeError):
        train(cfg, quiet=True)
    monkeypatch.undo()
    run = Path(cfg.output.dir) / "cut"
    assert sorted({r["step"] for r in _rows(run)}) == [0, 4, 8]
    train(cfg, resume=run, quiet=True)
    assert _rows(run) == _rows(sampled)


def _write_eval(run: Path) -> None:
    """The smallest eval.json the report reads: one system, one metric."""
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / "eval.json").write_text(json.dumps({
        "task": "classification", "examples": 1, "split": "test", "model": "tiny",
        "primary_metric": "accuracy", "comparisons": [], "details": {},
        "systems": {"finetuned": {"metrics": {"accuracy": {"value": 1.0, "ci": [1.0, 1.0]}},
                                  "cost": {}}}}))


def test_report_shows_how_answers_changed(sampled):
    _write_eval(sampled)
    paths = build_report(sampled)
    md = Path(paths["markdown"]).read_text()
    rep = json.loads(Path(paths["json"]).read_text())["samples"]
    assert "## Samples during training (validation prompts, greedy)" in md
    assert rep["steps"] == [0, 4, 8, 12, 16, 20] and len(rep["prompts"]) == PROMPTS
    last = {r["id"]: r["output"] for r in _rows(sampled) if r["step"] == STEPS}
    for p in rep["prompts"]:
        assert p["outputs"][-1] == last[p["id"]]
        assert f"| {STEPS} | {last[p['id']]} | yes |" in md
    assert "<h2>Samples during training</h2>" in Path(paths["html"]).read_text()


def test_report_escapes_sampled_text(tmp_path):
    run = tmp_path / "run"
    _write_eval(run)
    rows = [{"step": s, "id": "a", "split": "validation", "prompt": "p <i>", "reference": "ok",
             "output": out} for s, out in ((0, "<script>x|y</script>"), (5, "ok"))]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = build_report(run)
    page, md = Path(paths["html"]).read_text(), Path(paths["markdown"]).read_text()
    assert "<script>" not in page and "&lt;script&gt;x|y&lt;/script&gt;" in page
    assert "p &lt;i&gt;" in page
    assert "| 0 | <script>x\\|y</script> |  |" in md and "| 5 | ok | yes |" in md
    (run / "samples.jsonl").unlink()  # a run without train.sample_every: no section
    assert "Samples during training" not in Path(build_report(run)["markdown"]).read_text()
