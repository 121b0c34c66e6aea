"""Label checks: distribution, cleanlab mislabels and kNN outliers; MiniLM embeddings."""

from __future__ import annotations

import numpy as np

from tuneloop.data.audit.labels import distribution_findings, mislabel_findings, outlier_findings
from tuneloop.data.audit.records import Record
from tuneloop.records import Example, Message


def rec(i: int, text: str, label: str | None) -> Record:
    ex = Example(str(i), [Message("user", text), Message("assistant", label or "x")], label)
    return Record(str(i), i, i, {}, ex, text, label or "x")


def blobs(n_per: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Three well-separated clusters on the unit sphere, one label each."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16)
    x = np.concatenate([c + 0.08 * rng.standard_normal((n_per, 16)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [lab for lab in "abc" for _ in range(n_per)]


def test_distribution_imbalance_and_rare_classes():
    recs = [rec(i, "t", "a") for i in range(1, 41)] + [rec(41, "t", "b")]
    f = {x.check: x for x in distribution_findings(recs, ["a", "b", "c"], min_count=5)}
    assert f["labels.distribution"].evidence["counts"] == {"a": 40, "b": 1, "c": 0}
    assert f["labels.imbalance"].evidence["imbalance_ratio"] == 40.0
    assert f["labels.rare_class"].ids == ["41"]
    assert set(f["labels.rare_class"].evidence["classes"]) == {"b", "c"}


def test_cleanlab_finds_flipped_labels():
    emb, labels = blobs(30)
    flipped = {5: "b", 40: "c", 75: "a"}
    for i, lab in flipped.items():
        labels[i] = lab
    recs = [rec(i + 1, f"text {i}", lab) for i, lab in enumerate(labels)]
    (f,) = mislabel_findings(recs, emb)
    assert {str(i + 1) for i in flipped} <= set(f.ids)
    assert len(f.ids) <= 6  # precision: a clean cluster is not flagged wholesale
    assert f.evidence["suspects"]["6"]["suggested"] == "a"


def test_knn_outliers():
    emb, labels = blobs(30)
    far = np.zeros((1, 16), dtype=np.float32)
    far[0, 10] = 1.0
    emb = np.concatenate([emb, far])
    recs = [rec(i + 1, f"t{i}", None) for i in range(len(emb))]
    (f,) = outlier_findings(recs, emb)
    assert f.ids[0] == "91"


def test_embed_is_normalised_and_semantic():
    from tuneloop.models.embed import embed

    v = embed(["Where is my card?", "My card has not arrived yet", "What is the exchange rate?"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert embed([]).shape == (0, 384)


def test_semantic_duplicates_in_a_full_audit(tmp_path):
    from tuneloop.config import parse_config
    from tuneloop.data.audit import run_audit

    p = tmp_path / "d.csv"
    p.write_text("text,label\nMy card still has not arrived.,card\n"
                 "My card has still not arrived,card\nWhat is today's exchange rate?,rate\n"
                 "How do I close my account?,close\n")
    cfg = parse_config({"data": {"train": str(p)}, "task": {"type": "classification"},
                        "audit": {"semantic_threshold": 0.9}})
    r = run_audit(p, cfg)
    f = {x.check: x for x in r.findings}
    assert f["duplicates.semantic"].ids == ["2", "3"]  # CSV ids: the line, header counted
