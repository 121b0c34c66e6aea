"""Turning logged traffic and training files into comparable texts, labels and time buckets."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from tuneloop.config import DEFAULT_CLASSIFY_TEMPLATE, Config, DataConfig, TaskConfig
from tuneloop.data.load import load_examples
from tuneloop.evaluate.metrics import parse_label
from tuneloop.records import Example

_NICE = [timedelta(minutes=m) for m in (1, 5, 15, 30)] + [
    timedelta(hours=h) for h in (1, 3, 6, 12)] + [timedelta(days=d) for d in (1, 7)]


@cache
def _template_re(template: str, labels: tuple[str, ...]) -> re.Pattern | None:
    if "{text}" not in template:
        return None
    parts = [re.escape(p.replace("{labels}", ", ".join(labels))) for p in template.split("{text}")]
    return re.compile("(.*?)".join(parts), re.DOTALL)


def raw_text(text: str, task: TaskConfig) -> str:
    """The user's own words: a classification prompt with its template stripped.

    Clients of a fine-tuned classifier send the rendered template; comparing the templates
    would hide drift in the part that varies, so it is cut away when the text matches it.
    """
    if task.type != "classification":
        return text.strip()
    rx = _template_re(task.prompt_template or DEFAULT_CLASSIFY_TEMPLATE, tuple(task.labels or ()))
    m = rx.fullmatch(text.strip()) if rx else None
    return (m.group(1) if m else text).strip()


def to_datetime(x: Any) -> datetime:
    """A store timestamp (datetime, ISO string or epoch seconds) as an aware UTC datetime."""
    if isinstance(x, datetime):
        return x if x.tzinfo else x.replace(tzinfo=UTC)
    if isinstance(x, int | float):
        return datetime.fromtimestamp(x, UTC)
    d = datetime.fromisoformat(str(x))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def bucket_edges(times: list[datetime], max_buckets: int = 12) -> list[datetime]:
    """Edges of equal time buckets over the span of `times`, at a readable width (1 min ... 7 d)."""
    if not times:
        return []
    lo, hi = min(times), max(times)
    want = (hi - lo) / max_buckets
    width = next((w for w in _NICE if w >= want), _NICE[-1])
    start = datetime.fromtimestamp(lo.timestamp() // width.total_seconds() * width.total_seconds(), UTC)
    edges = [start]
    while edges[-1] <= hi:
        edges.append(edges[-1] + width)
    return edges


def _version_config(version) -> dict | None:
    c = getattr(version, "config", None)
    if c is None:
        return None
    return c.model_dump(mode="json") if hasattr(c, "model_dump") else dict(c)


def reference_examples(cfg: Config, champion=None) -> tuple[list[Example], str]:
    """What the champion was trained on (its run's data.train, when still on disk; else the
    project's), plus the frozen eval set: the reference the traffic is compared with."""
    train, data, task = cfg.data.train, cfg.data, cfg.task
    vc = _version_config(champion) if champion is not None else None
    if vc and vc.get("data", {}).get("train") and Path(vc["data"]["train"]).exists():
        train = vc["data"]["train"]
        data = DataConfig.model_validate(vc["data"])
        task = TaskConfig.model_validate(vc.get("task") or cfg.task.model_dump())
    examples = list(load_examples(train, data, task, skip_invalid=True).examples)
    sources = [str(train)]
    frozen = cfg.retrain.frozen_eval or cfg.data.test
    if frozen and Path(frozen).exists():
        examples += load_examples(frozen, cfg.data, cfg.task, skip_invalid=True).examples
        sources.append(str(frozen))
    return examples, " + ".join(sources)


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def feedback_correct(f: dict, task: TaskConfig) -> float | None:
    """1.0 if the feedback says the served answer was right, 0.0 if wrong, in between for a
    rating; None when the feedback says nothing about correctness."""
    out = f.get("output_text") or ""
    labels = task.labels or []
    if f.get("label"):
        pred = parse_label(out, labels) if labels else out.strip()
        return float(pred == f["label"])
    if f.get("corrected"):
        return float(_norm(out) == _norm(f["corrected"]))
    r = f.get("rating")
    if r is None:
        return None
    r = float(r)
    # Thumbs (-1/0/1) or a 1-5 scale: both map onto [0, 1].
    return max(0.0, r) if r <= 1 else min(1.0, (r - 1) / 4)


def feedback_label(f: dict, task: TaskConfig) -> str | None:
    """The right answer a feedback row supplies: its label, or a correction (parsed to a label
    for classification); None when it gives only a rating."""
    if f.get("label"):
        return f["label"]
    c = (f.get("corrected") or "").strip()
    if not c:
        return None
    if task.type == "classification" and task.labels:
        return parse_label(c, task.labels)
    return c
