"""Fault injection for data files: each bad input a user can hand tuneloop, what the CLI must do.

Read the table below as the specification. Every case writes its files into an empty folder,
runs one `tuneloop` command in it (the real entry point, `tuneloop.cli.main`, in-process, so
TuneloopError -> 2 is mapped as for a user), and checks:
  - the exit code: 0 clean, 1 a finding (audit error), 2 the user's mistake, named with file:line;
  - a fragment of the message (stdout and stderr together);
  - the input files are byte-identical afterwards, and nothing else is left in the folder
    except the outputs the case names (no temp files, no partial writes).
Audits run with --no-model --no-embeddings: the checks here are about reading files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tuneloop.cli import main

AUDIT = ["data", "audit", "--no-model", "--no-embeddings"]


def pc(prompt: str, completion: str) -> str:
    return json.dumps({"prompt": prompt, "completion": completion}) + "\n"


GOOD = pc("how do I reset my password", "use the link") + pc("where is my card", "in the post")
PRETTY = json.dumps([{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(60)],
                    indent=2)


@dataclass
class Case:
    name: str
    files: dict[str, str | bytes | None]  # None: make a folder of that name
    argv: list[str]
    exit: int
    says: str | list[str]  # fragment(s) the output must contain
    outputs: list[str] = field(default_factory=list)  # files the command may create
    check: Callable[[str], bool] | None = None  # an extra check on the output


CASES = [
    # -- issue 17: silent reinterpretation -------------------------------------------------
    Case("csv unterminated quote merges records",
         {"q.csv": 'prompt,completion\nq1,a1\nq2,"a2\nq3,a3\nq4,a4\n'},
         AUDIT + ["q.csv"], 1, ["q.csv:3", "unterminated quote"]),
    Case("csv unterminated quote, train",
         {"q.csv": 'prompt,completion\nq1,a1\nq2,"a2\nq3,a3\n',
          "tuneloop.yaml": "data:\n  train: q.csv\n"},
         ["train", ".", "--dry-run"], 2, ["q.csv:3: unterminated quote", "--skip-invalid"]),
    Case("csv stray quote merges records",
         {"s.csv": 'prompt,completion\nq1,"a1\nq2,a2\nq3,"a3"\nq4,a4\n'},
         AUDIT + ["s.csv"], 1, ["s.csv:2", "stray quote"]),
    Case("bytes that are not UTF-8, audit",
         {"l.jsonl": GOOD.encode() + b'{"prompt": "caf\xe9", "completion": "ok"}\n'},
         AUDIT + ["l.jsonl"], 1, ["l.jsonl:3", "invalid UTF-8", "0xe9"]),
    Case("bytes that are not UTF-8, train",
         {"l.jsonl": GOOD.encode() + b'{"prompt": "caf\xe9", "completion": "ok"}\n',
          "tuneloop.yaml": "data:\n  train: l.jsonl\n"},
         ["train", ".", "--dry-run"], 2, ["l.jsonl:3: invalid UTF-8", "re-save it as UTF-8"]),
    Case("UTF-16 file", {"u.jsonl": GOOD.encode("utf-16")}, AUDIT + ["u.jsonl"], 2, "UTF-16"),
    # -- issue 17: tracebacks ----------------------------------------------------------------
    Case("csv field over 131,072 characters",
         {"big.csv": 'prompt,completion\n"' + "x" * 140_000 + '",long\nq,short\n'},
         AUDIT + ["big.csv", "--json"], 0, '"records": 2'),
    Case("folder named like a data file", {"train.jsonl": None},
         AUDIT + ["train.jsonl"], 2, "train.jsonl: is a folder"),
    Case("folder as the train file of a config",
         {"train.jsonl": None, "tuneloop.yaml": "data:\n  train: train.jsonl\n"},
         ["train", ".", "--dry-run"], 2, "is a folder"),
    Case("fix output onto a folder", {"d.jsonl": GOOD, "out.jsonl": None},
         ["data", "fix", "d.jsonl", "-o", "out.jsonl"], 2, "out.jsonl: is a folder"),
    Case("audit --html onto a folder", {"d.jsonl": GOOD, "card.html": None},
         AUDIT + ["d.jsonl", "--html", "card.html", "-q"], 2, "--html card.html: is a folder"),
    # -- issue 17: unclear output ------------------------------------------------------------
    Case("card shows file:line and the text",
         {"d.jsonl": GOOD + "{not json at all\n"},
         AUDIT + ["d.jsonl"], 1, ["d.jsonl:3", "invalid JSON", "{not json at all"]),
    Case("csv ids are the file line",
         {"d.csv": "prompt,completion\nhello,hi\nhello,hi\n"},
         AUDIT + ["d.csv", "--json"], 0, ['"ids": [\n        "2",\n        "3"', '"d.csv:3"']),
    Case("empty file", {"e.jsonl": ""}, AUDIT + ["e.jsonl"], 1,
         ["score 0/100", "has no records"]),
    Case("csv with a header only", {"h.csv": "prompt,completion\n"}, AUDIT + ["h.csv"], 1,
         "score 0/100"),
    Case("every record invalid", {"b.jsonl": "{oops\nnope\n"}, AUDIT + ["b.jsonl"], 1,
         ["score 0/100", "none of the 2 records"]),
    Case("pretty-printed JSON array", {"arr.json": PRETTY}, AUDIT + ["arr.json", "--json"], 0,
         '"records": 60', check=lambda out: "invalid JSON" not in out),
    Case("broken pretty-printed JSON array",
         {"arr.json": PRETTY.replace('"answer 3"', '"answer 3" "oops"')},
         AUDIT + ["arr.json"], 2, ["arr.json:16: invalid JSON", "one JSON array"]),
    Case("--against the config's own test file",
         {"train.jsonl": GOOD, "test.jsonl": pc("where is my card", "on its way"),
          "tuneloop.yaml": "data:\n  train: train.jsonl\n  test: test.jsonl\n"},
         AUDIT + ["-c", ".", "--against", "test.jsonl", "--json"], 1, '"leakage.exact"',
         check=lambda out: [f["check"] for f in json.loads(out)["findings"]].count(
             "leakage.exact") == 1),
    Case("--against the audited file itself", {"d.jsonl": GOOD},
         AUDIT + ["d.jsonl", "--against", "d.jsonl"], 2, "the audited file itself"),
    # -- held before issue 17; kept so they stay held ----------------------------------------
    Case("binary file", {"b.jsonl": b"\x89PNG\r\n\x1a\n\x00\x00IHDR"}, AUDIT + ["b.jsonl"], 2,
         "not a text file"),
    Case("missing file", {}, AUDIT + ["nope.jsonl"], 2, "nope.jsonl: file not found"),
    Case("unknown suffix", {"d.xlsx": "x"}, AUDIT + ["d.xlsx"], 2, "unknown file type"),
    Case("missing --against file", {"d.jsonl": GOOD},
         AUDIT + ["d.jsonl", "--against", "gone.jsonl"], 2, "gone.jsonl: file not found"),
    Case("fix onto its own input", {"d.jsonl": GOOD}, ["data", "fix", "d.jsonl", "-o", "d.jsonl"],
         2, "refusing to overwrite"),
    Case("fix writes a copy and a log", {"d.jsonl": GOOD + "{broken\n"},
         ["data", "fix", "d.jsonl", "-o", "clean.jsonl"], 0, "2 of 3 records kept",
         outputs=["clean.jsonl", "clean.fixlog.jsonl"]),
    Case("split fractions that do not sum to 1", {"d.jsonl": GOOD},
         ["data", "split", "d.jsonl", "--fractions", "0.5,0.5,0.5"], 2, "sum to 1"),
    Case("bad JSON line", {"d.jsonl": GOOD + "{broken\n", "tuneloop.yaml": "data:\n  train: d.jsonl\n"},
         ["train", ".", "--dry-run"], 2, "d.jsonl:3: invalid JSON"),
]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _make(root: Path, files: dict[str, str | bytes | None]) -> None:
    for name, content in files.items():
        path = root / name
        if content is None:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def run_cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Exit code and output of `tuneloop ARGV`, as a user at a terminal would get them."""
    monkeypatch.setattr(sys, "argv", ["tuneloop", *argv])
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal width; keep lines whole
    with pytest.raises(SystemExit) as exc:
        main()
    code = exc.value.code
    captured = capsys.readouterr()
    return (0 if code is None else int(code)), captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, tmp_path, monkeypatch, capsys):
    _make(tmp_path, case.files)
    before = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, output = run_cli(case.argv, monkeypatch, capsys)
    assert code == case.exit, output
    for fragment in [case.says] if isinstance(case.says, str) else case.says:
        assert fragment in output, output
    assert "Traceback" not in output
    if case.check is not None:
        assert case.check(output), output
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # inputs untouched
    assert sorted(set(after) - set(before)) == sorted(case.outputs)  # no temp or partial files
