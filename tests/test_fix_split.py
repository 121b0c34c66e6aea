"""data fix (cleaned copy + change log, input untouched), grouped splits and the CLI."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from tuneloop.config import parse_config
from tuneloop.data.commands import register
from tuneloop.data.fix import fix_file
from tuneloop.data.split import grouped_split, train_validation_split
from tuneloop.errors import TuneloopError
from tuneloop.records import Example, Message

LONG = ("the quick brown fox jumps over the lazy dog while the farmer watches from "
        "his old wooden porch and drinks a cup of tea")


def rows_file(path):
    rows = [{"prompt": "How do I reset my password?", "completion": "Use the reset link."},
            {"prompt": "how do i reset my password?", "completion": "Use the reset link."},
            {"prompt": LONG, "completion": "A story about a fox."},
            {"prompt": LONG.replace("tea", "coffee"), "completion": "A story about a fox."},
            {"prompt": "Email bob@example.org about card 4111 1111 1111 1111",
             "completion": "Done."},
            {"prompt": "Say nothing", "completion": "N/A"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    return path


def test_fix_writes_clean_copy_and_log(tmp_path):
    src = rows_file(tmp_path / "d.jsonl")
    before = src.read_bytes()
    cfg = parse_config({"data": {"train": str(src)}})
    r = fix_file(src, tmp_path / "out" / "clean.jsonl", cfg, redact_pii=True)
    assert src.read_bytes() == before
    kept = [json.loads(x) for x in r.out.read_text().splitlines()]
    assert [k["prompt"][:6] for k in kept] == ["How do", "the qu", "Email "]
    assert "bob@example.org" not in kept[2]["prompt"] and "[EMAIL]" in kept[2]["prompt"]
    assert "[CREDIT_CARD]" in kept[2]["prompt"]
    log = {e["id"]: e for e in map(json.loads, r.log.read_text().splitlines())}
    assert log["2"]["reason"] == "exact duplicate" and log["2"]["kept"] == "1"
    assert log["4"]["reason"] == "near duplicate" and log["4"]["kept"] == "3"
    assert log["6"]["reason"].startswith("empty") and log["7"]["reason"].startswith("invalid")
    assert log["5"]["action"] == "redact" and log["5"]["kinds"] == ["credit_card", "email"]
    assert (r.records, r.kept, r.dropped, r.redacted) == (7, 3, 4, 1)


def test_fix_keeps_conflicting_labels_and_refuses_to_overwrite(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("text,label\nwhere is my card,card\nwhere is my card,rate\n"
                   "where is my card,card\n")
    cfg = parse_config({"data": {"train": str(src)}, "task": {"type": "classification"}})
    r = fix_file(src, tmp_path / "clean.csv", cfg)
    assert r.out.read_text().splitlines() == ["text,label", "where is my card,card",
                                              "where is my card,rate"]
    with pytest.raises(TuneloopError, match="refusing to overwrite"):
        fix_file(src, src, cfg)


def ex(i: int, label: str) -> Example:
    return Example(str(i), [Message("user", f"q{i}"), Message("assistant", label)], label)


def test_grouped_split_keeps_clusters_together_and_stratifies():
    examples = [ex(i, "ab"[i % 2]) for i in range(100)]
    groups = [[0, 2, 4, 6], [1, 3, 5], [10, 12]]
    tr, va, te = grouped_split(examples, (0.8, 0.1, 0.1), seed=3, groups=groups)
    assert (len(tr), len(va), len(te)) == (80, 10, 10)
    where = {e.id: s for s, part in enumerate((tr, va, te)) for e in part}
    for g in groups:
        assert len({where[str(i)] for i in g}) == 1
    for part in (va, te):
        assert sorted(e.label for e in part).count("a") == 5
    assert grouped_split(examples, (0.8, 0.1, 0.1), 3, groups) == (tr, va, te)  # seeded
    with pytest.raises(ValueError):
        grouped_split(examples, (0.8, 0.1, 0.2), 3)


def test_train_validation_split_unchanged():
    tr, va = train_validation_split([ex(i, "ab"[i % 2]) for i in range(20)], 0.1, 0)
    assert len(tr) == 18 and len(va) == 2 and {e.label for e in va} == {"a", "b"}


def cli():
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keeps `data` a sub-command, as in the real CLI
        pass

    return app


def test_cli_audit_exit_codes_json_and_html(tmp_path):
    src = rows_file(tmp_path / "d.jsonl")
    runner = CliRunner()
    res = runner.invoke(cli(), ["data", "audit", str(src), "--json", "--no-model",
                                "--no-embeddings", "--html", str(tmp_path / "c.html")])
    assert res.exit_code == 1, res.output  # the broken line is an error
    d = json.loads(res.stdout)
    assert d["records"] == 7 and any(f["check"] == "format" for f in d["findings"])
    page = (tmp_path / "c.html").read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "http" not in page
    clean = tmp_path / "ok.jsonl"
    clean.write_text(json.dumps({"prompt": "hi there", "completion": "hello"}) + "\n")
    res = runner.invoke(cli(), ["data", "audit", str(clean), "-q", "--no-model",
                                "--no-embeddings"])
    assert res.exit_code == 0, res.output


def test_cli_fix_and_split(tmp_path):
    src = tmp_path / "d.csv"
    lines = [f"question number {i} about topic {i % 3},{'xyz'[i % 3]}" for i in range(30)]
    src.write_text("text,category\n" + "\n".join(lines + lines[:3]) + "\n")
    runner = CliRunner()
    res = runner.invoke(cli(), ["data", "split", str(src), "--set", "data.columns.label=category",
                                "-o", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["train"] + d["validation"] + d["test"] == 33 and d["clusters_kept_together"] == 3
    assert (tmp_path / "s" / "test.csv").read_text().startswith("text,category")
    res = runner.invoke(cli(), ["data", "fix", str(src), "-o", str(tmp_path / "c.csv"),
                                "--set", "data.columns.label=category", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kept"] == 30
