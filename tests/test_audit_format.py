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


def test_ids_are_own_id_field_else_row_number(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join([chat("same q", "a", id="q-1"), "", chat("same q", "a"),
                            chat("other", "b", id="q-9")]) + "\n")
    dup = by_check(audit(p))["duplicates.exact"]
    assert dup.ids == ["q-1", "2"]  # blank line skipped: the second record is row 2


def test_csv_row_numbers_exclude_header_and_count_quoted_newlines(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"multi\nline text",a\nhello,b\nhello,b\nbroken,row,extra\n')
    r = audit(p)
    f = by_check(r)
    assert f["duplicates.exact"].ids == ["2", "3"]
    assert f["format"].ids == ["4"]
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
