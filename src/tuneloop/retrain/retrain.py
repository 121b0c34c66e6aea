"""`tuneloop retrain`: build the new data set, audit it, fine-tune from the champion's adapter.

New data = feedback corrections/labels + fresh labelled data (retrain.fresh). A stratified
slice of it is held out as the gate's fresh eval set; the rest, plus a replay sample of the
champion's own training data (so the old domains are not forgotten), is the training set.
Everything lands in OUTPUT_DIR/retrain-TIMESTAMP/ with a manifest, and the trained run is
registered as the challenger.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from tuneloop.config import Config
from tuneloop.data.audit import run_audit
from tuneloop.data.load import load_examples
from tuneloop.data.split import train_validation_split
from tuneloop.errors import TuneloopError
from tuneloop.files import write_json
from tuneloop.monitor.traffic import feedback_label, raw_text, reference_examples
from tuneloop.records import Example, Message, fingerprint
from tuneloop.registry.registry import Registry
from tuneloop.train.recipe import train

FRESH_SLICE = 0.25  # share of the new data held out to show the challenger is better on it


def _row(ex: Example, cfg: Config) -> dict[str, Any]:
    """One training row: text/label for classification (the template is applied at load, so
    the project's prompt_template still governs), chat messages otherwise."""
    if cfg.task.type == "classification":
        return {"id": ex.id, "text": raw_text(ex.meta.get("text") or ex.user_text, cfg.task),
                "label": ex.label}
    return {"id": ex.id, "messages": [{"role": m.role, "content": m.content} for m in ex.messages]}


def feedback_examples(feedback: list[dict], cfg: Config) -> list[Example]:
    """Feedback rows that carry the right answer, newest per request, as Examples."""
    latest: dict[str, dict] = {}
    for f in feedback:  # oldest first: a later correction of the same request wins
        if feedback_label(f, cfg.task) is not None and f.get("input_text"):
            latest[str(f["request_id"])] = f
    out = []
    for rid, f in latest.items():
        answer = feedback_label(f, cfg.task)
        if cfg.task.type == "classification":
            text = raw_text(f["input_text"], cfg.task)
            out.append(Example(f"fb-{rid}", [Message("user", text), Message("assistant", answer)],
                               label=answer, meta={"text": text, "source": "feedback"}))
        else:
            out.append(Example(f"fb-{rid}", [Message("user", f["input_text"]),
                                             Message("assistant", answer)],
                               meta={"source": "feedback"}))
    return out


def build_dataset(cfg: Config, feedback: list[dict], champion=None, out_dir: Path | None = None,
                  fresh_fraction: float = FRESH_SLICE) -> dict[str, Any]:
    """Write train.jsonl and fresh_eval.jsonl for a retrain; returns the manifest."""
    rc = cfg.retrain
    new = feedback_examples(feedback, cfg)
    n_feedback = len(new)
    if rc.fresh:
        fresh = load_examples(rc.fresh, cfg.data, cfg.task, skip_invalid=True).examples
        new += [Example(f"fresh-{e.id}", e.messages, e.label, e.source, e.meta | {"source": "fresh"})
                for e in fresh]
    if not new:
        raise TuneloopError("no new data to retrain on: no feedback with a label or correction in the "
                            "traffic store and no retrain.fresh file; post feedback to /v1/feedback "
                            "or set retrain.fresh")
    train_new, fresh_eval = (train_validation_split(new, fresh_fraction, cfg.seed)
                             if len(new) >= 8 and fresh_fraction > 0 else (new, []))
    old, _ = reference_examples(cfg.model_copy(update={"retrain": rc.model_copy(
        update={"frozen_eval": None}), "data": cfg.data.model_copy(update={"test": None})}), champion)
    k = min(len(old), round(rc.replay_fraction * len(train_new)))
    replay = random.Random(cfg.seed).sample(old, k)
    train_set = train_new + [Example(f"replay-{e.id}", e.messages, e.label, e.source, e.meta)
                             for e in replay]
    random.Random(cfg.seed + 1).shuffle(train_set)
    out_dir = out_dir or Path(cfg.output.dir) / "retrain-data" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / "train.jsonl", [_row(e, cfg) for e in train_set])
    _write_jsonl(out_dir / "fresh_eval.jsonl", [_row(e, cfg) for e in fresh_eval])
    manifest = {"dir": str(out_dir), "train": str(out_dir / "train.jsonl"),
                "fresh_eval": str(out_dir / "fresh_eval.jsonl") if fresh_eval else None,
                "counts": {"feedback": n_feedback, "fresh": len(new) - n_feedback,
                           "new_train": len(train_new), "fresh_eval": len(fresh_eval),
                           "replay": len(replay), "train": len(train_set)},
                "fingerprint": {"train": fingerprint(train_set), "fresh_eval": fingerprint(fresh_eval)},
                "champion": getattr(champion, "id", None)}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def retrain_config(cfg: Config, manifest: dict, champion=None) -> Config:
    """The project config pointed at the new data, continuing from the champion's adapter."""
    data = cfg.data.model_copy(update={"train": manifest["train"], "validation": None,
                                       "format": "auto", "columns": {}, "max_examples": None,
                                       "test": cfg.retrain.frozen_eval or cfg.data.test})
    method = cfg.method
    if champion is not None and (Path(champion.path) / "adapter").exists():
        method = method.model_copy(update={"init_adapter": str(Path(champion.path) / "adapter")})
    out = cfg.output.model_copy(update={"name": f"retrain-{Path(manifest['dir']).name}"})
    return cfg.model_copy(update={"data": data, "method": method, "output": out})


def audit_dataset(cfg: Config, manifest: dict) -> dict[str, Any]:
    """The data-audit checks on the new training set; rows an error names (conflicting
    corrections, leakage into the fresh or frozen eval sets, bad records) are dropped."""
    path = Path(manifest["train"])
    against = [p for p in (manifest["fresh_eval"],) if p]
    rep = run_audit(path, cfg, against=against)
    write_json(Path(manifest["dir"]) / "audit.json", rep.to_dict())
    errors = [f for f in rep.findings if f.severity == "error"]
    bad = {str(i) for f in errors for i in f.ids}
    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [r for r in rows if str(r.get("id")) not in bad]
    if len(kept) < len(rows):
        _write_jsonl(path, kept)
    return {"score": rep.score, "errors": [f"{f.check}: {f.summary}" for f in errors],
            "warnings": sum(f.severity == "warning" for f in rep.findings),
            "dropped": len(rows) - len(kept), "train_after_audit": len(kept)}


def retrain(cfg: Config, quiet: bool = True) -> dict[str, Any]:
    """Build + audit the data set, train from the champion, register the run as challenger."""
    # why: the traffic store needs the [serve] extra (sqlalchemy); building, auditing and
    # configuring a retrain (the functions above) work without it.
    from tuneloop.serve.store import TrafficStore, store_url

    registry = Registry.from_config(cfg)
    champion = registry.champion()  # a damaged registry raises, naming the file
    if champion is None:
        raise TuneloopError(f"no champion in the registry {registry.root}: register a run and "
                            "promote it first (tuneloop registry promote VERSION)")
    t0 = time.perf_counter()
    manifest = build_dataset(cfg, TrafficStore(store_url(cfg)).feedback(), champion)
    rcfg = retrain_config(cfg, manifest, champion)
    audit = audit_dataset(rcfg, manifest)
    if not audit["train_after_audit"]:
        raise TuneloopError(f"{manifest['train']}: the data audit rejected every row; see "
                            f"{manifest['dir']}/audit.json")
    run, summary = train(rcfg, quiet=quiet)
    c = manifest["counts"]
    note = (f"retrain of {champion.id}: {c['feedback']} feedback + {c['fresh']} fresh "
            f"({c['fresh_eval']} held out) + {c['replay']} replay")
    version = registry.register(run, parent=champion.id, note=note)
    registry.set_alias("challenger", version.id)
    res = {"challenger": version.id, "parent": champion.id, "run": str(run), "data": manifest,
           "audit": audit, "train_loss": summary.get("train_loss"),
           "val_loss": summary.get("val_loss"), "seconds": round(time.perf_counter() - t0, 1)}
    write_json(Path(manifest["dir"]) / "retrain.json", res)
    return res
