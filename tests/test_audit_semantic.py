"""Reworded leakage (cosine + word overlap) and the mislabel ranking, on hand-made embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tuneloop.config import parse_config
from tuneloop.data.audit.dedup import duplicate_findings, semantic_pairs
from tuneloop.data.audit.labels import out_of_fold_probs, suspect_indices
from tuneloop.data.audit.leakage import leakage_findings
from tuneloop.data.audit.records import Record
from tuneloop.errors import TuneloopError
from tuneloop.records import Example, Message


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


def test_reworded_duplicate_needs_meaning_and_words():
    recs = [rec("a", "How do I order a new card before it expires?"),
            rec("b", "Hello! How do I order a new debit card before it expires please"),  # reworded
            rec("c", "Could you tell me the steps to get a replacement for my expiring card"),
            rec("d", "Why was my transfer declined yesterday?"),
            rec("e", "Why did my transfer get declined yesterday?")]
    # a, b, c mean the same (cosine 0.88-0.93); only b keeps a's words (Jaccard 0.77). d and e:
    # cosine 0.96, Jaccard 4/7.
    emb = unit([1, 0.48, 0], [1, 0.2, 0.3], [1, 0.1, -0.2], [0, 0.3, 1], [0, 0, 1])
    texts = [r.input for r in recs]
    assert [p[:2] for p in semantic_pairs(emb, 0.95, k=4)] == [(3, 4)]  # cosine alone
    both = semantic_pairs(emb, 0.95, k=4, texts=texts, min_cosine=0.8, word_overlap=0.7)
    assert [p[:2] for p in both] == [(0, 1), (3, 4)]  # c: same meaning in other words
    assert both[0][2] < 0.95  # the pair's cosine, below the bare bar
    low = semantic_pairs(emb, 0.95, k=4, texts=texts, min_cosine=0.8, word_overlap=0.0)
    assert [p[:2] for p in low] == [(0, 1), (0, 2), (1, 2), (3, 4)]
    (f,) = duplicate_findings(recs, 0.7, 128, emb, 0.95, semantic_min_cosine=0.8,
                              semantic_word_overlap=0.7)
    assert f.check == "duplicates.semantic" and f.ids == ["a", "b", "d", "e"]
    assert [c["rule"] for c in f.evidence["clusters"]] == ["cosine+words", "cosine"]
    assert "word overlap >= 0.7" in f.summary and f.evidence["min_cosine"] == 0.8
    (g,) = duplicate_findings(recs, 0.7, 128, emb, 0.95)  # no min_cosine: cosine alone
    assert g.ids == ["d", "e"] and "word overlap" not in g.summary


def test_audit_section_of_the_config():
    cfg = parse_config({"data": {"train": "t.jsonl"}})
    assert (cfg.audit.semantic_min_cosine, cfg.audit.semantic_word_overlap) == (0.8, 0.7)
    cfg = parse_config({"data": {"train": "t.jsonl"}, "audit": {"semantic_word_overlap": 0.8}})
    assert cfg.audit.semantic_word_overlap == 0.8
    with pytest.raises(TuneloopError, match="semantic_cosine"):
        parse_config({"data": {"train": "t.jsonl"}, "audit": {"semantic_cosine": 0.8}})
