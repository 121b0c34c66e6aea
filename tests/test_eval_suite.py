"""`tuneloop eval / report / review / curve` end to end on a tiny random model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import write_classification_project
from tuneloop.cli import app

runner = CliRunner()


def _project(root: Path, model: Path) -> Path:
    cfg = write_classification_project(root, model, n=40, train={"max_steps": 2},
                                       eval={"few_shot_k": 2})
    shutil.copy(root / "train.jsonl", root / "test.jsonl")
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["test"] = "test.jsonl"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model) -> Path:
    from tuneloop.config import load_config
    from tuneloop.train.recipe import train

    cfg = _project(tmp_path_factory.mktemp("evalproj"), tiny_model)
    run, _ = train(load_config(cfg), quiet=True)
    return run


def _ok(args: list[str]):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def test_eval_json_shape_and_report(trained):
    res = json.loads(_ok(["eval", str(trained), "--json", "--limit", "12",
                          "--bootstrap", "200"]).stdout)
    assert set(res["systems"]) == {"zero_shot", "few_shot", "embedding_classifier", "finetuned"}
    for _name, s in res["systems"].items():
        assert set(s) == {"metrics", "cost"}
        for m in s["metrics"].values():
            assert set(m) == {"value", "ci"} and len(m["ci"]) == 2
            assert m["ci"][0] <= m["value"] <= m["ci"][1]
        assert "latency_s_per_example" in s["cost"]
    ft = res["systems"]["finetuned"]["metrics"]
    assert {"accuracy", "macro_f1", "generation_accuracy", "parse_failure_rate",
            "perplexity", "bits_per_byte"} <= set(ft)
    assert res["systems"]["finetuned"]["cost"]["tokens_per_query"] > 0
    assert res["systems"]["embedding_classifier"]["cost"]["tokens_per_query"] is None
    assert {c["b"] for c in res["comparisons"]} == {"zero_shot", "few_shot",
                                                     "embedding_classifier"}
    acc = [c for c in res["comparisons"] if c["metric"] == "accuracy"]
    assert all(c["test"] == "mcnemar_exact" and "verdict" in c for c in acc)
    ev = trained / "eval"
    preds = (ev / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 4 * 12
    _ok(["report", str(trained)])
    page = (ev / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "Confusion matrix" in page
    assert "| finetuned |" in (ev / "report" / "report.md").read_text()


def test_review_round_trip(trained, tmp_path):
    if not (trained / "eval" / "eval.json").exists():
        _ok(["eval", str(trained), "--limit", "6", "--bootstrap", "50", "-q",
             "--baselines", "zero_shot"])
    _ok(["review", "export", str(trained), "-n", "4"])
    sheet = trained / "eval" / "review" / "review.csv"
    rows = list(csv.DictReader(sheet.open()))
    assert rows and all(r["rating"] == "" for r in rows)
    assert "finetuned" not in sheet.read_text()  # blind: systems appear only as codes
    key = json.loads((trained / "eval" / "review" / "key.json").read_text())
    for r in rows:
        r["rating"] = "5" if key[r["system_code"]] == "finetuned" else "2"
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = json.loads(_ok(["review", "import", str(trained), str(filled), "--json"]).stdout)
    assert res["systems"]["finetuned"]["mean_rating"]["value"] == 5.0
    rows[0]["rating"] = "9"
    with filled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    bad = runner.invoke(app, ["review", "import", str(trained), str(filled)])
    assert bad.exit_code != 0 and "outside 1-5" in str(bad.exception)


def test_curve_nested_sizes(tmp_path, tiny_model):
    cfg = _project(tmp_path / "p", tiny_model)
    res = json.loads(_ok(["curve", str(cfg), "--sizes", "12,24", "--limit", "6",
                          "--bootstrap", "50", "--json"]).stdout)
    assert [p["requested"] for p in res["points"]] == [12, 24]
    assert res["points"][0]["train_examples"] < res["points"][1]["train_examples"]
    assert all(res["metric"] in p["metrics"] for p in res["points"])
    assert (Path(res["curve_dir"]) / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_baseline_name_is_a_user_error(tiny_project):
    res = runner.invoke(app, ["eval", str(tiny_project), "--baselines", "gpt5"])
    assert res.exit_code != 0 and "unknown" in str(res.exception)


def test_seeds_report_variance_from_a_config(tmp_path, tiny_model):
    cfg = _project(tmp_path / "s", tiny_model)
    res = json.loads(_ok(["eval", str(cfg), "--seeds", "2", "--baselines", "none",
                          "--limit", "6", "--bootstrap", "50", "--no-generate",
                          "--json"]).stdout)
    assert set(res["systems"]) == {"finetuned"} and len(res["runs"]) == 2
    sv = res["seed_variance"]["accuracy"]
    assert len(sv["values"]) == 2 and sv["std"] >= 0
