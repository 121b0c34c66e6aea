"""Read JSONL, CSV/TSV and Parquet into plain rows that remember where they came from."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tuneloop.errors import TuneloopError

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
            ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class RawRow:
    """One row as read. `row` is 1-based, header excluded; `line` is the file line it starts on."""

    row: int
    line: int
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}"


def file_kind(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TuneloopError(
            f"{path}: unknown file type {path.suffix!r}; use .jsonl, .csv, .tsv or .parquet")
    return kind


def _check_text(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise TuneloopError(f"{path}: this is not a text file (it contains NUL bytes); "
                            "expected JSONL, CSV or TSV text, or a .parquet file")


def read_rows(path: str | Path) -> Iterator[RawRow]:
    """Yield every row of a data file; a row that cannot be parsed carries an error, not a crash."""
    path = Path(path)
    if not path.exists():
        raise TuneloopError(f"{path}: file not found")
    kind = file_kind(path)
    if kind == "parquet":
        yield from _read_parquet(path)
        return
    _check_text(path)
    if kind == "jsonl":
        yield from _read_jsonl(path)
    else:
        yield from _read_csv(path, "\t" if kind == "tsv" else ",")


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    # errors="replace" keeps a bad byte visible as U+FFFD for the audit instead of failing the file.
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        row = 0
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row += 1
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                yield RawRow(row, lineno, None, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(data, dict):
                yield RawRow(row, lineno, None,
                             f"expected a JSON object per line, got {type(data).__name__}")
                continue
            yield RawRow(row, lineno, data)


def _read_csv(path: Path, delimiter: str) -> Iterator[RawRow]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip() for h in header]
        row = 0
        start = reader.line_num + 1
        for values in reader:
            line, start = start, reader.line_num + 1
            if not values or all(not v.strip() for v in values):
                continue
            row += 1
            if len(values) != len(header):
                yield RawRow(row, line, None, f"expected {len(header)} columns "
                             f"({', '.join(header)}), found {len(values)}")
                continue
            yield RawRow(row, line, dict(zip(header, values, strict=True)))


def _read_parquet(path: Path) -> Iterator[RawRow]:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise TuneloopError(f"{path}: cannot read as Parquet ({e})") from e
    for i, rec in enumerate(table.to_pylist(), start=1):
        yield RawRow(i, i, rec)
