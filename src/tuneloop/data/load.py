"""Files to Example lists, with file:line errors, `skip_invalid`, and the train/val/test splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.config import Config, DataConfig, TaskConfig
from tuneloop.data.formats import Normaliser, RecordError
from tuneloop.data.io import read_rows
from tuneloop.data.split import train_validation_split
from tuneloop.errors import TuneloopError
from tuneloop.records import Example


@dataclass
class Loaded:
    examples: list[Example]
    format: str
    skipped: list[str] = field(default_factory=list)  # "file:line: why" for each skipped row


def load_examples(path: str | Path, data: DataConfig, task: TaskConfig,
                  skip_invalid: bool | None = None, limit: int | None = None) -> Loaded:
    """Read and normalise one file. Raises TuneloopError at the first bad row (unparseable,
    not UTF-8, or not fitting its format) unless skipping; a skipped row is listed in `skipped`."""
    skip = data.skip_invalid if skip_invalid is None else skip_invalid
    norm = Normaliser(data, task)
    fmt: str | None = None
    examples: list[Example] = []
    skipped: list[str] = []
    for raw in read_rows(path):
        if limit is not None and len(examples) >= limit:
            break
        try:
            if raw.error or raw.encoding:
                # Bytes that are not UTF-8 would train as U+FFFD: refuse them unless skipping.
                raise RecordError("; ".join(m for m in (raw.error, raw.encoding) if m))
            fmt = fmt or norm.detect(raw.data or {})
            examples.append(norm.to_example(raw, fmt))
        except RecordError as e:
            msg = f"{path}:{raw.line}: {e}"
            if not skip:
                raise TuneloopError(msg + "\n  (pass --skip-invalid to skip bad records)") from None
            skipped.append(msg)
    if not examples:
        why = f" ({len(skipped)} invalid rows skipped)" if skipped else ""
        raise TuneloopError(f"{path}: no usable examples{why}; the data set is empty")
    _check_unique_ids(examples, path)
    return Loaded(examples, fmt or data.format, skipped)


def _check_unique_ids(examples: list[Example], path: str | Path) -> None:
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise TuneloopError(f"{path}: record id {ex.id!r} appears more than once; ids must be unique")
        seen.add(ex.id)


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    format: str
    skipped: list[str]

    def describe(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation),
                "test": len(self.test), "skipped": len(self.skipped)}


def load_splits(cfg: Config, skip_invalid: bool | None = None) -> Splits:
    """Train, validation (a file or a seeded stratified slice of train) and test examples."""
    train = load_examples(cfg.data.train, cfg.data, cfg.task, skip_invalid, cfg.data.max_examples)
    skipped = list(train.skipped)
    if cfg.data.validation:
        val = load_examples(cfg.data.validation, cfg.data, cfg.task, skip_invalid)
        tr, va = train.examples, val.examples
        skipped += val.skipped
    elif cfg.data.validation_fraction > 0 and len(train.examples) >= 10:
        tr, va = train_validation_split(train.examples, cfg.data.validation_fraction, cfg.seed)
    else:
        tr, va = train.examples, []
    test: list[Example] = []
    if cfg.data.test:
        te = load_examples(cfg.data.test, cfg.data, cfg.task, skip_invalid)
        test, skipped = te.examples, skipped + te.skipped
    return Splits(tr, va, test, train.format, skipped)
