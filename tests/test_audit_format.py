"""Format checks: broken files give findings (not crashes), ids are record ids or row numbers."""

from __future__ import annotations

import json

import pytest

from tuneloop.config import parse_config
from tuneloop.data.audit import run_audit
from tuneloop.errors import TuneloopError


def chat(user: str, answer: str, **extra) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user},
                                    {"role": "assistant", "content": answer}], **extra})


def audit(path, **data):
    cfg = parse_config({"data": {"train": str(path), **data}})
    return run_audit(path, cfg, embeddings=False)


def by_check(report):
    return {f.check: f for f in report.findings}


def test_broken_lines_become_findings_with_file_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join([
        chat("hello there", "hi"),
        "{not json",
        "[1, 2]",
        json.dumps({"messages": [{"role": "bot", "content": ""},
                                 {"role": "user", "content": "x", "foo": 1}]}),
        json.dumps({"messages": "nope"}),
        chat("a fine question", "a fine answer"),
    ]) + "\n")
    r = audit(p)
    assert r.records == 6
    fmt = by_check(r)["format"]
    assert fmt.severity == "error" and fmt.ids == ["2", "3", "4", "5"]
    problems = [(x["where"], x["problem"]) for x in fmt.to_dict()["evidence"]["problems"]]
    assert ("d.jsonl:2", problems[0][1]) == problems[0] and "invalid JSON" in problems[0][1]
    row4 = [p for w, p in problems if w == "d.jsonl:4"]
    # Every problem of the record, not only the first.
    assert any("'bot'" in p for p in row4) and any("unknown keys ['foo']" in p for p in row4)
    assert any("no assistant turn" in p for p in row4) and any("empty content" in p for p in row4)
    assert r.has_errors


def test_ids_are_own_id_field_else_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join([chat("same q", "a", id="q-1"), "", chat("same q", "a"),
                            chat("other", "b", id="q-9")]) + "\n")
    dup = by_check(audit(p))["duplicates.exact"]
    assert dup.ids == ["q-1", "3"]  # blank lines count: the second record is on line 3


def test_csv_ids_are_the_line_a_record_starts_on_header_counted(tmp_path):
    # Issue 17: ids were row numbers (header excluded), one less than the line a user opens.
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"multi\nline text",a\nhello,b\nhello,b\nbroken,row,extra\n')
    r = audit(p)
    f = by_check(r)
    assert f["duplicates.exact"].ids == ["4", "5"]
    assert [loc["where"] for loc in f["duplicates.exact"].locations] == ["d.csv:4", "d.csv:5"]
    assert f["format"].ids == ["6"]
    assert f["format"].to_dict()["evidence"]["problems"][0]["where"] == "d.csv:6"


def test_binary_file_is_a_clear_error(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR" + bytes(range(256)))
    with pytest.raises(TuneloopError, match="not a text file"):
        audit(p)


def test_unknown_suffix_and_missing_file_are_errors(tmp_path):
    with pytest.raises(TuneloopError, match="file not found"):
        audit(tmp_path / "nope.jsonl")
    p = tmp_path / "d.xlsx"
    p.write_text("x")
    with pytest.raises(TuneloopError, match="unknown file type"):
        audit(p)


def test_json_shape_and_exit_semantics(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(chat(f"question number {i}", f"answer {i}") for i in range(5)) + "\n")
    r = audit(p)
    d = r.to_dict()
    assert set(d) == {"records", "score", "findings", "recommendation"}
    assert d["records"] == 5 and 0 <= d["score"] <= 100 and not r.has_errors
    for f in d["findings"]:
        assert set(f) == {"check", "severity", "ids", "evidence"}
        assert f["severity"] in ("error", "warning", "info")
    assert d["findings"][-1]["check"] == "score"
    assert {"epochs", "learning_rate", "lora_rank", "training_tokens"} <= set(d["recommendation"])


# --- issue 17 -------------------------------------------------------------------------------

def test_unterminated_quote_is_a_format_error_not_a_merged_record(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('prompt,completion\nq1,a1\nq2,"a2\nq3,a3\n')
    r = audit(p)
    fmt = by_check(r)["format"]
    assert r.records == 2 and fmt.ids == ["3"] and r.has_errors
    (loc,) = fmt.locations
    assert loc["where"] == "q.csv:3" and "unterminated quote" in loc["problem"]
    assert loc["text"] == 'q2,"a2'


def test_bytes_that_are_not_utf8_are_an_encoding_finding_with_file_line(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_bytes((chat("fine question", "ok") + "\n").encode()
                  + b'{"prompt": "caf\xe9", "completion": "ok"}\n')
    r = audit(p)
    f = by_check(r)
    enc = f["format.encoding"]
    assert enc.severity == "error" and enc.ids == ["2"]
    assert enc.locations[0]["where"] == "l.jsonl:2"
    assert "byte 0xe9 at column 16" in enc.locations[0]["problem"]
    assert "hygiene.invalid_utf8" not in f  # reported once, where it is


def test_empty_and_all_invalid_files_score_zero(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    header_only = tmp_path / "h.csv"
    header_only.write_text("prompt,completion\n")
    bad = tmp_path / "b.jsonl"
    bad.write_text("{oops\nnot json\n")
    for p, check in ((empty, "format.empty"), (header_only, "format.empty"),
                     (bad, "format.no_valid")):
        r = audit(p)
        assert r.score == 0 and r.has_errors, p
        assert by_check(r)[check].severity == "error"


def test_cards_show_file_line_and_the_problem_text(tmp_path):
    from tuneloop.data.audit import card

    p = tmp_path / "d.jsonl"
    p.write_text("\n".join([chat("hello there", "hi"), "{not json at all",
                            chat("hello there", "hi"), chat("mail bob@example.org", "ok")]) + "\n")
    r = audit(p)
    md, page = card.to_markdown(r), card.to_html(r)
    for text in (md, page):
        assert "d.jsonl:2" in text and "{not json at all" in text and "invalid JSON" in text
        assert "d.jsonl:3" in text and "hello there → hi" in text  # the duplicate, with its text
        assert "mail [EMAIL]" in text and "bob@example.org" not in text  # PII stays masked
    dup = r.to_dict()["findings"]
    assert any(loc["where"] == "d.jsonl:1" for f in dup if f["check"] == "duplicates.exact"
               for loc in f["evidence"]["locations"])


def test_against_the_configs_own_test_file_counts_once(tmp_path, monkeypatch):
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text(chat("how do I reset my password", "use the link") + "\n"
                     + chat("something else entirely", "yes") + "\n")
    test.write_text(chat("how do I reset my password", "click") + "\n")
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"data": {"train": str(train), "test": str(test)}})
    once = run_audit(train, cfg, embeddings=False)
    twice = run_audit(train, cfg, against=["test.jsonl", str(test)], embeddings=False)
    assert [f.check for f in twice.findings].count("leakage.exact") == 1
    assert twice.score == once.score
    with pytest.raises(TuneloopError, match="the audited file itself"):
        run_audit(train, cfg, against=["train.jsonl"], embeddings=False)
