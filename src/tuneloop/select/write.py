"""Put the selected model into tuneloop.yaml, changing only `model.name`.

A line edit, not a YAML round trip, so comments, key order and quoting elsewhere survive. The
edit is checked by parsing both versions: everything but model.name must be equal, or nothing
is written. The old file is kept as tuneloop.yaml.bak and the new one written atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tuneloop.errors import TuneloopError
from tuneloop.files import atomic_write_text

_TOP = re.compile(r"^model\s*:\s*(#.*)?$")
_CHILD = re.compile(r"^(?P<indent>[ \t]+)name\s*:(?P<value>[^#\n]*?)(?P<comment>\s+#.*)?$")


def _scalar(name: str) -> str:
    """The name as a YAML scalar: plain when it reads back unchanged, else double-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./~@+-]+", name) and yaml.safe_load(name) == name:
        return name
    return json.dumps(name)  # a JSON string is a valid YAML double-quoted scalar


def edit_model_name(text: str, name: str) -> str:
    """The config text with model.name set to `name`; every other line unchanged."""
    lines = text.splitlines(keepends=True)
    top = next((i for i, ln in enumerate(lines) if _TOP.match(ln.rstrip("\r\n"))), None)
    if top is None:
        if re.search(r"^model\s*:", text, re.MULTILINE):
            raise TuneloopError("the config's `model:` section is written inline ({...}); "
                                f"set model.name: {name} by hand")
        sep = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{sep}model:\n  name: {_scalar(name)}\n"
    end, indent = len(lines), None
    for i in range(top + 1, len(lines)):
        ln = lines[i].rstrip("\r\n")
        if ln.strip() and not ln.lstrip().startswith("#") and not ln[0].isspace():
            end = i
            break
        if ln.strip() and not ln.lstrip().startswith("#") and indent is None:
            indent = len(ln) - len(ln.lstrip())
    for i in range(top + 1, end):
        m = _CHILD.match(lines[i].rstrip("\r\n"))
        if m and len(m.group("indent")) == indent:
            nl = lines[i][len(lines[i].rstrip("\r\n")):]
            lines[i] = f"{m.group('indent')}name: {_scalar(name)}{m.group('comment') or ''}{nl}"
            return "".join(lines)
    pad = " " * (indent or 2)
    lines.insert(top + 1, f"{pad}name: {_scalar(name)}\n")
    return "".join(lines)


def set_model_name(config: str | Path, name: str) -> dict:
    """Write `name` into the config's model.name (backup + atomic write); returns what changed."""
    path = Path(config)
    if path.is_dir():
        path = path / "tuneloop.yaml"
    old_text = path.read_text(encoding="utf-8")
    new_text = edit_model_name(old_text, name)
    old, new = yaml.safe_load(old_text) or {}, yaml.safe_load(new_text) or {}
    previous = (old.get("model") or {}).get("name")
    expected = json.loads(json.dumps(old))
    expected.setdefault("model", {})["name"] = name
    if new != expected:
        raise TuneloopError(f"{path}: could not edit model.name safely (unusual layout); "
                            f"set model.name: {name} by hand")
    backup = path.with_name(path.name + ".bak")
    atomic_write_text(backup, old_text)
    atomic_write_text(path, new_text)
    return {"file": str(path), "backup": str(backup), "key": "model.name",
            "old": previous, "new": name}
