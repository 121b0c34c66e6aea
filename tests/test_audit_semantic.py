"""Reworded leakage (cosine + word overlap) and the mislabel ranking, on hand-made embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuneloop.data.audit.labels import out_of_fold_probs, suspect_indices
from tuneloop.data.audit.leakage import leakage_findings
from tuneloop.data.audit.records import Record
from tuneloop.data.schema import Example, Message


def rec(rid: str, text: str) -> Record:
    ex = Example(rid, [Message("user", text), Message("assistant", "x")], None)
    return Record(rid, 1, 1, {}, ex, text, "x")


def unit(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_reworded_leak_needs_meaning_and_words():
    test = [rec("t1", "How do I order a new card before it expires?"),
            rec("t2", "Why was my transfer declined yesterday?")]
    train = [rec("a", "Hello! How do I order a new debit card before it expires please"),  # reworded
             rec("b", "Could you tell me the steps to get a replacement for my expiring card"),
             rec("c", "Hi, how do I order a new card before it expires, what about pizza")]
    # a and b mean the same as t1 (cosine 0.9); c shares t1's words but not its meaning.
    emb = unit([1, 0.48, 0], [1, 0.48, 0], [0.2, 0, 1])
    other = unit([1, 0, 0], [0, 1, 0])
    f = {x.check: x for x in leakage_findings(train, test, Path("test.jsonl"), 0.7, 128, emb, other,
                                              semantic_threshold=0.75, word_overlap=0.6)}
    sem = f["leakage.semantic"]
    assert sem.ids == ["a"]  # b: same meaning, other words (a different user); c: other meaning
    (pair,) = sem.evidence["pairs"]
    assert pair["other_id"] == "t1" and pair["cosine"] >= 0.75 and pair["word_overlap"] >= 0.6
    assert sem.severity == "warning"
    looser = leakage_findings(train, test, Path("test.jsonl"), 0.7, 128, emb, other,
                              semantic_threshold=0.75, word_overlap=0.0)
    assert set(next(x for x in looser if x.check == "leakage.semantic").ids) == {"a", "b"}


def test_semantic_leak_skips_what_exact_already_found():
    test = [rec("t1", "Is there a fee for paying by card?")]
    train = [rec("a", "is there a FEE for paying by card?")]
    emb = other = unit([1, 0])
    f = {x.check: x for x in leakage_findings(train, test, Path("t.jsonl"), 0.7, 128, emb, other)}
    assert f["leakage.exact"].ids == ["a"] and "leakage.semantic" not in f


def test_out_of_fold_probabilities_are_calibrated_rows():
    rng = np.random.default_rng(0)
    x = np.concatenate([c + 0.1 * rng.standard_normal((20, 8)) for c in np.eye(3, 8)])
    y = np.repeat(np.arange(3), 20)
    probs = out_of_fold_probs(x.astype(np.float32), y, folds=4, seed=0)
    assert probs.shape == (60, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == y).mean() > 0.95


def test_suspects_are_the_least_self_confident_and_disagreeing():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 25)
    probs = np.full((100, 4), 0.02)
    probs[np.arange(100), y] = 0.94
    probs += 0.01 * rng.random((100, 4))
    flipped = [3, 30, 77]
    for i in flipped:  # the classifier is sure these belong to the next class
        probs[i] = 0.02
        probs[i, (y[i] + 1) % 4] = 0.94
    unsure = 50  # low confidence, but its own label is still the classifier's choice
    probs[unsure] = [0.2, 0.2, 0.35, 0.25]
    probs /= probs.sum(axis=1, keepdims=True)
    got = suspect_indices(y, probs)
    assert set(got.tolist()) == set(flipped)
