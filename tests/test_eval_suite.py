"""`tuneloop eval / report / review / curve` end to end on a tiny model that learns its task.

The project trains on rows 0..39 and is evaluated on the first 16 rows of a held-out test
file (rows 100..119): no test row is a training row. Every figure in eval.json is checked
against a recomputation from predictions.jsonl: accuracy and macro-F1 with their bootstrap
intervals (same seed and resamples, on the --limit examples), McNemar's test and the paired
bootstrap of macro-F1 against each baseline, and the seed variance from each seed's own run.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from conftest import LABELS, write_classification_project, write_rows
from tuneloop.cli import app

runner = CliRunner()
TEST_ROWS, LIMIT, BOOT = range(100, 120), 16, 200


def _project(root: Path, model: Path, **train) -> Path:
    """Train rows 0..39; validation rows 200..207 and test rows 100..119 in their own files."""
    write_rows(root / "test.jsonl", TEST_ROWS)
    write_rows(root / "validation.jsonl", range(200, 208))
    return write_classification_project(
        root, model, n=40, eval={"few_shot_k": 2},
        data={"test": "test.jsonl", "validation": "validation.jsonl"},
        train={"max_steps": 20, "learning_rate": 1e-2} | train)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, learnable_model) -> Path:
    from tuneloop.config import load_config
    from tuneloop.train.recipe import train

    cfg = _project(tmp_path_factory.mktemp("evalproj"), learnable_model)
    run, _ = train(load_config(cfg), quiet=True)
    return run


def _ok(args: list[str]):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def _seed(run: Path) -> int:
    return yaml.safe_load((run / "config.yaml").read_text())["seed"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def _percentile_ci(stat, n: int, n_boot: int, seed: int) -> list[float]:
    """95% percentile bootstrap over examples, written out from its definition."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return [round(float(v), 6) for v in np.percentile([stat(ix) for ix in idx], [2.5, 97.5])]


def _macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over LABELS: 2TP / (2TP + FP + FN) per label, 0 for a label never seen."""
    f1 = []
    for lab in LABELS:
        tp = np.sum((pred == lab) & (gold == lab))
        denom = np.sum(pred == lab) + np.sum(gold == lab)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


@pytest.fixture(scope="module")
def evaluated(trained) -> tuple[dict, dict[str, list[dict]]]:
    """`tuneloop eval RUN --json --limit 16`: its result and its predictions per system."""
    res = json.loads(_ok(["eval", str(trained), "--json", "--limit", str(LIMIT),
                          "--bootstrap", str(BOOT)]).stdout)
    by_system: dict[str, list[dict]] = {}
    for r in _rows(trained / "eval" / "predictions.jsonl"):
        by_system.setdefault(r["system"], []).append(r)
    return res, by_system


def test_eval_runs_on_the_first_limit_held_out_test_rows(trained, evaluated):
    res, preds = evaluated
    assert res["split"] == "test" and res["examples"] == LIMIT
    assert set(preds) == set(res["systems"]) == {"zero_shot", "few_shot",
                                                 "embedding_classifier", "finetuned"}
    test = _rows(trained.parent.parent / "test.jsonl")[:LIMIT]
    train = {r["text"] for r in _rows(trained.parent.parent / "train.jsonl")}
    for rows in preds.values():
        assert [r["reference"] for r in rows] == [t["label"] for t in test]
        assert all(t["text"] in r["input"] for r, t in zip(rows, test, strict=True))
    assert not {t["text"] for t in test} & train
    # the model learns the task: right on every held-out row, and better than its base
    ft, zs = res["systems"]["finetuned"]["metrics"], res["systems"]["zero_shot"]["metrics"]
    assert ft["accuracy"]["value"] == 1.0 > zs["accuracy"]["value"]


def test_metrics_and_intervals_recomputed_from_the_predictions(evaluated):
    res, preds = evaluated
    seed = res["bootstrap"]["seed"]
    assert res["bootstrap"]["resamples"] == BOOT
    for name, rows in preds.items():
        m = res["systems"][name]["metrics"]
        correct = np.array([r["prediction"] == r["reference"] for r in rows], dtype=float)
        assert [r["correct"] for r in rows] == correct.tolist()
        gold = np.array([r["reference"] for r in rows])
        pred = np.array([r["prediction"] for r in rows])
        assert m["accuracy"]["value"] == pytest.approx(correct.mean(), abs=1e-6)
        assert m["accuracy"]["ci"] == pytest.approx(
            _percentile_ci(lambda ix, c=correct: c[ix].mean(), LIMIT, BOOT, seed), abs=1e-6)
        assert m["macro_f1"]["value"] == pytest.approx(_macro_f1(gold, pred), abs=1e-6)
        assert _macro_f1(gold, pred) == pytest.approx(
            f1_score(gold, pred, labels=LABELS, average="macro", zero_division=0))
        assert m["macro_f1"]["ci"] == pytest.approx(_percentile_ci(
            lambda ix, g=gold, p=pred: _macro_f1(g[ix], p[ix]), LIMIT, BOOT, seed), abs=1e-6)
        for v in m.values():
            assert v["ci"][0] <= v["value"] <= v["ci"][1]
    for name in ("zero_shot", "few_shot", "finetuned"):  # the LLMs also free-generate an answer
        gen = np.array([r["gen_correct"] for r in preds[name]])
        m = res["systems"][name]["metrics"]["generation_accuracy"]
        assert m["value"] == pytest.approx(gen.mean(), abs=1e-6)
    ft = res["systems"]["finetuned"]
    assert {"accuracy", "macro_f1", "generation_accuracy", "parse_failure_rate",
            "perplexity", "bits_per_byte"} <= set(ft["metrics"])
    assert ft["cost"]["tokens_per_query"] > 0
    assert res["systems"]["embedding_classifier"]["cost"]["tokens_per_query"] is None


def test_paired_tests_recomputed_from_the_predictions(evaluated):
    res, preds = evaluated
    seed = res["bootstrap"]["seed"]
    ft = preds["finetuned"]
    assert {(c["b"], c["metric"]) for c in res["comparisons"]} == {
        (b, m) for b in ("zero_shot", "few_shot", "embedding_classifier")
        for m in ("accuracy", "macro_f1")}
    gold = np.array([r["reference"] for r in ft])
    pa = np.array([r["prediction"] for r in ft])
    a = pa == gold
    for base in ("zero_shot", "few_shot", "embedding_classifier"):
        pb = np.array([r["prediction"] for r in preds[base]])
        b = pb == gold
        # accuracy: McNemar's exact test on the discordant pairs
        acc = next(c for c in res["comparisons"] if (c["b"], c["metric"]) == (base, "accuracy"))
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert acc["test"] == "mcnemar_exact"
        assert (acc["only_a_correct"], acc["only_b_correct"]) == (only_a, only_b)
        assert acc["p_value"] == pytest.approx(p, rel=1e-5)
        assert acc["diff"] == pytest.approx(a.mean() - b.mean(), abs=1e-6)
        # macro-F1: paired bootstrap, both systems on the same resampled examples
        f1 = next(c for c in res["comparisons"] if (c["b"], c["metric"]) == (base, "macro_f1"))
        idx = np.random.default_rng(seed).integers(0, LIMIT, size=(BOOT, LIMIT))
        d = np.array([_macro_f1(gold[ix], pa[ix]) - _macro_f1(gold[ix], pb[ix]) for ix in idx])
        assert f1["test"] == "paired_bootstrap"
        assert f1["p_value"] == pytest.approx(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))),
                                              abs=1e-6)
        assert f1["diff"] == pytest.approx(_macro_f1(gold, pa) - _macro_f1(gold, pb), abs=1e-6)
        assert f1["ci"] == pytest.approx(np.percentile(d, [2.5, 97.5]).tolist(), abs=1e-6)
    # all 16 right against chance-level zero-shot: McNemar finds the difference
    zs = next(c for c in res["comparisons"] if c["b"] == "zero_shot" and c["metric"] == "accuracy")
    assert zs["only_b_correct"] == 0 and zs["p_value"] < 0.05
    assert zs["verdict"].startswith("finetuned is better on accuracy")


def test_report(trained, evaluated):
    _ok(["report", str(trained)])
    ev = trained / "eval"
    page = (ev / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "Confusion matrix" in page
    assert "| finetuned |" in (ev / "report" / "report.md").read_text()


def test_review_round_trip(trained, tmp_path):
    _ok(["eval", str(trained), "--limit", "6", "--bootstrap", "50", "-q",
         "--baselines", "zero_shot"])
    _ok(["review", "export", str(trained), "-n", "4"])
    sheet = trained / "eval" / "review" / "review.csv"
    rows = list(csv.DictReader(sheet.open()))
    assert len(rows) == 2 * 4 and all(r["rating"] == "" for r in rows)
    assert "finetuned" not in sheet.read_text()  # blind: systems appear only as codes
    key = json.loads((trained / "eval" / "review" / "key.json").read_text())
    assert len(key) == 8 and all(sorted([key[f"{i}A"], key[f"{i}B"]]) == ["finetuned", "zero_shot"]
                                 for i in range(1, 5))
    for r in rows:
        r["rating"] = "5" if key[r["system_code"]] == "finetuned" else "2"
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = json.loads(_ok(["review", "import", str(trained), str(filled), "--json"]).stdout)
    assert res["systems"]["finetuned"]["mean_rating"]["value"] == 5.0
    assert res["systems"]["zero_shot"]["mean_rating"]["value"] == 2.0
    rows[0]["rating"] = "9"
    with filled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    bad = runner.invoke(app, ["review", "import", str(trained), str(filled)])
    assert bad.exit_code != 0 and "outside 1-5" in str(bad.exception)


def test_curve_nested_sizes(tmp_path, tiny_model):
    cfg = _project(tmp_path / "p", tiny_model, max_steps=2)
    res = json.loads(_ok(["curve", str(cfg), "--sizes", "12,24", "--limit", "6",
                          "--bootstrap", "50", "--json"]).stdout)
    assert [p["requested"] for p in res["points"]] == [12, 24]
    assert [p["train_examples"] for p in res["points"]] == [12, 24]
    assert all(res["metric"] in p["metrics"] for p in res["points"])
    assert (Path(res["curve_dir"]) / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_baseline_name_is_a_user_error(tiny_project):
    res = runner.invoke(app, ["eval", str(tiny_project), "--baselines", "gpt5"])
    assert res.exit_code != 0 and "unknown" in str(res.exception)


def test_seed_variance_is_the_spread_of_each_seeds_own_run(tmp_path, tiny_model):
    cfg = _project(tmp_path / "s", tiny_model, max_steps=2)
    args = ["--baselines", "none", "--limit", "6", "--bootstrap", "50", "--no-generate", "--json"]
    res = json.loads(_ok(["eval", str(cfg), "--seeds", "2", *args]).stdout)
    assert set(res["systems"]) == {"finetuned"} and len(res["runs"]) == 2
    # each seed's run, evaluated on its own, gives the values the variance is taken over
    alone = [json.loads(_ok(["eval", run, *args]).stdout)["systems"]["finetuned"]["metrics"]
             for run in res["runs"]]
    assert [_seed(Path(r)) for r in res["runs"]] == [0, 1]
    sv = res["seed_variance"]
    assert set(sv) == {"accuracy", "macro_f1", "perplexity", "bits_per_byte"}
    for metric, v in sv.items():
        assert v["values"] == [m[metric]["value"] for m in alone], metric
        assert v["mean"] == pytest.approx(statistics.mean(v["values"]), abs=1e-6)
        assert v["std"] == pytest.approx(statistics.stdev(v["values"]), abs=1e-6)
    # two seeds train two different adapters: their validation bits per byte differ
    assert sv["bits_per_byte"]["std"] > 0


def test_free_generation_runs_on_the_generate_sample_only(trained, tmp_path):
    res = json.loads(_ok(["eval", str(trained), "--json", "--limit", "8", "--bootstrap", "20",
                          "--baselines", "zero_shot", "--set", "eval.generate_sample=3"]).stdout)
    rows = [r for r in _rows(Path(res["eval_dir"]) / "predictions.jsonl")
            if r["system"] == "finetuned"]
    assert [r["generated"] is not None for r in rows] == [True] * 3 + [False] * 5
    gen_ok = [r["gen_correct"] for r in rows[:3]]
    m = res["systems"]["finetuned"]["metrics"]
    assert m["generation_accuracy"]["value"] == pytest.approx(np.mean(gen_ok), abs=1e-6)
    assert m["accuracy"]["value"] == pytest.approx(np.mean([r["correct"] for r in rows]),
                                                   abs=1e-6)
    assert res["details"]["finetuned"]["generation_sample"] == 3
    assert sum(map(sum, res["details"]["finetuned"]["generation_confusion"]["matrix"])) == 3


def test_a_cpu_with_fast_bf16_still_scores_on_the_fp32_paths(trained, monkeypatch):
    """Eval runs no autocast: on a bf16-capable CPU the models still compute fp32, so they get
    the fp32 inference paths (reordered linears) there too."""
    import tuneloop.evaluate.suite as suite
    from tuneloop.models.load import Placement

    seen = []
    monkeypatch.setattr(suite, "choose_placement", lambda *a: Placement("cpu", "bf16"))
    monkeypatch.setattr(suite, "for_inference", lambda model, p: seen.append(p) or model)
    _ok(["eval", str(trained), "--baselines", "zero_shot", "--limit", "4", "--no-generate",
         "--quiet", "--bootstrap", "20"])
    assert seen == [Placement("cpu", "fp32")] * 2  # the base model and the fine-tune
