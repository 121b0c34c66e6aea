"""Read JSONL, JSON arrays, CSV/TSV and Parquet into plain rows that remember where they came from.

Every row carries the file line it starts on (header counted, blank lines counted; for Parquet
the 1-based row number): record ids default to it, so an id names the line to open. A row that
cannot be parsed carries an error instead of data, and bytes that are not UTF-8 are named with
their line and column instead of silently becoming U+FFFD.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tuneloop.errors import TuneloopError

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
            ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
# Text is decoded with errors="surrogateescape": each byte that is not UTF-8 arrives as one
# lone surrogate U+DC80..U+DCFF, which says which byte it was and where; it is then replaced
# by U+FFFD (one character for one, so offsets and columns stay right).
BAD_BYTE = re.compile("[\udc80-\udcff]")
# csv's default cap is 131,072 characters per field; long documents (contracts, papers) pass it.
FIELD_LIMIT = 2**31 - 1
SNIPPET = 160  # characters of a bad row's text kept to show the problem


@dataclass
class RawRow:
    """One row as read. `row` is 1-based, header and blank lines excluded; `line` is the file
    line the row starts on (header counted), the default record id. `error`: why it could not
    be parsed (then `data` is None); `encoding`: where its bytes are not UTF-8; `text`: the start
    of a bad row as written, to show it."""

    row: int
    line: int
    data: dict[str, Any] | None
    error: str | None = None
    encoding: str | None = None
    text: str = ""

    @property
    def where(self) -> str:
        return f"line {self.line}"


def file_kind(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TuneloopError(
            f"{path}: unknown file type {path.suffix!r}; use .jsonl, .json (an array of "
            "records), .csv, .tsv or .parquet")
    return kind


def _check_text(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(8192)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TuneloopError(f"{path}: the file is UTF-16; re-save it as UTF-8 "
                            "(e.g. `iconv -f utf-16 -t utf-8`)")
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
    if path.is_dir():
        raise TuneloopError(f"{path}: is a folder, not a data file; give the path of the "
                            f"{path.suffix} file itself")
    try:
        _check_text(path)
        if kind == "jsonl":
            yield from _read_json(path)
        else:
            yield from _read_csv(path, "\t" if kind == "tsv" else ",")
    except OSError as e:
        raise TuneloopError(f"{path}: cannot read the file ({e.strerror or e}); "
                            "check that it exists and is readable") from None


def _snippet(text: str) -> str:
    text = text.rstrip("\r\n")
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "…"


def bad_byte_note(text: str, line: int | None = None) -> str | None:
    """'invalid UTF-8 ...' naming the first bad byte of `text` (its column, and its line when
    given), or None when every byte was UTF-8."""
    bad = list(BAD_BYTE.finditer(text))
    if not bad:
        return None
    m = bad[0]
    start = text.rfind("\n", 0, m.start()) + 1
    col = m.start() - start + 1
    at = f"line {line + text.count(chr(10), 0, m.start())}, column {col}" if line is not None \
        else f"column {col}"
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return (f"invalid UTF-8: byte 0x{ord(m.group()) - 0xDC00:02x} at {at}{more} would be read as "
            "U+FFFD; the file is not UTF-8: re-save it as UTF-8 (e.g. "
            "`iconv -f cp1252 -t utf-8 IN > OUT`)")


def _clean(text: str) -> str:
    return BAD_BYTE.sub("\ufffd", text)


def _open_text(path: Path) -> io.TextIOWrapper:
    # newline="" keeps line ends as written: csv needs them, and lines count the same for both.
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


# --------------------------------------------------------------------------- JSON

def _read_json(path: Path) -> Iterator[RawRow]:
    with _open_text(path) as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        # A .json file may be one JSON array (pretty-printed or not) or JSONL under another name;
        # a JSONL file never starts with '[' (each line must be an object).
        if path.suffix.lower() == ".json" or head.startswith("["):
            text = f.read()
            rows = _json_document(path, text)
            if rows is not None:
                yield from rows
                return
            f.seek(0)
        yield from _read_jsonl(f)


def _read_jsonl(f: io.TextIOWrapper) -> Iterator[RawRow]:
    row = 0
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        row += 1
        note = bad_byte_note(line)
        if note:
            line = _clean(line)
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            yield RawRow(row, lineno, None, f"invalid JSON ({e.msg} at column {e.colno})", note,
                         _snippet(line))
            continue
        if not isinstance(data, dict):
            yield RawRow(row, lineno, None,
                         f"expected a JSON object per line, got {type(data).__name__}", note,
                         _snippet(line))
            continue
        yield RawRow(row, lineno, data, None, note, _snippet(line) if note else "")


def _json_document(path: Path, text: str) -> list[RawRow] | None:
    """The rows of a file holding one JSON value (an array of records, or one object), or None
    when it is JSON Lines after all (a first value followed by more)."""
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return []
    clean = _clean(text)
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    try:
        if clean[start] != "[":
            value, end = json.JSONDecoder().raw_decode(clean, start)
            if clean[end:].strip():
                return None  # a first value with more after it: JSON Lines
            spans = [(start, end, value)]
        else:
            spans = _array_spans(clean, start)
    except json.JSONDecodeError as e:
        if clean[start] != "[" or _complete_json(clean[start:].split("\n", 1)[0]):
            return None  # JSON Lines (maybe with bad lines): each line is reported on its own
        raise TuneloopError(
            f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno}); the file is one JSON "
            "array of records, so nothing after this point can be read: fix the syntax there, "
            "or write one object per line (JSONL), e.g. `jq -c '.[]' IN.json > OUT.jsonl`"
        ) from None
    rows = []
    for i, (a, b, value) in enumerate(spans, start=1):
        line = line_of(a)
        note = bad_byte_note(text[a:b], line)
        snippet = _snippet(clean[a:b].split("\n", 1)[0])
        if isinstance(value, dict):
            rows.append(RawRow(i, line, value, None, note, snippet if note else ""))
        else:
            rows.append(RawRow(i, line, None, "expected a JSON object for each record, got "
                               f"{type(value).__name__}", note, snippet))
    return rows


def _complete_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _array_spans(text: str, start: int) -> list[tuple[int, int, Any]]:
    """(start, end, value) of each element of the JSON array at text[start]; raises
    JSONDecodeError (with its line and column) at the first syntax error."""
    dec = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(text, start + 1).end()
    out: list[tuple[int, int, Any]] = []
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            value, end = dec.raw_decode(text, i)
            out.append((i, end, value))
            i = ws.match(text, end).end()
            if text.startswith(",", i):
                i = ws.match(text, i + 1).end()
                continue
            if text.startswith("]", i):
                i += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter or ']'", text, i)
    i = ws.match(text, i).end()
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)
    return out


# --------------------------------------------------------------------------- CSV / TSV

class _Lines:
    """The file's lines for the csv reader, remembering the lines of the record being read."""

    def __init__(self, f: io.TextIOWrapper) -> None:
        self.f, self.lines = f, []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self.f)
        self.lines.append(line)
        return _clean(line)

    def take(self) -> str:
        """The raw text of the record just read (its bad bytes still marked)."""
        text, self.lines = "".join(self.lines), []
        return text


def _opening_quote_line(raw: str, delimiter: str, first: int) -> int:
    """The line on which the last quote that opened a field sits: where a quote left open began."""
    line, opened, quoted, field_start = first, first, False, True
    i = 0
    while i < len(raw):
        c = raw[i]
        if quoted:
            if c == '"':
                if raw.startswith('"', i + 1):
                    i += 1
                else:
                    quoted = False
        elif c == '"' and field_start:
            quoted, opened = True, line
        field_start = not quoted and c in (delimiter, "\n", "\r")
        if c == "\n" or (c == "\r" and not raw.startswith("\n", i + 1)):
            line += 1
        i += 1
    return opened


def quote_problem(raw: str, delimiter: str, first: int) -> str | None:
    """Why one record's text is not well-formed CSV quoting, or None. The lenient reader merges
    the lines after an unclosed quote into one field and reads a stray quote as text; a strict
    reading of the same text names both."""
    if '"' not in raw:
        return None
    try:
        list(csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as e:
        span = raw.count("\n") + (not raw.endswith("\n"))
        if "unexpected end of data" in str(e):
            opened = _opening_quote_line(raw, delimiter, first)
            after = first + span - 1 - opened
            return (f"unterminated quote: the quoted field opened on line {opened} never closes, "
                    f"so everything after it to the end of the file ({after} more lines) was read "
                    "as one field; add the closing quote, or double a quote that is part of the "
                    'text ("")')
        return (f"stray quote: a closing quote is followed by more text ({e}) in the record on "
                f"lines {first}-{first + span - 1}; quote the whole field and double each quote "
                'inside it ("")')
    return None


def _read_csv(path: Path, delimiter: str) -> Iterator[RawRow]:
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    with _open_text(path) as f:
        lines = _Lines(f)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise TuneloopError(f"{path}:1: cannot read the header row ({e})") from None
        raw = lines.take()
        problem = quote_problem(raw, delimiter, 1)
        if problem:
            raise TuneloopError(f"{path}:1: the header row: {problem}")
        header = [h.strip() for h in header]
        row, start = 0, reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # the reader cannot go on past this
                raise TuneloopError(f"{path}:{reader.line_num}: cannot read as "
                                    f"{'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None
            line, start = start, reader.line_num + 1
            raw = lines.take()
            if not values or all(not v.strip() for v in values):
                continue
            row += 1
            note = bad_byte_note(raw, line)
            problem = quote_problem(_clean(raw), delimiter, line)
            if problem:
                yield RawRow(row, line, None, problem, note, _snippet(_clean(raw).split("\n")[0]))
            elif len(values) != len(header):
                yield RawRow(row, line, None, f"expected {len(header)} columns "
                             f"({', '.join(header)}), found {len(values)}", note,
                             _snippet(_clean(raw)))
            else:
                yield RawRow(row, line, dict(zip(header, values, strict=True)), None, note,
                             _snippet(_clean(raw)) if note else "")


# --------------------------------------------------------------------------- Parquet

def _read_parquet(path: Path) -> Iterator[RawRow]:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise TuneloopError(f"{path}: cannot read as Parquet ({e})") from e
    for i, rec in enumerate(table.to_pylist(), start=1):
        yield RawRow(i, i, rec)
