"""Metrics, intervals and paired tests on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.evaluate.faithfulness import unsupported_rate, unsupported_terms
from tuneloop.evaluate.metrics import (
    classification_details,
    classification_metrics,
    macro_f1_codes,
    parse_label,
)
from tuneloop.evaluate.stats import (
    bootstrap_ci,
    mcnemar,
    mean_stat,
    metric_with_ci,
    overlap,
    paired_bootstrap,
)
from tuneloop.evaluate.text_metrics import exact_match, normalize_answer, rouge_l, token_f1


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower", ["Eiffel Tower."]) == 1.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0  # max over references
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    # pred "paris france" vs gold "paris": P=1/2, R=1 -> F1=2/3
    assert token_f1("Paris, France", ["Paris"]) == pytest.approx(2 / 3)
    assert token_f1("Paris, France", ["London", "France Paris"]) == pytest.approx(1.0)
    assert token_f1("nothing", ["Paris"]) == 0.0
    assert token_f1("", [""]) == 1.0


def test_rouge_l_keeps_unicode_words():
    assert rouge_l("café crème", ["café crème"]) == pytest.approx(1.0)
    # rouge-score's default tokenizer drops non-ASCII, making these look identical; ours not.
    assert rouge_l("中文 测试", ["日本 語"]) == 0.0
    assert 0 < rouge_l("the cat sat", ["the cat sat on the mat"]) < 1


def test_classification_metrics_and_details():
    gold = ["a", "a", "b", "b"]
    pred = ["a", "b", "b", None]
    d = classification_details(gold, pred, ["a", "b"])
    assert d["confusion"]["columns"] == ["a", "b", "<unparsed>"]
    assert d["confusion"]["matrix"] == [[1, 1, 0], [0, 1, 1]]
    assert d["per_class"]["a"]["precision"] == 1.0 and d["per_class"]["a"]["recall"] == 0.5
    m = classification_metrics(gold, ["a", "b", "b", "a"], ["a", "b"])
    codes = macro_f1_codes(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]), 2)
    assert codes == pytest.approx(m["macro_f1"])
    assert macro_f1_codes(np.array([0, 0, 1, 1]), np.array([0, 1, 1, -1]), 2) == pytest.approx(
        classification_metrics(gold, ["a", "b", "b", "zz"], ["a", "b"])["macro_f1"])


def test_parse_label():
    labels = ["card", "card_arrival", "exchange_rate"]
    assert parse_label("Card arrival.", labels) == "card_arrival"
    assert parse_label("card_arrival because it has not come", labels) == "card_arrival"
    assert parse_label("I think this is about the exchange rate", labels) == "exchange_rate"
    assert parse_label("no idea", labels) is None
    assert parse_label("Yes", ["yes", "no", "maybe"]) == "yes"


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 800):
        x = (rng.random(n) < 0.7).astype(float)
        m = metric_with_ci(mean_stat(x), n, n_boot=500, seed=0)
        assert m["ci"][0] <= m["value"] <= m["ci"][1]
        widths.append(m["ci"][1] - m["ci"][0])
    assert widths[1] < widths[0] / 2
    assert bootstrap_ci(mean_stat(np.ones(10)), 10) == (1.0, 1.0)
    # deterministic: same seed, same interval
    x = rng.random(30)
    assert bootstrap_ci(mean_stat(x), 30, seed=3) == bootstrap_ci(mean_stat(x), 30, seed=3)


def test_mcnemar_on_constructed_table():
    # 10 pairs where only A is right, 2 where only B is right, 20 concordant.
    a = np.array([1] * 10 + [0] * 2 + [1] * 15 + [0] * 5, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 15 + [0] * 5, dtype=bool)
    r = mcnemar(a, b)
    assert (r["only_a_correct"], r["only_b_correct"]) == (10, 2)
    from scipy.stats import binomtest

    assert r["p_value"] == pytest.approx(binomtest(10, 12, 0.5).pvalue, abs=1e-6)
    assert r["p_value"] < 0.05
    assert mcnemar(a, a)["p_value"] == 1.0


def test_tiny_p_values_are_not_printed_as_zero():
    from tuneloop.evaluate.compare import verdict

    # 74 vs 6 discordant pairs (the cuad example): exact p ~ 5e-16, not 0.
    a = np.array([1] * 74 + [0] * 6 + [1] * 6, dtype=bool)
    b = np.array([0] * 74 + [1] * 6 + [1] * 6, dtype=bool)
    p = mcnemar(a, b)["p_value"]
    assert 0 < p < 1e-12
    rec = {"a": "finetuned", "b": "zero_shot", "metric": "accuracy", "diff": 0.7,
           "p_value": p, "test": "mcnemar_exact", "intervals_overlap": False}
    assert "p=0)" not in verdict(rec) and "p=5.4e-16" in verdict(rec)
    # A paired-bootstrap p of 0 only bounds p by 1/resamples.
    x, y = np.ones(50), np.zeros(50)
    r = paired_bootstrap(mean_stat(x), mean_stat(y), 50, n_boot=500)
    assert r["p_value"] == 0 and r["resamples"] == 500
    rec = {"a": "finetuned", "b": "few_shot", "metric": "macro_f1", "diff": 1.0, "p_value": 0.0,
           "test": "paired_bootstrap", "bootstrap_resamples": 500, "intervals_overlap": False}
    assert "(p<0.002)" in verdict(rec)


def test_paired_bootstrap_sign_and_ci():
    a = np.array([1.0] * 40 + [0.0] * 10)
    b = np.array([1.0] * 20 + [0.0] * 30)
    r = paired_bootstrap(mean_stat(a), mean_stat(b), 50, n_boot=500)
    assert r["diff"] == pytest.approx(0.4)
    assert r["ci"][0] > 0 and r["p_value"] < 0.05
    assert overlap([0.1, 0.5], [0.4, 0.9]) and not overlap([0.1, 0.3], [0.4, 0.9])


def test_faithfulness_flags_invented_numbers_and_names():
    src = "In 120 patients treated with metformin, mortality fell by 12%."
    assert unsupported_rate("Mortality fell in 120 patients treated with metformin.", src) == 0.0
    r = unsupported_rate("Mortality fell in 450 patients in Boston treated with metformin.", src)
    # content: mortality fell 450 patients boston treated metformin; unsupported: 450, boston
    assert r == pytest.approx(2 / 7)
    assert "450" in unsupported_terms("in 450 patients", src)
    assert unsupported_rate("it is the", src) is None


def test_few_shot_states_the_instruction_once(monkeypatch):
    """The label list comes in the first turn only; shots and query are the bare texts."""
    from tuneloop.config import TaskConfig
    from tuneloop.evaluate import baselines
    from tuneloop.records import Example, Message

    task = TaskConfig(type="classification", labels=["refund", "pin_blocked"],
                      system_prompt="Classify.", prompt_template="{text}",
                      baseline_template="Pick one of: {labels}.\n\nMessage: {text}")

    def row(i, text, label):
        return Example(f"r{i}", [Message("system", "Classify."), Message("user", text),
                                 Message("assistant", label)], label=label, meta={"text": text})

    train = [row(0, "money back please", "refund"), row(1, "my pin is locked", "pin_blocked")]
    query = row(2, "pin does not work", "pin_blocked")
    monkeypatch.setattr(baselines, "retrieve", lambda q, pool, k: [[0, 1][:k]])
    (prompt,) = baselines.few_shot_prompts([query], train, 2, task)
    assert [m.role for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt[1].content == "Pick one of: refund, pin_blocked.\n\nMessage: money back please"
    assert [m.content for m in prompt[2:]] == ["refund", "my pin is locked", "pin_blocked",
                                                 "pin does not work"]
    (alone,) = baselines.few_shot_prompts([query], [], 0, task)  # no shots: zero-shot's prompt
    assert alone == baselines.prompted(query, task)
