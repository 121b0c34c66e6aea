"""The one record every input format normalises to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Example:
    """One training or evaluation record.

    `id` is the record's own id when the file has one, else its 1-based row number (header
    excluded) as a string, so findings and errors point back at the file.
    """

    id: str
    messages: list[Message]
    label: str | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_messages(self) -> list[Message]:
        """The conversation up to (not including) the final assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return self.messages[:last]

    @property
    def target(self) -> str:
        """The final assistant turn: what the model should produce."""
        return next(m.content for m in reversed(self.messages) if m.role == "assistant")

    @property
    def user_text(self) -> str:
        """All user turns joined: the 'input' that audits and drift checks compare."""
        return "\n".join(m.content for m in self.messages if m.role == "user")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        msgs = [Message(**m) for m in d["messages"]]
        return cls(id=str(d["id"]), messages=msgs, label=d.get("label"),
                   source=d.get("source"), meta=dict(d.get("meta") or {}))


def fingerprint(examples: list[Example]) -> str:
    """SHA-256 of the normalised records (ids excluded): same data, same hash, any file format."""
    h = hashlib.sha256()
    for ex in examples:
        d = ex.to_dict()
        d.pop("id")
        d.pop("meta")
        h.update(json.dumps(d, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def label_set(examples: Iterable[Example], declared: Sequence[str] | None = None) -> list[str]:
    """A classification task's labels: the declared list (task.labels) when there is one,
    else every label the examples carry, sorted."""
    return list(declared or sorted({e.label for e in examples if e.label}))
