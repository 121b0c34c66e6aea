"""Drift signals in both directions: same distribution -> no drift; shifted -> drift."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tuneloop.config import TaskConfig
from tuneloop.monitor import drift
from tuneloop.monitor.check import parse_window
from tuneloop.monitor.traffic import bucket_edges, feedback_correct, feedback_label, raw_text

# The shared data folder sits beside the repository (REPO/../shared/data), wherever it is cloned.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLINC = SHARED_DATA / "clinc150"


def _cloud(n: int, shift: float, seed: int, d: int = 16) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    x[:, 0] += shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_same_distribution_is_not_drift(seed):
    res = drift.mmd_test(_cloud(80, 0, seed), _cloud(60, 0, seed + 100), n_perm=300, seed=seed)
    assert res["p_value"] > 0.01


def test_mmd_shifted_is_drift():
    res = drift.mmd_test(_cloud(80, 0, 0), _cloud(60, 1.5, 1), n_perm=300)
    assert res["p_value"] < 0.01 and res["mmd2"] > 0
    # p is bounded below by 1/(permutations+1): a permutation p-value, never 0
    assert res["p_value"] >= round(1 / 301, 6)


def test_domain_classifier_against_random_baseline():
    same = drift.domain_classifier(_cloud(80, 0, 0), _cloud(60, 0, 1), n_random=300)
    moved = drift.domain_classifier(_cloud(80, 0, 0), _cloud(60, 1.5, 1), n_random=300)
    # the random-classifier bar sits above 0.5 for small samples
    assert 0.5 < same["random_auc"] < 0.7
    assert same["auc"] < same["random_auc"] + 0.1
    assert moved["auc"] > moved["random_auc"] + 0.1


def test_too_few_points_give_no_statistic():
    assert drift.mmd_test(_cloud(1, 0, 0), _cloud(5, 0, 1))["p_value"] is None
    assert drift.domain_classifier(_cloud(1, 0, 0), _cloud(5, 0, 1))["auc"] is None


def test_novel_terms_both_directions():
    ref = ["where is my card", "my card has not arrived", "card delivery status please"]
    same = drift.novel_terms(ref, ["has my card arrived", "where is my card please"])
    moved = drift.novel_terms(ref, ["book a flight to paris", "cancel my hotel reservation"])
    assert same["rate"] < 0.2 < 0.8 < moved["rate"]
    assert ["paris", 1] in moved["top"]
    assert drift.novel_rate_per_text(ref, ["my card", "flight 42 paris"]).tolist() == [0.0, 1.0]


def test_shift_test_and_rate_ci():
    rng = np.random.default_rng(0)
    assert drift.shift_test(rng.normal(10, 1, 50), rng.normal(10, 1, 50))["p_value"] > 0.01
    moved = drift.shift_test(rng.normal(10, 1, 50), rng.normal(20, 1, 50))
    assert moved["p_value"] < 0.01 and moved["ratio"] > 1.5
    r = drift.rate_with_ci([1, 0, 1, 1], n_boot=200)
    assert r["value"] == 0.75 and r["ci"][0] <= 0.75 <= r["ci"][1] and r["n"] == 4


def test_nearest_distance():
    ref = _cloud(20, 0, 0)
    d = drift.nearest_distance(ref, np.vstack([ref[:1], -ref[:1]]))
    assert d[0] == pytest.approx(0, abs=1e-6) and d[1] > 0.2


def test_raw_text_strips_the_template():
    task = TaskConfig(type="classification", labels=["a", "b"],
                      prompt_template="Intent ({labels}) of: {text}\nAnswer:")
    assert raw_text("Intent (a, b) of: book a flight\nAnswer:", task) == "book a flight"
    assert raw_text("book a flight", task) == "book a flight"  # not templated: kept whole


def test_feedback_correctness_and_labels():
    task = TaskConfig(type="classification", labels=["card_arrival", "exchange_rate"])
    assert feedback_correct({"output_text": "card_arrival", "label": "card_arrival"}, task) == 1.0
    assert feedback_correct({"output_text": "exchange_rate", "label": "card_arrival"}, task) == 0.0
    assert feedback_correct({"output_text": "x", "rating": 5}, task) == 1.0
    assert feedback_correct({"output_text": "x", "rating": -1}, task) == 0.0
    assert feedback_correct({"output_text": "x"}, task) is None
    assert feedback_label({"corrected": "It is exchange_rate."}, task) == "exchange_rate"
    assert feedback_label({"rating": 1}, task) is None


def test_windows_and_buckets():
    assert parse_window("7d") == timedelta(days=7) and parse_window("90m") == timedelta(minutes=90)
    from tuneloop.errors import TuneloopError

    with pytest.raises(TuneloopError, match="24h or 7d"):
        parse_window("week")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    times = [t0 + timedelta(minutes=7 * i) for i in range(30)]
    edges = bucket_edges(times)
    assert edges[0] <= times[0] and edges[-1] > times[-1] and 2 <= len(edges) <= 14


@pytest.mark.skipif(not CLINC.is_dir(), reason=f"no {CLINC}: the shared data folder is not "
                    "beside this repository (REPO/../shared/data/clinc150)")
def test_real_domain_shift_is_detected_and_same_domain_is_not():
    # MiniLM embeddings of real queries: banking train vs banking test (same) / travel (moved)
    from tuneloop.models.embed import embed

    d = json.loads((CLINC / "data_small.json").read_text())
    doms = json.loads((CLINC / "domains.json").read_text())

    def pick(domain, split, k):
        intents = set(doms[domain][:5])
        rows = [t for t, lab in d[split] if lab in intents]
        random.Random(0).shuffle(rows)
        return rows[:k]

    ref, same, moved = pick("banking", "train", 100), pick("banking", "test", 50), pick("travel", "test", 50)
    e_ref, e_same, e_moved = embed(ref), embed(same), embed(moved)
    assert drift.mmd_test(e_ref, e_same, 300)["p_value"] > 0.01
    assert drift.mmd_test(e_ref, e_moved, 300)["p_value"] < 0.01
    dc_same, dc_moved = drift.domain_classifier(e_ref, e_same), drift.domain_classifier(e_ref, e_moved)
    assert dc_same["auc"] < dc_same["random_auc"] + 0.1 < dc_moved["auc"]
    assert drift.novel_terms(ref, same)["rate"] < 0.3 < drift.novel_terms(ref, moved)["rate"]
