"""`tuneloop select` on tiny models: of two candidates with one architecture, the one fine-tuned
on the project's data wins, for the reasons the measured numbers give (in process and with each
candidate in its own process); ranking follows the numbers and the weights; --max-memory drops
what does not fit; a broken or missing candidate is reported without stopping the rest; and
--write changes only model.name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import write_classification_project
from tiny import build_tiny_model, fit_tiny_model
from tuneloop.cli import app
from tuneloop.errors import TuneloopError
from tuneloop.select.rank import METRICS, parse_weights, rank
from tuneloop.select.run import flat_metrics, parse_memory, run_select
from tuneloop.select.write import edit_model_name, set_model_name

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine run ~10x faster on one thread (no OpenMP
    spin-waiting against other processes); child processes inherit it through the env."""
    import os

    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """`small` (random), `tuned` (the same architecture and tokenizer, fine-tuned on the project's
    training rows: better on the project's data for a known reason), `big` (random, ~30x the
    parameters), a missing path and a folder that fails to load."""
    root = tmp_path_factory.mktemp("cands")
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    small = build_tiny_model(root / "small", vocab_size=300, hidden=32, layers=1)
    project = write_classification_project(
        root / "proj", small, n=60,
        data={"validation_fraction": 0.2}, train={"max_steps": 3}, eval={"few_shot_k": 2})
    return {"small": small, "tuned": _tuned(small, project, root / "tuned"),
            "big": build_tiny_model(root / "big", vocab_size=600, hidden=128, layers=4),
            "missing": root / "no-such-model", "broken": broken, "project": project}


def _tuned(small: Path, cfg: Path, dst: Path) -> Path:
    """`small` fully fine-tuned on the project's training split (never its validation rows)."""
    from transformers import AutoTokenizer

    from tuneloop.config import load_config
    from tuneloop.data.load import load_splits

    tok = AutoTokenizer.from_pretrained(small)
    train = load_splits(load_config(cfg)).train
    texts = [tok.apply_chat_template([{"role": m.role, "content": m.content} for m in e.messages],
                                     tokenize=False) for e in train]
    return fit_tiny_model(small, dst, texts, steps=120)


@pytest.fixture(scope="module")
def project(models) -> Path:
    """Classification on 60 rows, 20% of them (12) the validation split select measures on."""
    return models["project"]


@pytest.fixture(scope="module")
def measured(project, models) -> dict:
    """One in-process selection: two working candidates of one architecture that differ only
    in training, between a missing and a broken one; default weights."""
    names = [str(models[k]) for k in ("small", "missing", "tuned", "broken")]
    return run_select(project, names, probe_steps=2, quiet=True, isolate=False)


def _by_name(res: dict, models: dict, key: str) -> dict:
    return next(c for c in res["candidates"] if c["name"] == str(models[key]))


def test_broken_and_missing_candidates_are_reported_and_the_others_rank(measured, models):
    missing, broken = _by_name(measured, models, "missing"), _by_name(measured, models, "broken")
    assert missing["status"] == "failed" and "no such folder" in missing["error"]
    assert missing["failed_stage"] == "resolve"
    assert broken["status"] == "failed" and broken["failed_stage"] == "resolve"
    assert "json" in broken["error"].lower()  # the cause: its config.json does not parse
    # the working candidates are ranked first, the failed ones follow unranked
    assert [c["status"] for c in measured["candidates"]] == ["ok", "ok", "failed", "failed"]
    assert [c["rank"] for c in measured["candidates"][:2]] == [1, 2]
    assert all("rank" not in c for c in measured["candidates"][2:])


def test_the_candidate_trained_on_the_data_wins(measured, models):
    tuned, small = _by_name(measured, models, "tuned"), _by_name(measured, models, "small")
    assert measured["winner"] == str(models["tuned"])
    assert [c["name"] for c in measured["candidates"][:2]] == [str(models["tuned"]),
                                                               str(models["small"])]
    # why: far fewer bits per byte on the held-out validation targets, and the task learnt
    assert tuned["metrics"]["bpb"] < 0.5 * small["metrics"]["bpb"]
    assert tuned["metrics"]["zero_shot"] == 1.0 > small["metrics"]["zero_shot"]
    assert tuned["terms"]["bpb"]["normalised"] == 1.0
    assert small["terms"]["bpb"]["normalised"] == pytest.approx(
        tuned["metrics"]["bpb"] / small["metrics"]["bpb"], abs=1e-4)
    assert tuned["score"] > small["score"]
    assert "best on bpb" in tuned["explanation"] and "lost most on bpb" in small["explanation"]
    # one architecture: the estimator's cost figures are the same for both
    for key in ("memory", "train_time"):
        assert tuned["metrics"][key] == small["metrics"][key]


def test_every_number_is_measured(measured, models):
    from transformers import AutoModelForCausalLM

    small, tuned = _by_name(measured, models, "small"), _by_name(measured, models, "tuned")
    built = AutoModelForCausalLM.from_pretrained(models["small"])
    n_params = sum(p.numel() for p in built.parameters())
    assert small["params"] == tuned["params"] == n_params  # the size the fixture built
    for c in (small, tuned):
        m = c["metrics"]
        assert set(m) == set(METRICS)
        assert m["bpb"] > 0 and 0 <= m["zero_shot"] <= 1 and 0 <= m["few_shot"] <= 1
        assert m["latency"] > 0 and m["memory"] > 0 and m["train_time"] > 0
        assert m["adapt"] == c["probe"]["bpb_drop_per_step"] and c["probe"]["steps"] == 2
        assert c["probe"]["bpb_before"] == pytest.approx(m["bpb"], abs=1e-3)
        assert c["load_s"] > 0 and c["peak_rss_gb"] > 0
        # bits per byte with a CI from scoring, and the plain sum agree
        assert m["bpb"] == pytest.approx(c["quality"]["bpb_check"], abs=1e-3)
        assert c["quality"]["examples"] == measured["examples"] == 12  # 20% of 60 rows
        assert [g["gpu"] for g in c["gpu"]] == ["RTX 4090 24GB", "A100 80GB"]
        assert c["explanation"].startswith(f"score {c['score']:.3f} = ")


def test_score_is_the_weighted_sum_of_the_printed_terms(measured):
    for c in (c for c in measured["candidates"] if c["status"] == "ok"):
        total = sum(t["weight"] * t["normalised"] for t in c["terms"].values())
        assert c["score"] == pytest.approx(total, abs=1e-3)
        assert sum(t["weight"] for t in c["terms"].values()) == pytest.approx(1, abs=1e-3)


def test_single_metric_weights_order_by_that_measured_number(measured):
    ok = [c for c in measured["candidates"] if c["status"] == "ok"]
    for key, metric in METRICS.items():
        vals = [c["metrics"][key] for c in ok]
        assert None not in vals, key
        best = max(vals) if metric.higher_is_better else min(vals)
        assert best > 0, key  # (a higher-is-better metric whose best is 0 says nothing)
        ranked = rank(ok, {key: 1.0})
        # the best value first with score 1; the other below 1 unless the two are equal
        assert ranked[0]["metrics"][key] == best and ranked[0]["score"] == 1.0, key
        assert (ranked[1]["score"] == 1.0) == (vals[0] == vals[1]), key
    # equal numbers (one architecture: the same estimated memory) keep the caller's order
    assert [r["name"] for r in rank(ok, {"memory": 1.0})] == [r["name"] for r in ok]
    assert [r["name"] for r in rank(list(reversed(ok)), {"memory": 1.0})] == \
        [r["name"] for r in reversed(ok)]


def test_flipping_weights_flips_the_order_where_the_numbers_disagree():
    rows = [{"name": "fluent-but-slow", "metrics": {"bpb": 1.0, "latency": 0.04}},
            {"name": "fast-but-vague", "metrics": {"bpb": 1.6, "latency": 0.01}}]
    by_quality = rank(rows, parse_weights("bpb=0.9,latency=0.1"))
    by_cost = rank(rows, parse_weights("bpb=0.1,latency=0.9"))
    assert [r["name"] for r in by_quality] == ["fluent-but-slow", "fast-but-vague"]
    assert [r["name"] for r in by_cost] == ["fast-but-vague", "fluent-but-slow"]
    # relative-to-best normalisation: 1.0 / 1.6 and 0.01 / 0.04
    assert by_quality[0]["score"] == pytest.approx(0.9 + 0.1 * 0.25)
    assert by_quality[1]["score"] == pytest.approx(0.9 * 1.0 / 1.6 + 0.1)
    assert "lost most on latency" in by_quality[0]["explanation"]


def test_weights_flag():
    w = parse_weights("quality=1,cost=0")
    assert all(w[k] == 0 for k, m in METRICS.items() if m.group == "cost")
    assert sum(w.values()) == pytest.approx(1)
    assert parse_weights("quality=1,bpb=5")["bpb"] == 5
    for bad in ("speed=1", "bpb=x", "bpb=-1"):
        with pytest.raises(TuneloopError):
            parse_weights(bad)
    with pytest.raises(TuneloopError, match="every weight"):
        rank([{"name": "a", "metrics": {"bpb": 1.0}}], {"latency": 1.0})


def test_parse_memory():
    assert parse_memory("8GB") == 8 and parse_memory("8gib") == 8 and parse_memory("2") == 2
    assert parse_memory("512MB") == 0.5 and parse_memory("1.5 TB") == 1536
    with pytest.raises(TuneloopError):
        parse_memory("lots")


def test_max_memory_drops_what_the_estimator_says_will_not_fit(project, models, monkeypatch):
    import tuneloop.train.estimate as est

    real = est.estimate

    def sized(*args, **kwargs):
        # The estimator's RSS cannot tell two tiny models apart; scale it by parameter count.
        r = real(*args, **kwargs)
        return r | {"estimated_peak_memory_gb": r["total_params"] / 1e6}

    monkeypatch.setattr(est, "estimate", sized)
    res = run_select(project, [str(models["small"]), str(models["big"])], max_memory="0.1GB",
                     max_examples=4, quiet=True, isolate=False)
    big, small = _by_name(res, models, "big"), _by_name(res, models, "small")
    assert big["status"] == "dropped" and "exceeds --max-memory 0.1 GB" in big["error"]
    assert small["status"] == "ok" and res["winner"] == small["name"]


def test_write_changes_only_model_name(tmp_path):
    text = ("# my project\nseed: 3\nmodel:   # the base\n  max_seq_len: 64\n"
            "  name: smollm2-135m-instruct  # default\ntrain:\n  epochs: 1\n")
    new = edit_model_name(text, "gemma3-270m")
    assert new == text.replace("name: smollm2-135m-instruct", "name: gemma3-270m")
    assert edit_model_name("data:\n  train: t.csv\n", "/a b/m") == \
        'data:\n  train: t.csv\nmodel:\n  name: "/a b/m"\n'
    assert "model:\n    name: x\n    dtype: auto" in edit_model_name("model:\n    dtype: auto\n", "x")
    cfg = tmp_path / "tuneloop.yaml"
    cfg.write_text(text)
    w = set_model_name(tmp_path, "gemma3-270m")
    assert (w["old"], w["new"]) == ("smollm2-135m-instruct", "gemma3-270m")
    assert Path(w["backup"]).read_text() == text
    assert yaml.safe_load(cfg.read_text())["model"] == {"max_seq_len": 64, "name": "gemma3-270m"}


def test_cli_isolated_processes_json_and_write(tmp_path, project, models):
    """Each candidate measured in its own process ranks as in-process; --write edits the config."""
    import shutil

    root = shutil.copytree(project.parent, tmp_path / "p", ignore=shutil.ignore_patterns("runs"))
    cfg = root / "tuneloop.yaml"
    before = yaml.safe_load(cfg.read_text())
    names = [str(models[k]) for k in ("small", "tuned", "broken")]
    res = runner.invoke(app, ["select", str(cfg), "--candidates", ",".join(names),
                              "--max-examples", "6", "--json", "--write",
                              "--weights", "quality=1,cost=0"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = json.loads(res.stdout)
    assert out["winner"] == str(models["tuned"])
    assert [(c["name"], c["status"]) for c in out["candidates"]] == [
        (names[1], "ok"), (names[0], "ok"), (names[2], "failed")]
    assert out["candidates"][2]["failed_stage"] == "resolve"
    # quality=1,cost=0: the measured quality metrics share the weight in their default
    # proportions, 0.35 : 0.15 : 0.15 (adapt needs --probe-steps, so it has none)
    assert out["weights"] == {"bpb": 0.5385, "zero_shot": 0.2308, "few_shot": 0.2308}
    assert all(set(c["terms"]) == set(out["weights"]) for c in out["candidates"][:2])
    after = yaml.safe_load(cfg.read_text())
    assert after["model"]["name"] == str(models["tuned"])
    after["model"]["name"] = before["model"]["name"]
    assert after == before
    # nothing measurable: exit code 1
    res = runner.invoke(app, ["select", str(cfg), "--candidates", str(models["missing"]),
                              "--json", "--max-examples", "4"])
    assert res.exit_code == 1 and json.loads(res.stdout)["winner"] is None


def test_flat_metrics_of_a_partial_result():
    m = flat_metrics({"quality": {"bits_per_byte": {"value": 1.2, "ci": [1, 1.4]}}}, "accuracy")
    assert m["bpb"] == 1.2 and m["zero_shot"] is None and m["adapt"] is None


def test_subsets_are_seeded_samples_in_file_order():
    from tuneloop.select.run import _sample

    rows = list(range(100))  # e.g. a file sorted by label: the first 10 would be one class
    a, b = _sample(rows, 10, seed=0), _sample(rows, 10, seed=1)
    assert len(a) == 10 and a == sorted(a) and a != rows[:10] and a != b
    assert a == _sample(rows, 10, seed=0) and _sample(rows, None, 0) == rows == _sample(rows, 500, 0)
