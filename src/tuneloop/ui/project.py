"""A project as the web app sees it: its config, run folders, registry and traffic store.

Everything here reads; nothing writes. Run folders are found under `output.dir` (and one level
deeper: `curve-*/n50`, a demo's work folder); what is read from each is cached by the files'
modification times, so a page over 50 runs re-reads only the run that is still training.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tuneloop.config import Config, load_config
from tuneloop.errors import TuneloopError
from tuneloop.registry.registry import Registry
from tuneloop.train.samples import FILE as SAMPLES_FILE

LIVE_S = 120  # a run whose metrics.jsonl changed this recently, without summary.json, is training
SKIP_DIRS = {"checkpoints", "eval", "adapter", "model", "tokenizer", "registry", "versions", "loop"}
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on 50 configs
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


def find_config(path: Path) -> Path:
    """The tuneloop.yaml a `tuneloop ui CONFIG` means (a file, or the folder holding one)."""
    p = Path(path)
    p = p / "tuneloop.yaml" if p.is_dir() else p
    if not p.is_file():
        raise TuneloopError(f"{p}: no tuneloop.yaml found; pass a project folder or its config file")
    return p


def work_folder_config(cfg: Config) -> Path | None:
    """A newer project inside this one's output folder (as `run_demo.py` writes: a work folder
    with its own resolved tuneloop.yaml and registry), when this project's registry is empty."""
    if Registry.from_config(cfg).versions():
        return None
    out = Path(cfg.output.dir)
    if not out.is_dir():
        return None
    inner = [p / "tuneloop.yaml" for p in out.iterdir() if (p / "tuneloop.yaml").is_file()]
    return max(inner, key=lambda p: p.stat().st_mtime, default=None)


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines of a file that may be being appended to (a torn last line is skipped)."""
    if not path.exists():
        return []
    lines = [x for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    try:  # one parse of the whole file is several times faster than one per line
        return json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        pass
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        return {}


class Project:
    """One tuneloop project folder, read-only."""

    def __init__(self, config: Path):
        self.config_file = find_config(config).resolve()
        self.cfg: Config = load_config(self.config_file)
        self.root = self.config_file.parent
        self.runs_dir = Path(self.cfg.output.dir)
        self.registry = Registry.from_config(self.cfg)
        self._store = None
        self._lock = threading.Lock()
        self._rows: dict[Path, tuple[tuple, dict]] = {}
        self._metrics: dict[Path, tuple[int, list[dict]]] = {}

    # ---- traffic store -----------------------------------------------------------------
    @property
    def store(self):
        """The traffic store (created on first use; needs the [serve] extra)."""
        if self._store is None:
            from tuneloop.serve.store import TrafficStore, store_url

            with self._lock:
                if self._store is None:
                    self._store = TrafficStore(store_url(self.cfg))
        return self._store

    # ---- runs ----------------------------------------------------------------------------
    def run_dirs(self) -> list[Path]:
        """Run folders (with a config.yaml) under output.dir, up to two levels deep."""
        found: list[Path] = []

        def scan(d: Path, depth: int) -> None:
            try:
                entries = list(os.scandir(d))
            except OSError:
                return
            for e in entries:
                if not e.is_dir() or e.name.startswith(".") or e.name in SKIP_DIRS:
                    continue
                p = Path(e.path)
                if (p / "config.yaml").is_file() and not (p / "provenance.json").exists():
                    found.append(p)
                elif depth < 2 and not (p / "registry.json").exists():
                    scan(p, depth + 1)

        if self.runs_dir.is_dir():
            scan(self.runs_dir, 1)
        return found

    def run_name(self, path: Path) -> str:
        return path.relative_to(self.runs_dir).as_posix()

    def run_path(self, name: str) -> Path:
        """The folder of run `name`; only names of runs that exist (no paths outside)."""
        for p in self.run_dirs():
            if self.run_name(p) == name:
                return p
        raise TuneloopError(f"no run {name!r} under {self.runs_dir}")

    def metrics(self, run: Path) -> list[dict]:
        """metrics.jsonl of a run, cached until the file changes."""
        f = run / "metrics.jsonl"
        stamp = _mtime(f)
        hit = self._metrics.get(run)
        if hit and hit[0] == stamp:
            return hit[1]
        rows = read_jsonl(f)
        self._metrics[run] = (stamp, rows)
        return rows

    def run_row(self, run: Path) -> dict[str, Any]:
        """One line of the runs table: method, data, steps, losses, status and ETA."""
        files = [
            run / n for n in ("config.yaml", "metrics.jsonl", "summary.json", "data.json", "eval/eval.json")
        ]
        stamp = tuple(_mtime(f) for f in files)
        hit = self._rows.get(run)
        if hit and hit[0] == stamp and hit[1]["status"] not in ("training", "starting"):
            return hit[1]
        row = self._build_row(run, stamp)
        self._rows[run] = (stamp, row)
        return row

    def _build_row(self, run: Path, stamp: tuple) -> dict[str, Any]:
        try:
            cfg = yaml.load((run / "config.yaml").read_text(encoding="utf-8"), Loader=SafeLoader) or {}
        except (yaml.YAMLError, OSError):
            cfg = {}
        summary, data = read_json(run / "summary.json"), read_json(run / "data.json")
        metrics = [] if summary else self.metrics(run)  # a finished run's summary has the figures
        steps = [m for m in metrics if "loss" in m]
        vals = [m for m in metrics if "val_loss" in m]
        last = steps[-1] if steps else {}
        planned = summary.get("planned_steps") or _planned_steps(cfg, last)
        if summary:
            status = "finished"
        elif stamp[1] and time.time() - stamp[1] / 1e9 < LIVE_S:
            status = "training"
        elif stamp[1]:
            status = "stopped"
        else:
            status = "starting" if time.time() - stamp[0] / 1e9 < LIVE_S else "empty"
        eta = None
        if status == "training" and last.get("step") and planned:
            eta = max(0.0, (planned - last["step"]) * last.get("elapsed_s", 0) / last["step"])
        ev = read_json(run / "eval" / "eval.json") if stamp[4] else {}
        primary = ev.get("primary_metric")
        ft = (
            (ev.get("systems", {}).get("finetuned", {}).get("metrics", {}).get(primary) or {})
            if primary
            else {}
        )
        return {
            "name": self.run_name(run),
            "method": (cfg.get("method") or {}).get("name"),
            "model": (cfg.get("model") or {}).get("name"),
            "data": (data.get("fingerprint") or {}).get("train", "")[:12],
            "train_examples": (data.get("counts") or {}).get("train"),
            "steps": summary.get("steps", last.get("step", 0)),
            "planned_steps": planned,
            "train_loss": summary.get("train_loss", last.get("loss")),
            "val_loss": summary.get("val_loss", vals[-1]["val_loss"] if vals else None),
            "best_val_loss": summary.get("best_val_loss", min((v["val_loss"] for v in vals), default=None)),
            "status": status,
            "eta_s": None if eta is None else round(eta, 1),
            "elapsed_s": summary.get("train_seconds", last.get("elapsed_s")),
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp[0] / 1e9)) if stamp[0] else "",
            "modified": max(stamp) / 1e9,
            "eval": {"metric": primary, "value": ft.get("value"), "ci": ft.get("ci")} if primary else None,
        }

    def runs(self) -> list[dict[str, Any]]:
        """Every run's row, newest first."""
        rows = [self.run_row(p) for p in self.run_dirs()]
        return sorted(rows, key=lambda r: r["modified"], reverse=True)

    def run_detail(self, name: str) -> dict[str, Any]:
        """A run's row, config text, summary, environment, curves, samples and files."""
        run = self.run_path(name)
        metrics = self.metrics(run)
        files = []
        for p in sorted(run.rglob("*")):
            if p.is_file() and "checkpoints" not in p.relative_to(run).parts[:1]:
                files.append({"path": p.relative_to(run).as_posix(), "bytes": p.stat().st_size})
            if len(files) >= 200:
                break
        samples = read_jsonl(run / SAMPLES_FILE)
        return {
            "run": self.run_row(run),
            "path": str(run),
            "config": (run / "config.yaml").read_text(encoding="utf-8", errors="replace"),
            "summary": read_json(run / "summary.json"),
            "environment": read_json(run / "environment.json"),
            "data": read_json(run / "data.json"),
            "curves": curves(metrics),
            "samples": samples_table(samples),
            "files": files,
            "has_checkpoints": (run / "checkpoints").is_dir(),
        }

    # ---- evaluations, curves, decisions --------------------------------------------------
    def evals(self) -> list[dict[str, Any]]:
        """Runs with an eval/eval.json, newest evaluation first."""
        out = []
        for p in self.run_dirs():
            f = p / "eval" / "eval.json"
            if f.is_file():
                out.append({"name": self.run_name(p), "path": p, "time": _mtime(f)})
        return sorted(out, key=lambda e: e["time"], reverse=True)

    def learning_curves(self) -> list[dict[str, Any]]:
        """curve.json files of `tuneloop curve` (OUTPUT_DIR/curve-*/), newest first."""
        if not self.runs_dir.is_dir():
            return []
        found = sorted(self.runs_dir.glob("curve-*/curve.json"), key=_mtime, reverse=True)
        return [read_json(f) | {"dir": f.parent.name} for f in found]

    def decisions(self) -> list[dict[str, Any]]:
        """The gate's decision records (REGISTRY/decisions/*.json), newest first."""
        d = self.registry.root / "decisions"
        files = sorted(d.glob("*.json"), key=_mtime, reverse=True) if d.is_dir() else []
        return [read_json(f) | {"file": f.name} for f in files[:50]]

    def loop_logs(self) -> list[dict[str, Any]]:
        """`tuneloop loop` records (OUTPUT_DIR/loop/*.json), oldest first."""
        d = self.runs_dir / "loop"
        files = sorted(d.glob("*.json")) if d.is_dir() else []
        return [read_json(f) | {"file": f.name} for f in files[-200:]]

    # ---- data files -----------------------------------------------------------------------
    def data_files(self) -> list[dict[str, str]]:
        """The config's data files, then other data files in the project folder."""
        named = [(k, getattr(self.cfg.data, k)) for k in ("train", "validation", "test")]
        out = [{"role": k, "path": str(v)} for k, v in named if v and Path(v).is_file()]
        retrain = sorted(self.runs_dir.glob("retrain-data/*/*.jsonl"), key=_mtime, reverse=True)[:10]
        out += [{"role": "retrain", "path": str(p)} for p in retrain]
        seen = {Path(o["path"]).resolve() for o in out}
        skip = {self.runs_dir.resolve(), self.registry.root}
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".") and d not in SKIP_DIRS and (Path(folder) / d).resolve() not in skip
            )
            for name in sorted(files):
                p = Path(folder) / name
                if p.suffix in DATA_SUFFIXES and p.resolve() not in seen and not _is_run_file(p):
                    out.append({"role": "file", "path": str(p)})
                if len(out) >= 60:
                    return out
        return out

    def data_file(self, path: str | None) -> Path:
        """A data file the user may open: inside the project folder or the output folder."""
        if not path:
            if not self.cfg.data.train:
                raise TuneloopError("the config names no data.train file")
            return Path(self.cfg.data.train)
        p = Path(path)
        p = (p if p.is_absolute() else self.root / p).resolve()
        if not any(p.is_relative_to(r.resolve()) for r in (self.root, self.runs_dir)):
            raise TuneloopError(f"{path}: only files inside the project folder can be opened")
        if not p.is_file() or p.suffix not in DATA_SUFFIXES:
            raise TuneloopError(f"{path}: not a data file ({', '.join(DATA_SUFFIXES)})")
        return p


def _is_run_file(p: Path) -> bool:
    return p.name in (
        "metrics.jsonl",
        "summary.json",
        "data.json",
        "environment.json",
        "eval.json",
        "predictions.jsonl",
        SAMPLES_FILE,
        "curve.json",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "provenance.json",
        "registry.json",
    )


def _planned_steps(cfg: dict, last: dict) -> int | None:
    """Steps a run will take, while it trains: max_steps, or extrapolated from its epoch."""
    train = cfg.get("train") or {}
    step, epoch = last.get("step"), last.get("epoch")
    by_epoch = None
    if step and epoch:
        by_epoch = math.ceil(step * float(train.get("epochs", 3)) / epoch)
    cap = train.get("max_steps")
    if cap and by_epoch:
        return min(int(cap), by_epoch)
    return int(cap) if cap else by_epoch


def curves(metrics: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """(step, value) series of a run: training loss, validation loss, learning rate, tokens/s."""
    out: dict[str, list[tuple[float, float]]] = {"loss": [], "val_loss": [], "lr": [], "tokens_per_s": []}
    for m in metrics:
        s = m.get("step")
        if s is None:
            continue
        for k in out:
            v = m.get(k)
            if isinstance(v, int | float) and math.isfinite(v):
                out[k].append((float(s), float(v)))
    return out


def samples_table(rows: list[dict]) -> dict[str, Any] | None:
    """Samples written while training (samples.jsonl) as prompts x steps."""
    if not rows:
        return None
    steps = sorted({r["step"] for r in rows})
    prompts: dict[str, dict[str, Any]] = {}
    for r in rows:
        p = prompts.setdefault(
            str(r["id"]),
            {
                "id": r["id"],
                "prompt": r.get("prompt", ""),
                "reference": r.get("reference", ""),
                "outputs": {},
            },
        )
        p["outputs"][r["step"]] = r.get("output", "")
    return {"steps": steps, "prompts": list(prompts.values())}
