"""Duplicates, conflicts, leakage, lengths, PII, hygiene and scoring on tiny synthetic data."""

from __future__ import annotations

import json

from tuneloop.config import parse_config
from tuneloop.data.audit import run_audit
from tuneloop.data.audit.dedup import near_pairs
from tuneloop.data.audit.hygiene import hygiene_findings
from tuneloop.data.audit.pii import find_pii, iban_ok, luhn_ok, redact
from tuneloop.data.audit.score import epochs_for, recommend, score

LONG = ("the quick brown fox jumps over the lazy dog while the farmer watches from "
        "his old wooden porch and drinks a cup of tea")


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def checks(report):
    return {f.check: f for f in report.findings}


def run(path, **kw):
    cfg = parse_config({"data": {"train": str(path)}, **kw})
    return run_audit(path, cfg, embeddings=False)


def test_near_pairs_are_reverified_by_true_jaccard():
    texts = [LONG, LONG.replace("tea", "coffee"), "something else entirely " * 3, LONG[:40]]
    pairs = near_pairs(texts, 0.7)
    assert [(a, b) for a, b, _ in pairs] == [(0, 1)]
    assert all(j >= 0.7 for *_, j in pairs)


def test_exact_near_and_conflicts(tmp_path):
    rows = [{"text": "Where is my card?", "label": "card"},
            {"text": "where is   my CARD?", "label": "card"},       # exact after normalising
            {"text": LONG, "label": "other"},
            {"text": LONG.replace("tea", "coffee"), "label": "other"},  # near duplicate
            {"text": "What is the exchange rate today?", "label": "rate"},
            {"text": "what is the exchange rate today?", "label": "card"},  # conflict
            ]
    f = checks(run(write(tmp_path / "d.jsonl", rows), task={"type": "classification"}))
    assert f["duplicates.exact"].ids == ["1", "2"]
    assert set(f["duplicates.near"].ids) >= {"3", "4"}
    assert f["conflicts"].severity == "error" and f["conflicts"].ids == ["5", "6"]


def test_leakage_exact_near_and_ngram(tmp_path):
    train = write(tmp_path / "train.jsonl", [
        {"prompt": "How do I reset my password?", "completion": "Use the link."},
        {"prompt": LONG, "completion": "A story."},
        {"prompt": "Quote: " + " ".join(f"w{i}" for i in range(14)) + " and then more words "
                   "that differ from everything else in the other file entirely",
         "completion": "x"},
        {"prompt": "Unrelated question about weather", "completion": "Sunny."},
    ])
    test = write(tmp_path / "test.jsonl", [
        {"prompt": "how do i reset my  password?", "completion": "Click."},
        {"prompt": LONG.replace("tea", "coffee"), "completion": "A story."},
        {"prompt": " ".join(f"w{i}" for i in range(14)), "completion": "y"},
    ])
    cfg = parse_config({"data": {"train": str(train), "test": str(test)}})
    f = checks(run_audit(train, cfg, embeddings=False))
    assert f["leakage.exact"].ids == ["1"] and f["leakage.near"].ids == ["2"]
    assert f["leakage.ngram"].ids == ["3"]
    assert f["leakage.exact"].evidence["pairs"] == [{"id": "1", "other_id": "1"}]
    # --against works the same without a config entry.
    cfg2 = parse_config({"data": {"train": str(train)}})
    f2 = checks(run_audit(train, cfg2, against=[test], embeddings=False))
    assert f2["leakage.exact"].ids == ["1"]


def test_lengths_with_a_real_tokenizer_and_trivial_answers(tmp_path):
    from transformers import AutoTokenizer

    from tiny import build_tiny_model

    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m"))
    p = write(tmp_path / "d.jsonl", [
        {"prompt": "short question", "completion": "short answer"},
        {"prompt": "long " * 300, "completion": "long answer"},
        {"prompt": "what now", "completion": "N/A"},
    ])
    cfg = parse_config({"data": {"train": str(p)}, "model": {"max_seq_len": 64}})
    r = run_audit(p, cfg, embeddings=False, tokenizer=tok)
    f = checks(r)
    assert f["lengths.truncated"].ids == ["2"]
    assert f["lengths.distribution"].evidence["unit"] == "tokens"
    assert f["lengths.trivial_response"].ids == ["3"]
    assert r.recommendation["token_unit"] == "tokens"


def test_pii_kinds_with_checksums():
    text = ("mail jane.roe@mail.co.uk, card 4539 1488 0343 6467, bad card 4539 1488 0343 6468, "
            "IBAN GB82 WEST 1234 5698 7654 32, ssn 123-45-6789, ip 192.168.1.20, "
            "bad ip 999.1.1.1, call +1 415-555-0132")
    kinds = [k for k, *_ in find_pii(text)]
    assert kinds == ["email", "credit_card", "iban", "ssn", "ip_address", "phone"]
    assert luhn_ok("4539148803436467") and not luhn_ok("4539148803436468")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert "[EMAIL]" in redact(text) and "jane.roe" not in redact(text)
    assert find_pii("order 12345 costs 20.50 on 2021-03-04") == []


def test_pii_findings_mask_evidence(tmp_path):
    p = write(tmp_path / "d.jsonl", [{"prompt": "my mail is bob@example.org", "completion": "ok"}])
    f = checks(run(p))["pii.email"]
    assert f.ids == ["1"] and "bob@example.org" not in json.dumps(f.to_dict())


def test_hygiene():
    rows = [("1", {"t": "caf\u00c3\u00a9 au lait"}), ("2", {"t": "bad \ufffd byte"}),
            ("3", {"t": "line<br/>break &amp; more"}), ("4", {"t": "bell\x07"}),
            ("5", {"t": "clean text, tabs\tand\nnewlines"})]
    f = {x.check: x.ids for x in hygiene_findings(rows)}
    assert f == {"hygiene.mojibake": ["1"], "hygiene.invalid_utf8": ["2"],
                 "hygiene.html": ["3"], "hygiene.control_chars": ["4"]}


def test_score_and_recommendation():
    from tuneloop.data.audit.findings import Finding

    s, drivers = score([Finding("format", "error", ["1"], "x"),
                        Finding("labels.outlier", "info", ["2"], "y")], 10)
    assert s < 100 and [d["check"] for d in drivers] == ["format"]
    assert score([], 10)[0] == 100
    assert epochs_for(20) == 5 and epochs_for(500) == 3 and epochs_for(20_000) == 1
    rec = recommend(500, 100.0, "tokens")
    assert rec["epochs"] == 3 and rec["training_tokens"] == 150_000


def test_short_texts_with_one_added_word_are_near_duplicates():
    texts = ["My PIN got blocked, help", "so my PIN got blocked, help?",
             "How do I change my PIN?", "How do I change my address?"]
    pairs = {(a, b) for a, b, _ in near_pairs(texts, 0.7)}
    assert (0, 1) in pairs  # word 5-grams alone give Jaccard 0.5 here
    assert (2, 3) not in pairs  # same frame, different question
