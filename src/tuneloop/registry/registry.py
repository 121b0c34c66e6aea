"""Model versions and their aliases, on disk, with atomic pointer updates.

    ROOT/versions/vN/          a frozen copy of a run: adapter/ (or model/), tokenizer/,
                               config.yaml, summary.json, data.json, provenance.json
    ROOT/registry.json         {"aliases": {"champion": "v2", ...}, "history": [...]}

registry.json is the only mutable file and it is replaced atomically (temp, fsync, rename), so
a crash mid-promotion leaves either the old or the new champion, never a torn file. Aliases and
history share the file so they can never disagree. A version folder is built under a temp name
and renamed into place, so a half-copied version is never visible.

ROOT/registry.json.bak is a copy of the last state written: a damaged registry.json is an error
that points to it, never read as an empty registry. Temp files a killed process leaves behind
are removed by the next command that takes the registry's lock.

The first registered version becomes the champion (a registry with versions always has one to
serve); later versions get no alias until promoted or named challenger.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tuneloop.console import err
from tuneloop.errors import TuneloopError
from tuneloop.files import atomic_write_text, file_lock, read_json_object
from tuneloop.registry.card import model_card
from tuneloop.runs import check_run_weights, load_run_model

ALIASES = ("champion", "challenger")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
# A reference (version id or alias) as it may come from a client: no slashes, no dots-only names.
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
COPIED = ("adapter", "model", "tokenizer", "config.yaml", "summary.json", "data.json", "environment.json")


@dataclass
class Version:
    """One registered model: where it is and where it came from."""

    id: str
    path: Path
    base_model: str
    data_hash: str
    config: dict
    metrics: dict
    parent: str | None
    created: str
    note: str

    @property
    def kind(self) -> str:
        """'adapter' (served over its base model) or 'model' (a full fine-tune)."""
        return "model" if (self.path / "model").is_dir() else "adapter"

    @property
    def weights_dir(self) -> Path:
        return self.path / self.kind

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for `registry show --json`)."""
        return {"id": self.id, "path": str(self.path), "kind": self.kind, "base_model": self.base_model,
                "data_hash": self.data_hash, "parent": self.parent, "created": self.created,
                "note": self.note, "metrics": self.metrics, "config": self.config}


def check_safetensors(folder: Path) -> None:
    """Refuse weights a loader could unpickle (.bin/.pt/.pkl); require a .safetensors file."""
    pickled = [p.name for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    if pickled:
        raise TuneloopError(f"{folder}: pickle-based weight files {pickled} are not loaded (code "
                            "execution risk); save with safe_serialization=True")
    if not any(folder.glob("*.safetensors")):
        raise TuneloopError(f"{folder}: no .safetensors weights found")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Registry:
    """Versions vN of fine-tuned models plus the champion/challenger aliases."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.versions_dir = self.root / "versions"
        self.state_path = self.root / "registry.json"

    @classmethod
    def from_config(cls, cfg: Any) -> Registry:
        """The registry of a project (`registry.dir` of its config)."""
        return cls(Path(cfg.registry.dir))

    # ---- state ---------------------------------------------------------------------------
    @property
    def backup_path(self) -> Path:
        """registry.json.bak: a copy of the last state written, for restoring a damaged file."""
        return self.root / "registry.json.bak"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Inter-process lock around read-modify-write of registry.json and version ids; on
        entry it removes what a killed process left (temp files, half-copied versions)."""
        with file_lock(self.root / ".lock"):
            self._sweep()
            yield

    def _sweep(self) -> None:
        # registry.json (and its backup) are only written under the lock, so any temp file of
        # theirs seen while holding it belongs to a dead writer. A version is copied before the
        # lock is taken, into .tmp-PID-*: only those of processes no longer alive are removed.
        for tmp in self.root.glob(f".{self.state_path.name}.*"):
            tmp.unlink(missing_ok=True)
        for tmp in self.versions_dir.glob(".tmp-*") if self.versions_dir.is_dir() else ():
            m = re.match(r"\.tmp-(\d+)-", tmp.name)
            if not (m and _alive(int(m[1]))):
                shutil.rmtree(tmp, ignore_errors=True)

    def _state(self) -> dict[str, Any]:
        """registry.json, checked: a damaged file is an error that says how to restore it,
        never read as an empty registry."""
        if not self.state_path.exists():
            if self.backup_path.exists():
                raise TuneloopError(f"{self.state_path}: missing, but {self.backup_path.name} shows "
                                    f"the registry had one; {self._restore_hint()}")
            return {"aliases": {}, "history": []}
        state, problem = _parse_state(self.state_path)
        if problem:
            raise TuneloopError(f"{self.state_path}: {problem}; it is only ever replaced atomically, "
                                f"so it was damaged or edited by hand. {self._restore_hint()}")
        return state

    def _restore_hint(self) -> str:
        bak = self.backup_path
        if bak.exists() and not _parse_state(bak)[1]:
            return (f"{bak} holds the last state tuneloop wrote: check it, then restore it with "
                    f"`cp {bak} {self.state_path}`")
        return (f"There is no usable backup ({bak.name}); rewrite it by hand as "
                '{"aliases": {"champion": "vN"}, "history": []} with a version from '
                f"{self.versions_dir}")

    def _save_state(self, state: dict[str, Any]) -> None:
        text = json.dumps(state, indent=2) + "\n"
        atomic_write_text(self.state_path, text)
        try:
            atomic_write_text(self.backup_path, text)
        except OSError as e:  # the change itself is saved; only the copy is stale
            err.print(f"warning: {self.backup_path}: could not update the backup ({e})",
                      style="yellow", highlight=False, markup=False)

    # ---- reading -------------------------------------------------------------------------
    def _read_version(self, folder: Path) -> Version:
        file = folder / "provenance.json"
        try:
            prov = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            prov, why = None, f"not valid JSON ({e})"
        else:
            why = "expected a JSON object"
        if not isinstance(prov, dict):
            src = _source_run(file)
            redo = (f"register its run again (`tuneloop registry add {src}`)" if src
                    else "register its run again")
            raise TuneloopError(f"{file}: {why}; it is written once when {folder.name} is "
                                f"registered, so it was damaged since. Restore it from a backup, "
                                f"or remove {folder} and {redo}")
        return Version(id=folder.name, path=folder, base_model=prov.get("base_model", ""),
                       data_hash=prov.get("data_hash", ""), config=prov.get("config", {}),
                       metrics=prov.get("metrics", {}), parent=prov.get("parent"),
                       created=prov.get("created", ""), note=prov.get("note", ""))

    def _ids(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        ids = [p.name for p in self.versions_dir.iterdir()
               if VERSION_RE.match(p.name) and (p / "provenance.json").exists()]
        return sorted(ids, key=lambda i: int(i[1:]))

    def versions(self) -> list[Version]:
        """Every registered version, oldest first."""
        return [self._read_version(self.versions_dir / i) for i in self._ids()]

    def aliases(self) -> dict[str, str]:
        """Alias -> version id (e.g. {'champion': 'v2', 'challenger': 'v3'})."""
        return dict(self._state()["aliases"])

    def champion(self) -> Version | None:
        """The champion; None only when none is set yet (a damaged registry raises)."""
        if "champion" not in self._state()["aliases"]:
            return None
        return self.get("champion")

    def history(self) -> list[dict[str, Any]]:
        """Every promotion, rollback and alias change, oldest first."""
        return list(self._state()["history"])

    def resolve(self, ref: str) -> str:
        """A version id from a version id or alias; validates the name (no paths)."""
        if not isinstance(ref, str) or not REF_RE.match(ref):
            raise TuneloopError(f"{ref!r} is not a valid model name (a version id like v3, or an "
                                f"alias: {', '.join(ALIASES)})")
        aliases = self._state()["aliases"]
        if ref in ALIASES or ref in aliases:
            vid = aliases.get(ref)
            if vid is None:
                raise TuneloopError(f"registry {self.root}: no {ref} yet (see `tuneloop registry list`)")
            return vid
        if not VERSION_RE.match(ref):
            raise TuneloopError(f"registry {self.root}: unknown model {ref!r}; use a version id "
                                f"(v1, v2, ...) or an alias ({', '.join(ALIASES)})")
        return ref

    def get(self, ref: str) -> Version:
        """A version by id ('v3') or alias ('champion', 'challenger')."""
        vid = self.resolve(ref)
        folder = self.versions_dir / vid
        if not (folder / "provenance.json").exists():
            raise TuneloopError(f"registry {self.root}: no version {vid} "
                                f"(have: {', '.join(self._ids()) or 'none'})")
        return self._read_version(folder)

    # ---- writing -------------------------------------------------------------------------
    def register(self, run_dir: Path, parent: str | None = None, note: str = "",
                 alias: str | None = None) -> Version:
        """Copy a finished run folder into a new version vN with its provenance."""
        run = Path(run_dir).expanduser().resolve()
        weights = next((run / d for d in ("adapter", "model") if (run / d).is_dir()), None)
        if weights is None:
            raise TuneloopError(f"{run}: no adapter/ or model/ folder; register a finished run")
        for need in ("config.yaml", "tokenizer"):
            if not (run / need).exists():
                raise TuneloopError(f"{run}: not a complete run folder (no {need})")
        check_safetensors(weights)
        check_run_weights(run)  # it loads: readable files, tensors that fit the base model
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        data = _read_json(run / "data.json")
        self._state()  # a damaged registry.json stops here, before anything is copied
        if parent is not None:
            parent = self.get(parent).id
        else:
            parent = self._parent_from_init_adapter(config)
        prov = {"base_model": config.get("model", {}).get("name", ""),
                "data_hash": data.get("fingerprint", {}).get("train", ""),
                "metrics": _read_json(run / "summary.json"), "parent": parent, "created": _now(),
                "note": note, "source_run": str(run), "config": config}
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=f".tmp-{os.getpid()}-"))
        try:
            for name in COPIED:
                src = run / name
                if src.is_dir():
                    shutil.copytree(src, tmp / name)
                elif src.is_file():
                    shutil.copy2(src, tmp / name)
            if (run / "eval" / "eval.json").is_file():  # evaluation results travel with the version
                shutil.copy2(run / "eval" / "eval.json", tmp / "eval.json")
            atomic_write_text(tmp / "provenance.json", json.dumps(prov, indent=2, default=str) + "\n")
            atomic_write_text(tmp / "README.md", model_card(tmp, title=run.name))  # model card
            with self._locked():
                state = self._state()  # read before vN appears: an error leaves no orphan
                ids = self._ids()
                vid = f"v{int(ids[-1][1:]) + 1 if ids else 1}"
                tmp.rename(self.versions_dir / vid)
                try:
                    if "champion" not in state["aliases"]:
                        self._set(state, "champion", vid, "promote",
                                  {"reason": "first registered version"})
                    if alias:
                        self._set(state, alias, vid, "alias", {})
                    self._save_state(state)
                except BaseException:
                    (self.versions_dir / vid).rename(tmp)  # not registered: removed below
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(vid)

    def _parent_from_init_adapter(self, config: dict) -> str | None:
        """A run continued from a registered adapter descends from that version."""
        init = (config.get("method") or {}).get("init_adapter")
        if not init:
            return None
        p = Path(init).resolve()
        if p.parent.parent == self.versions_dir and VERSION_RE.match(p.parent.name):
            return p.parent.name
        return None

    def _set(self, state: dict, alias: str, vid: str, action: str, evidence: dict | None) -> None:
        old = state["aliases"].get(alias)
        state["aliases"][alias] = vid
        state["history"].append({"time": _now(), "action": action, "alias": alias, "from": old,
                                 "to": vid, "evidence": evidence or {}})

    def set_alias(self, alias: str, version_id: str) -> None:
        """Point an alias at a version (atomic). Use promote() for the champion."""
        if not REF_RE.match(alias) or VERSION_RE.match(alias):
            raise TuneloopError(f"alias {alias!r}: use a name like 'challenger' (not a version id)")
        with self._locked():
            vid = self.get(version_id).id
            state = self._state()
            self._set(state, alias, vid, "promote" if alias == "champion" else "alias", {})
            self._save_state(state)

    def clear_alias(self, alias: str) -> None:
        """Remove an alias (e.g. the challenger after it lost); the champion cannot be cleared."""
        if alias == "champion":
            raise TuneloopError("the champion alias cannot be removed; promote or roll back instead")
        with self._locked():
            state = self._state()
            if state["aliases"].pop(alias, None) is not None:
                state["history"].append({"time": _now(), "action": "clear", "alias": alias})
                self._save_state(state)

    def promote(self, ref: str, evidence: dict | None = None) -> Version:
        """Make `ref` the champion; the history keeps the old champion and the evidence."""
        with self._locked():
            v = self.get(ref)
            state = self._state()
            self._set(state, "champion", v.id, "promote", evidence)
            if state["aliases"].get("challenger") == v.id:
                del state["aliases"]["challenger"]  # a promoted challenger is the champion now
            self._save_state(state)
        return v

    def champion_stack(self) -> list[str]:
        """Champions in promotion order, rollbacks undone: the last one is the champion."""
        stack: list[str] = []
        for e in self._state()["history"]:
            if e.get("alias") != "champion":
                continue
            if e["action"] == "promote":
                stack.append(e["to"])
            elif e["action"] == "rollback" and stack:
                stack.pop()
        return stack

    def rollback(self, evidence: dict | None = None) -> Version:
        """Make the previous champion the champion again; `evidence` (e.g. who and why) is kept
        in the history entry, as a promotion's is."""
        with self._locked():
            stack = self.champion_stack()
            if len(stack) < 2:
                raise TuneloopError(f"registry {self.root}: no previous champion to roll back to")
            state = self._state()
            self._set(state, "champion", stack[-2], "rollback", evidence or {})
            self._save_state(state)
        return self.get(stack[-2])

    # ---- loading -------------------------------------------------------------------------
    def load(self, ref: str, placement: Any = None):
        """(model, tokenizer) of a version for inference: its base with the adapter merged in, or
        its full weights."""
        v = self.get(ref)
        check_safetensors(v.weights_dir)
        model, tok, _cfg = load_run_model(v.path, placement, merge=True)
        return model, tok


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    return read_json_object(path, "the run folder is damaged, so it is not registered; train "
                                  "the run again")


def _parse_state(path: Path) -> tuple[dict[str, Any], str]:
    """(state, "") for a sound registry.json (or its backup), else ({}, what is wrong)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        return {}, f"not valid JSON ({e})"
    if not isinstance(state, dict):
        return {}, "expected a JSON object with aliases and history"
    state.setdefault("aliases", {})
    state.setdefault("history", [])
    aliases, history = state["aliases"], state["history"]
    if not isinstance(aliases, dict) or not all(
            isinstance(a, str) and isinstance(v, str) and VERSION_RE.match(v) for a, v in aliases.items()):
        return {}, "'aliases' is not a map of alias -> version id (v1, v2, ...)"
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        return {}, "'history' is not a list of events"
    return state, ""


def _source_run(prov_file: Path) -> str | None:
    """The run a version was copied from, fished out of a damaged provenance.json if possible."""
    try:
        m = re.search(r'"source_run":\s*"([^"]+)"', prov_file.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return m[1] if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
