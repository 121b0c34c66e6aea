"""Read a data file for auditing: every row becomes a Record, valid or not, with file:line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.config import DataConfig, TaskConfig
from tuneloop.data.audit.format_checks import chat_problems
from tuneloop.data.formats import Normaliser, RecordError
from tuneloop.data.io import RawRow, read_rows
from tuneloop.records import Example


@dataclass
class Record:
    """One row of a file: where it is, its raw data, and its Example when it is valid."""

    id: str
    row: int
    line: int
    data: dict[str, Any] | None
    example: Example | None
    input: str = ""  # the user's text (the raw text column for text/label rows, not the prompt)
    output: str = ""  # the final assistant turn (the label for classification)
    text: str = ""  # a bad row's text as written (the reader keeps it only for bad rows)

    @property
    def label(self) -> str | None:
        return self.example.label if self.example else None


@dataclass
class AuditSet:
    """All rows of one file, the detected format, and the problems found while reading."""

    path: Path
    records: list[Record]
    format: str
    problems: list[tuple[Record, str]]  # (record, what is wrong) for every invalid row
    encoding: list[tuple[Record, str]] = field(default_factory=list)  # rows not in UTF-8

    @property
    def valid(self) -> list[Record]:
        return [r for r in self.records if r.example is not None]


def record_id(raw: RawRow, mapped: dict[str, Any] | None) -> str:
    """The record's own `id` when it has one, else the file line it starts on (header counted;
    for Parquet the 1-based row number): the same id `load_examples` gives it."""
    rid = (mapped or {}).get("id")
    return str(rid) if rid not in (None, "") else str(raw.line)


def read_set(path: str | Path, data: DataConfig, task: TaskConfig) -> AuditSet:
    """Read every row; collect all problems (not only the first) instead of raising."""
    norm = Normaliser(data, task)
    fmt: str | None = None
    records: list[Record] = []
    problems: list[tuple[Record, str]] = []
    encoding: list[tuple[Record, str]] = []
    for raw in read_rows(path):
        mapped = norm.mapped(raw.data) if raw.data is not None else None
        rec = Record(record_id(raw, mapped), raw.row, raw.line, raw.data, None, text=raw.text)
        records.append(rec)
        if raw.encoding:
            encoding.append((rec, raw.encoding))
        if raw.error:
            problems.append((rec, raw.error))
            continue
        try:
            fmt = fmt or norm.detect(raw.data or {})
        except RecordError as e:
            problems.append((rec, str(e)))
            continue
        extra = chat_problems(mapped or {}) if fmt == "chat" else []
        try:
            rec.example = norm.to_example(raw, fmt)
        except RecordError as e:
            extra = extra or [str(e)]
        if extra:
            rec.example = None
            problems.extend((rec, p) for p in extra)
            continue
        if raw.encoding:  # load_examples refuses it (or skips it): not a usable record
            rec.example = None
            continue
        rec.output = rec.example.target
        text = (mapped or {}).get("text") if fmt == "text_label" else None
        rec.input = str(text) if text is not None else rec.example.user_text
    return AuditSet(Path(path), records, fmt or data.format, problems, encoding)
