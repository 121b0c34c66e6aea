"""Retrain data set (feedback + fresh + replay, audited), the gate's decision rule, frozen-set
pinning, and the gate on real models through the real scorer: a retrained challenger that
learnt the task is promoted over a champion that did not (trained one step), and a challenger
that is worse than, or the same as, the champion is not."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from conftest import LABELS, write_classification_project, write_rows
from tuneloop.config import DEFAULT_CLASSIFY_TEMPLATE, load_config
from tuneloop.errors import TuneloopError
from tuneloop.registry.registry import Registry
from tuneloop.retrain.gate import compare, decide, pin_frozen, run_gate
from tuneloop.retrain.retrain import build_dataset, retrain
from tuneloop.serve.store import TrafficStore, store_url
from tuneloop.train.recipe import train


def prompt(text: str) -> str:
    """What a client of the fine-tuned classifier sends: the project's rendered template."""
    return DEFAULT_CLASSIFY_TEMPLATE.format(text=text, labels=", ".join(LABELS))


def log_traffic(store: TrafficStore, texts: list[str], labels: list[str | None], version: str,
                start: datetime | None = None, output: str = "card_arrival") -> list[str]:
    """Requests (one a minute, ending now) and, where a label is given, feedback with it."""
    start = start or datetime.now(UTC) - timedelta(minutes=len(texts) + 1)
    ids = []
    for i, (t, lab) in enumerate(zip(texts, labels, strict=True)):
        rid = f"req-{uuid.uuid4().hex[:12]}"
        when = start + timedelta(minutes=i)
        store.log_request(request_id=rid, model="champion", version=version, endpoint="chat",
                          input_text=prompt(t), request_json="{}", output_text=output,
                          latency_ms=5.0, prompt_tokens=20, completion_tokens=2, created=when)
        if lab:
            store.add_feedback(request_id=rid, label=lab, created=when + timedelta(seconds=5))
        ids.append(rid)
    return ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory, learnable_model):
    """A tiny project (24 training rows, a frozen test set of 16 held-out rows) and two runs of
    it: `weak` (one step at learning rate 1e-6: the base model, the task not learnt) and
    `strong` (20 steps at 1e-2: learnt)."""
    root = tmp_path_factory.mktemp("loop")
    cfg_path = write_classification_project(
        root / "proj", learnable_model, n=24,
        train={"epochs": 2, "batch_size": 8, "eval_every": 50, "save_every": 50,
               "learning_rate": 1e-2},
        monitor={"min_requests": 10}, retrain={"replay_fraction": 0.5})
    write_rows(cfg_path.parent / "test.jsonl", range(100, 116))
    runs = {name: train(load_config(cfg_path, ["data.test=test.jsonl", f"train.max_steps={steps}",
                                               f"train.learning_rate={lr}", f"output.name={name}"]),
                        quiet=True)[0]
            for name, steps, lr in (("weak", 1, 1e-6), ("strong", 20, 1e-2))}
    return cfg_path, runs


def _registry_project(tmp_path, trained, champion: str, challenger: str | None = None):
    """The project with its own registry (champion v1 = that run; a challenger v2 if given)
    and output folder."""
    cfg_path, runs = trained
    cfg = load_config(cfg_path, ["data.test=test.jsonl", f"registry.dir={tmp_path / 'registry'}",
                                 f"output.dir={tmp_path / 'runs'}"])
    reg = Registry.from_config(cfg)
    reg.register(runs[champion], note=champion)
    if challenger:
        reg.register(runs[challenger], note=challenger, alias="challenger")
    return cfg


@pytest.fixture
def project(tmp_path, trained):
    """Champion v1 = the weak run: what a retrain on feedback has to beat."""
    return _registry_project(tmp_path, trained, "weak")


def _new_domain(n: int) -> tuple[list[str], list[str]]:
    texts = [("the exchange rate of yen number " if i % 2 else "card never arrived in the post ")
             + str(200 + i) for i in range(n)]
    return texts, [LABELS[1] if i % 2 else LABELS[0] for i in range(n)]


def test_dataset_mixes_feedback_replay_and_holds_out_a_fresh_slice(project):
    store = TrafficStore(store_url(project))
    texts, labels = _new_domain(20)
    log_traffic(store, texts, labels, "v1")
    champ = Registry.from_config(project).get("champion")
    man = build_dataset(project, store.feedback(), champ)
    c = man["counts"]
    assert c["feedback"] == 20 and c["fresh_eval"] == 4 and c["new_train"] == 16  # 25% per label
    assert c["replay"] == 8 and c["train"] == 16 + 8
    rows = [json.loads(x) for x in open(man["train"])]
    held = [json.loads(x) for x in open(man["fresh_eval"])]
    # the template is stripped: rows hold the user's words, and the project template re-applies
    assert all(set(r) == {"id", "text", "label"} and "Classify" not in r["text"] for r in rows)
    assert not {r["text"] for r in held} & {r["text"] for r in rows}
    assert sum(r["id"].startswith("replay-") for r in rows) == c["replay"]


def test_corrections_win_and_ratings_alone_are_not_training_data(project):
    store = TrafficStore(store_url(project))
    rid = log_traffic(store, ["card never came 1"], [None], "v1")[0]
    store.add_feedback(request_id=rid, rating=1.0)
    with pytest.raises(TuneloopError, match="no new data"):
        build_dataset(project, store.feedback())
    store.add_feedback(request_id=rid, label=LABELS[1])
    store.add_feedback(request_id=rid, corrected="card_arrival")  # the later correction wins
    man = build_dataset(project, store.feedback(), fresh_fraction=0)
    rows = [json.loads(x) for x in open(man["train"])]
    fb = [r for r in rows if r["id"].startswith("fb-")]
    assert [r["label"] for r in fb] == [LABELS[0]]


def test_decision_rule():
    better = {"n": 40, "champion": 0.2, "challenger": 0.8, "improvement": 0.6, "p_value": 1e-6,
              "test": "mcnemar_exact"}
    same = {"n": 40, "champion": 0.9, "challenger": 0.9, "improvement": 0.0, "p_value": 1.0,
            "test": "mcnemar_exact"}
    worse = same | {"challenger": 0.5, "improvement": -0.4, "p_value": 1e-4}
    assert decide(better, same, 0.0, 0.05)[0]
    assert not decide(better, worse, 0.0, 0.05)[0]  # significant regression on the frozen set
    assert not decide(better, same, 0.7, 0.05)[0]  # not better by the margin
    assert not decide(same, same, 0.0, 0.05)[0]
    ok, why = decide(None, same, 0.0, 0.05)
    assert not ok and "no fresh slice" in why[0]


def test_compare_uses_paired_tests():
    champ = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=float)
    chall = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=float)
    c = compare(champ, chall, higher_is_better=True)
    assert c["test"] == "mcnemar_exact" and c["only_challenger_correct"] == 8 and c["p_value"] < 0.01
    assert c["improvement"] == pytest.approx(0.8)
    nll = compare(np.array([2.0, 2.1, 1.9, 2.0]), np.array([1.0, 1.1, 0.9, 1.0]), higher_is_better=False)
    assert nll["test"] == "paired_bootstrap" and nll["improvement"] == pytest.approx(1.0)


def test_frozen_set_is_pinned(tmp_path, project):
    from tuneloop.data.load import load_examples

    ex = load_examples(project.data.test, project.data, project.task).examples
    first = pin_frozen(tmp_path, project.data.test, ex)
    assert pin_frozen(tmp_path, project.data.test, ex) == first
    with pytest.raises(TuneloopError, match="changed since it was pinned"):
        pin_frozen(tmp_path, project.data.test, ex[:-1])


def _accuracy_by_eval(version, test_file, out_dir: Path) -> float:
    """The evaluation stage's accuracy of a registered version on a file: a second scorer,
    to check the gate's."""
    from tuneloop.evaluate.suite import run_eval

    res = run_eval(version.path, baselines="none", free_generation=False, n_boot=10, quiet=True,
                   overrides=[f"data.test={test_file}"], out_dir=out_dir / version.id)
    return res["systems"]["finetuned"]["metrics"]["accuracy"]["value"]


def test_retrain_then_gate_promotes_a_better_challenger(project, tmp_path):
    store = TrafficStore(store_url(project))
    texts, labels = _new_domain(80)
    log_traffic(store, texts, labels, "v1")
    res = retrain(project)
    reg = Registry.from_config(project)
    assert res["challenger"] == "v2" and reg.aliases()["challenger"] == "v2"
    v2 = reg.get("v2")
    assert v2.parent == "v1" and v2.config["method"]["init_adapter"].endswith("v1/adapter")
    assert res["audit"]["train_after_audit"] == res["data"]["counts"]["train"] - res["audit"]["dropped"]
    assert res["data"]["counts"]["fresh_eval"] == 20  # a quarter of each label held out

    d = run_gate(project)  # the real scorer: both versions answer both sets
    fresh, frozen = d["fresh"], d["frozen"]
    assert (fresh["n"], frozen["n"]) == (20, 16)
    assert {k: v["n"] for k, v in fresh["by_label"].items()} == {LABELS[0]: 10, LABELS[1]: 10}
    # the retrained challenger learnt the new traffic; the champion (the base, in effect) did not
    assert fresh["challenger"] == 1.0 and fresh["champion"] <= 0.6
    assert fresh["only_champion_correct"] == 0 and fresh["only_challenger_correct"] >= 8
    assert fresh["p_value"] < 0.05 and fresh["improvement"] > project.retrain.margin
    assert frozen["improvement"] >= 0  # replay kept the old task
    # the evaluation stage scores both versions on the fresh slice the same way
    for v, key in (("v1", "champion"), ("v2", "challenger")):
        assert _accuracy_by_eval(reg.get(v), fresh["path"], tmp_path / "check") == fresh[key]

    assert d["decision"] == "promote" and d["promoted"]
    assert d["reasons"][0].endswith(": better")
    assert d["reasons"][1].endswith(": no significant regression")
    assert reg.aliases()["champion"] == "v2" and "challenger" not in reg.aliases()
    assert reg.history()[-1]["evidence"]["challenger"] == "v2"
    assert json.loads(open(d["record"]).read())["decision"] == "promote"


def test_gate_keeps_a_champion_the_challenger_does_not_beat(tmp_path, trained):
    fresh_path = write_rows(tmp_path / "fresh.jsonl", range(300, 316))
    # a worse challenger: the weak run against the trained champion
    worse = _registry_project(tmp_path / "worse", trained, "strong", challenger="weak")
    d = run_gate(worse, fresh_path=str(fresh_path))
    assert d["decision"] == "keep_champion" and not d["promoted"]
    assert d["fresh"]["champion"] == 1.0 > d["fresh"]["challenger"]
    assert d["fresh"]["improvement"] < 0 and d["fresh"]["only_challenger_correct"] == 0
    assert d["frozen"]["improvement"] < 0 and d["frozen"]["p_value"] < 0.05
    assert d["reasons"][0].endswith(": not shown better")
    assert d["reasons"][1].endswith(": significant regression")
    reg = Registry.from_config(worse)
    assert reg.aliases() == {"champion": "v1", "challenger": "v2"}
    assert json.loads(open(d["record"]).read())["decision"] == "keep_champion"

    # the same weights under a new version: no improvement, so no promotion either
    same = _registry_project(tmp_path / "same", trained, "strong", challenger="strong")
    d = run_gate(same, fresh_path=str(fresh_path))
    assert d["decision"] == "keep_champion" and not d["promoted"]
    assert d["fresh"]["improvement"] == 0 and d["fresh"]["p_value"] == 1.0
    assert d["frozen"]["improvement"] == 0
    assert Registry.from_config(same).aliases()["champion"] == "v1"


def test_gate_needs_a_challenger(project):
    with pytest.raises(TuneloopError, match="challenger"):
        run_gate(project)
