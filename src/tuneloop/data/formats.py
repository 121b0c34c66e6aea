"""Normalise the four input formats (chat, prompt/completion, alpaca, text/label) to `Example`.

Format names follow TRL's dataset taxonomy loosely: `chat` is OpenAI's `messages` list,
`prompt_completion` a single exchange, `alpaca` instruction/input/output, `text_label` a
classification row rendered through the task's prompt template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.config import DEFAULT_CLASSIFY_TEMPLATE, DataConfig, TaskConfig
from tuneloop.data.io import RawRow
from tuneloop.records import ROLES, Example, Message

FORMAT_KEYS = {
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text_label": ("text", "label"),
}
EXPECTED = {
    "chat": "a 'messages' list of {role, content} with at least one assistant turn",
    "prompt_completion": "'prompt' and 'completion' strings",
    "alpaca": "'instruction' and 'output' strings (and optional 'input')",
    "text_label": "'text' and 'label' fields",
}


class RecordError(ValueError):
    """A record that does not fit its format; the message says what was expected."""


@dataclass
class Normaliser:
    """Turns raw rows of one file into Examples under one data and task config."""

    data: DataConfig
    task: TaskConfig

    def detect(self, row: dict[str, Any]) -> str:
        """Pick the format from a row's keys (after column mapping)."""
        if self.data.format != "auto":
            return self.data.format
        keys = set(self.mapped(row))
        for fmt, needed in FORMAT_KEYS.items():
            if all(k in keys for k in needed):
                return fmt
        raise RecordError(
            f"cannot tell the format from keys {sorted(row)}; expected one of: "
            + "; ".join(f"{f}: {EXPECTED[f]}" for f in FORMAT_KEYS)
            + ". Set data.format and data.columns to map your column names.")

    def mapped(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with data.columns applied: the user's column names mapped to canonical ones."""
        if not self.data.columns:
            return row
        out = dict(row)
        for canonical, column in self.data.columns.items():
            if column in row:
                out[canonical] = row[column]
        return out

    def to_example(self, raw: RawRow, fmt: str) -> Example:
        """Normalise one parsed row; raises RecordError naming what was expected."""
        row = self.mapped(raw.data or {})
        missing = [k for k in FORMAT_KEYS[fmt] if row.get(k) is None]
        if missing:
            raise RecordError(f"missing {', '.join(map(repr, missing))}; expected {EXPECTED[fmt]}")
        # Without its own id, a record is named by the file line it starts on (header counted).
        rid = str(row["id"]) if row.get("id") not in (None, "") else str(raw.line)
        label = row.get("label")
        label = None if label is None else str(label).strip()
        source = row.get("source")
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        if fmt == "chat":
            messages = _chat_messages(row["messages"])
        elif fmt == "prompt_completion":
            messages = [Message("user", _text(row, "prompt")),
                        Message("assistant", _text(row, "completion"))]
        elif fmt == "alpaca":
            inp = str(row.get("input") or "").strip()
            user = _text(row, "instruction") + (f"\n\n{inp}" if inp else "")
            messages = [Message("user", user), Message("assistant", _text(row, "output"))]
        else:
            messages = self._classification_messages(_text(row, "text"), label or "")
            # Kept so baselines can re-prompt the raw text with their own instruction.
            meta = {**meta, "text": _text(row, "text")}
        if self.task.labels is not None and label is not None and label not in self.task.labels:
            raise RecordError(f"label {label!r} is not in task.labels {self.task.labels}; "
                              "fix the record or add the label to task.labels")
        if self.task.system_prompt and messages[0].role != "system":
            messages.insert(0, Message("system", self.task.system_prompt))
        return Example(id=rid, messages=messages, label=label,
                       source=None if source is None else str(source), meta=meta)

    def _classification_messages(self, text: str, label: str) -> list[Message]:
        if not label:
            raise RecordError("empty 'label'; expected one of task.labels")
        template = self.task.prompt_template or DEFAULT_CLASSIFY_TEMPLATE
        return [Message("user", fill_template(template, text, self.task.labels)),
                Message("assistant", label)]


def fill_template(template: str, text: str, labels: list[str] | None) -> str:
    """A classification user turn: the template with {text} and {labels} filled in."""
    try:
        return template.format(text=text, labels=", ".join(labels or []))
    except (KeyError, IndexError) as e:
        raise RecordError(f"task.prompt_template uses unknown field {e}; "
                          "only {text} and {labels} are available") from None


def _text(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str | int | float):
        raise RecordError(f"'{key}' must be a string, got {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise RecordError(f"'{key}' is empty")
    return value


def _chat_messages(messages: Any) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise RecordError("'messages' must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role is {role!r}; expected one of {list(ROLES)}")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            raise RecordError(f"messages[{i}] ({role}) has no content")
        out.append(Message(role, content))
    if not any(m.role == "assistant" for m in out):
        raise RecordError("no assistant turn; expected at least one message with role 'assistant'")
    return out
