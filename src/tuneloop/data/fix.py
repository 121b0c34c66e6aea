"""`data fix`: write a cleaned copy (invalid rows, duplicates and empties dropped, PII optionally
redacted) and a JSONL log of every change. The input file is never modified."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tuneloop.config import Config
from tuneloop.data.audit.conflicts import differ
from tuneloop.data.audit.dedup import duplicate_groups
from tuneloop.data.audit.lengths import TRIVIAL
from tuneloop.data.audit.pii import find_pii, redact
from tuneloop.data.audit.records import Record, read_set
from tuneloop.data.audit.text import normalise
from tuneloop.data.io import file_kind
from tuneloop.errors import TuneloopError
from tuneloop.files import atomic_write_text, replacing


@dataclass
class FixResult:
    """Counts of what happened, and where the cleaned file and its change log are."""

    records: int
    kept: int
    dropped: int
    redacted: int
    out: Path
    log: Path


def log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".fixlog.jsonl")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    return value


def _drops(recs: list[Record], near_threshold: float, classification: bool,
           ) -> dict[int, tuple[str, str | None]]:
    """Index -> (reason, kept id) for duplicates (one kept per answer) and empty answers."""
    drops: dict[int, tuple[str, str | None]] = {}
    if not classification:
        for i, r in enumerate(recs):
            if normalise(r.output).strip(" .!") in TRIVIAL:
                drops[i] = ("empty or placeholder response", None)
    for group in duplicate_groups(recs, near_threshold):
        kept: list[int] = []
        for i in group:
            if i in drops:
                continue
            # A near-same input with a different label is a conflict, not a duplicate: keep
            # both so a person decides (the audit reports it as an error).
            same = next((k for k in kept if not differ(recs[k], recs[i])), None)
            if same is None:
                kept.append(i)
                continue
            exact = normalise(recs[i].input) == normalise(recs[same].input)
            drops[i] = ("exact duplicate" if exact else "near duplicate", recs[same].id)
    return drops


def write_records(rows: list[dict[str, Any]], out: Path) -> None:
    """Write rows in the format the output suffix names (JSONL, CSV, TSV, Parquet), atomically."""
    kind = file_kind(out)
    if out.is_dir():
        raise TuneloopError(f"{out}: is a folder; give the path of a file to write, "
                            f"e.g. {out / ('clean' + out.suffix)}")
    try:
        with replacing(out) as tmp:
            if kind == "parquet":
                pq.write_table(pa.Table.from_pylist(rows), tmp)
            else:
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    _write_text_rows(f, rows, kind)
    except OSError as e:
        raise TuneloopError(f"{out}: cannot write it ({e.strerror or e}); choose another "
                            "output path") from None


def _write_text_rows(f, rows: list[dict[str, Any]], kind: str) -> None:
    if kind == "jsonl":
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        header = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(f, header, delimiter="\t" if kind == "tsv" else ",")
        w.writeheader()
        w.writerows(rows)


def fix_file(path: str | Path, out: str | Path, cfg: Config, redact_pii: bool = False) -> FixResult:
    """Clean `path` into `out` and log every dropped or changed record to <out>.fixlog.jsonl."""
    path, out = Path(path), Path(out)
    if out.resolve() == path.resolve():
        raise TuneloopError(f"{out}: refusing to overwrite the input; choose another -o path")
    file_kind(out)  # fail early on an unknown output suffix
    aset = read_set(path, cfg.data, cfg.task)
    log: list[dict[str, Any]] = []
    for rec, why in aset.problems:
        log.append({"action": "drop", "id": rec.id, "line": rec.line, "reason": f"invalid: {why}"})
    valid = aset.valid
    classification = cfg.task.type == "classification" or (
        bool(valid) and all(r.label is not None for r in valid))
    drops = _drops(valid, cfg.audit.near_threshold, classification)
    rows, redacted = [], 0
    for i, rec in enumerate(valid):
        if i in drops:
            reason, kept = drops[i]
            log.append({"action": "drop", "id": rec.id, "line": rec.line, "reason": reason,
                        "kept": kept})
            continue
        data = dict(rec.data or {})
        if redact_pii:
            kinds = sorted({k for v in data.values() if isinstance(v, str)
                            for k, _, _ in find_pii(v)})
            new = _redact_value(data)
            if new != data:
                redacted += 1
                log.append({"action": "redact", "id": rec.id, "line": rec.line, "kinds": kinds})
            data = new
        rows.append(data)
    seen = {e["id"] for e in log if e["action"] == "drop"}
    write_records(rows, out)
    lp = log_path(out)
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n"
                   for e in sorted(log, key=lambda e: e["line"]))
    try:
        atomic_write_text(lp, text)
    except OSError as e:
        raise TuneloopError(f"{lp}: cannot write the change log ({e.strerror or e})") from None
    return FixResult(len(aset.records), len(rows), len(seen), redacted, out, lp)
