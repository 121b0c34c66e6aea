"""Writes that others read: atomic replacement (temp, fsync, rename) and an inter-process lock.

A reader never sees a half-written file: registry pointers, reports, cleaned data and cached
calibrations are all written through `replacing` (directly or via `atomic_write_text`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temp path beside `path` to write; after the block it is fsynced and renamed over
    `path`. On an error the temp file is removed and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write temp, fsync, rename: readers never see a half-written file."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    """Indented JSON (anything else as str), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on `path` (created with its folder): DDP ranks, parallel
    runs and concurrent CLI calls take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_json_object(path: Path, damaged: str) -> dict[str, Any]:
    """A JSON object from `path`; a torn or non-object file is a TuneloopError naming the file,
    followed by `damaged` (what that means and what to do). A missing file raises
    FileNotFoundError, which callers word for their own case."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise TuneloopError(f"{path}: not valid JSON ({e}); {damaged}") from None
    if not isinstance(data, dict):
        raise TuneloopError(f"{path}: expected a JSON object; {damaged}")
    return data
