"""`tuneloop quickstart` on the bundled example's data with a tiny model (seconds): it reports
both systems with a bootstrap interval around the accuracy, and its own wall time by stage."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app


def test_quickstart_reports_accuracy_intervals_and_its_wall_time(tiny_model, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [
        "quickstart", "--json", "--set", f"model.name={tiny_model}",
        "--set", "train.max_steps=2", "--set", "eval.max_examples=12"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = json.loads(res.stdout)
    assert out["test_examples"] == 12 and out["train"]["steps"] == 2
    for m in out["systems"].values():
        lo, hi = m["accuracy_ci"]
        assert lo <= m["accuracy"] <= hi
        # accuracy on 12 examples is a multiple of 1/12
        assert m["accuracy"] * 12 == pytest.approx(round(m["accuracy"] * 12))
    sec = out["seconds"]
    parts = sec["base_scoring_and_load"] + sec["train"] + sec["finetuned_scoring"]
    assert parts == pytest.approx(sec["wall"], abs=0.3)
    assert (tmp_path / "runs").is_dir()
