"""Output conventions shared by every command: quiet/JSON modes and progress bars."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

err = Console(stderr=True)
out = Console()


def progress(disable: bool = False, *extra_columns: Any) -> Progress:
    """A progress bar on stderr (stdout stays clean for --json); silent when disabled."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn(
        "{task.completed}/{task.total}"), *extra_columns, TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=err, disable=disable, transient=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()
