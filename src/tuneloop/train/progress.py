"""What a run reports while it trains: metrics.jsonl lines and the progress bar."""

from __future__ import annotations

import json
from pathlib import Path

from rich.progress import TextColumn

from tuneloop.console import progress


class MetricsLog:
    """Appends metrics.jsonl lines, flushed each time so a crash loses nothing written."""

    def __init__(self, path: Path, enabled: bool):
        self.f = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, rec: dict) -> None:
        """One JSON line."""
        if self.f:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self) -> None:
        """Close the file (nothing to do on processes that do not log)."""
        if self.f:
            self.f.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint a run resumes from: one consistent history."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def progress_bar(show: bool, total: int, done: int):
    """(bar, task) showing steps, loss, learning rate and tokens/s; (None, None) when hidden."""
    if not show:
        return None, None
    bar = progress(False, TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.1e} "
                                     "{task.fields[tps]:.0f} tok/s"))
    task = bar.add_task("train", total=total, completed=done, loss=float("nan"), lr=0.0, tps=0.0)
    bar.start()
    return bar, task
