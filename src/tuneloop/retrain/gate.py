"""The champion/challenger gate: promote only a model that is measurably better.

Both versions answer the same two sets: the frozen eval set (hash-pinned in the registry the
first time a gate runs, so "no regression" always means the same examples) and the fresh
slice the retrain held out of the new data. Classification compares per-example correctness
with McNemar's exact test; other tasks compare per-example target NLL (lower is better) with a
paired bootstrap. The challenger is promoted when it beats the champion on the fresh slice by
more than retrain.margin with p < retrain.alpha, and is not significantly worse on the frozen
set. Every decision, promoted or not, is written to REGISTRY/decisions/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import Config
from tuneloop.console import progress
from tuneloop.data.load import load_examples
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.runner import score_choices, target_nll
from tuneloop.evaluate.stats import mcnemar, mean_stat, paired_bootstrap
from tuneloop.files import write_json
from tuneloop.records import Example, fingerprint, label_set
from tuneloop.registry.registry import Registry


def pin_frozen(registry_dir: Path, path: str, examples: list[Example]) -> dict:
    """Check the frozen eval set against its pinned hash (pinning it on first use)."""
    pin_path = Path(registry_dir) / "frozen_eval.json"
    fp = fingerprint(examples)
    if pin_path.exists():
        try:
            pin = json.loads(pin_path.read_text(encoding="utf-8"))
            pinned_fp = pin["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TuneloopError(f"{pin_path}: damaged ({type(e).__name__}: {e}); delete it to pin "
                                f"the frozen eval set {path} again") from None
        if pinned_fp != fp:
            raise TuneloopError(
                f"{path}: the frozen eval set changed since it was pinned ({pin.get('pinned')}, "
                f"{pin.get('examples')} examples, sha256 {pin['fingerprint'][:12]}..., now "
                f"{fp[:12]}...); restore the file, or delete {pin_path} to pin the new one on purpose")
        return pin
    pin = {"path": str(path), "fingerprint": fp, "examples": len(examples),
           "pinned": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(pin_path, pin)
    return pin


def per_example(model, tok, examples: list[Example], cfg: Config) -> np.ndarray:
    """Classification: 1/0 correct by label scoring; else per-example mean target NLL."""
    if cfg.task.type == "classification":
        labels = label_set(examples, cfg.task.labels)
        scores = score_choices(model, tok, [e.prompt_messages for e in examples], labels,
                               cfg.eval.batch_size)
        pred = [labels[i] for i in scores.argmax(1).tolist()]
        return np.array([p == e.label for p, e in zip(pred, examples, strict=True)], dtype=float)
    rows = target_nll(model, tok, examples, cfg.model.max_seq_len, cfg.eval.batch_size)
    return np.array([s / max(n, 1) for s, n, _ in rows], dtype=float)


def compare(champ: np.ndarray, chall: np.ndarray, higher_is_better: bool, seed: int = 0) -> dict:
    """Challenger minus champion (sign flipped for NLL so positive = better), with a paired test."""
    sign = 1.0 if higher_is_better else -1.0
    boot = paired_bootstrap(mean_stat(sign * chall), mean_stat(sign * champ), len(champ), seed=seed)
    res = {"n": len(champ), "champion": round(float(champ.mean()), 4) if len(champ) else None,
           "challenger": round(float(chall.mean()), 4) if len(chall) else None,
           "improvement": boot["diff"], "ci": boot["ci"], "bootstrap_p": boot["p_value"]}
    if higher_is_better:
        m = mcnemar(chall.astype(bool), champ.astype(bool))
        res |= {"test": "mcnemar_exact", "p_value": m["p_value"],
                "only_challenger_correct": m["only_a_correct"],
                "only_champion_correct": m["only_b_correct"]}
    else:
        res |= {"test": "paired_bootstrap", "p_value": boot["p_value"]}
    return res


def by_label(examples: list[Example], champ: np.ndarray, chall: np.ndarray) -> dict[str, dict]:
    """Per-label n and mean score of both versions: which classes moved."""
    out: dict[str, dict] = {}
    for lab in sorted({str(e.label) for e in examples}):
        ix = [i for i, e in enumerate(examples) if str(e.label) == lab]
        out[lab] = {"n": len(ix), "champion": round(float(champ[ix].mean()), 4),
                    "challenger": round(float(chall[ix].mean()), 4)}
    return out


def decide(fresh: dict | None, frozen: dict, margin: float, alpha: float) -> tuple[bool, list[str]]:
    """Promote when better on fresh by > margin (p < alpha) and not worse on frozen (p < alpha)."""
    why = []
    better = False
    if fresh is None or not fresh["n"]:
        why.append("no fresh slice to show an improvement on (post feedback or set retrain.fresh)")
    else:
        imp, p = fresh["improvement"] or 0.0, fresh["p_value"]
        better = imp > margin and p is not None and p < alpha
        why.append(f"fresh slice: {fresh['champion']} -> {fresh['challenger']} "
                   f"(improvement {imp:+.4f}, margin {margin}, {fresh['test']} p={p}, alpha {alpha}): "
                   + ("better" if better else "not shown better"))
    imp, p = frozen["improvement"] or 0.0, frozen["p_value"]
    regressed = imp < 0 and p is not None and p < alpha
    why.append(f"frozen set: {frozen['champion']} -> {frozen['challenger']} "
               f"(change {imp:+.4f}, {frozen['test']} p={p}): "
               + ("significant regression" if regressed else "no significant regression"))
    return better and not regressed, why


def _fresh_path(challenger, explicit: str | None) -> str | None:
    """The fresh slice the challenger's retrain held out (beside its train.jsonl)."""
    if explicit:
        return explicit
    c = getattr(challenger, "config", None) or {}
    c = c.model_dump(mode="json") if hasattr(c, "model_dump") else c
    train = (c.get("data") or {}).get("train")
    p = Path(train).parent / "fresh_eval.jsonl" if train else None
    return str(p) if p is not None and p.exists() and p.stat().st_size else None


def _load(path: str, cfg: Config) -> list[Example]:
    data = cfg.data.model_copy(update={"format": "auto", "columns": {}})
    return load_examples(path, data, cfg.task).examples


def run_gate(cfg: Config, fresh_path: str | None = None, promote: bool = True,
             quiet: bool = True) -> dict[str, Any]:
    """Evaluate champion vs challenger, decide, record the evidence and promote if earned."""
    registry = Registry.from_config(cfg)
    aliases = registry.aliases()  # a damaged registry raises here, naming the file
    missing = [a for a in ("champion", "challenger") if a not in aliases]
    if missing:
        raise TuneloopError(f"the gate needs a champion and a challenger in {cfg.registry.dir} "
                            f"(no {' and no '.join(missing)}); run `tuneloop retrain` first")
    champion, challenger = registry.get("champion"), registry.get("challenger")
    if champion.id == challenger.id:
        raise TuneloopError(f"champion and challenger are both {champion.id}: nothing to compare; "
                            "run `tuneloop retrain` for a new challenger")
    frozen_path = cfg.retrain.frozen_eval or cfg.data.test
    if not frozen_path:
        raise TuneloopError("the gate needs a frozen eval set: set retrain.frozen_eval (or data.test) "
                            "in tuneloop.yaml")
    frozen = load_examples(frozen_path, cfg.data, cfg.task).examples
    pin = pin_frozen(Path(cfg.registry.dir), frozen_path, frozen)
    fresh_file = _fresh_path(challenger, fresh_path)
    fresh = _load(fresh_file, cfg) if fresh_file else []
    scores: dict[str, dict[str, np.ndarray]] = {}
    with progress(quiet) as bar:
        task = bar.add_task("gate", total=2)
        for ref in ("champion", "challenger"):
            model, tok = registry.load(ref)
            model.eval()
            scores[ref] = {"frozen": per_example(model, tok, frozen, cfg),
                           "fresh": per_example(model, tok, fresh, cfg) if fresh else np.array([])}
            del model
            bar.advance(task)
    hib = cfg.task.type == "classification"
    ev_frozen = compare(scores["champion"]["frozen"], scores["challenger"]["frozen"], hib, cfg.seed)
    ev_fresh = (compare(scores["champion"]["fresh"], scores["challenger"]["fresh"], hib, cfg.seed)
                if fresh else None)
    if hib:
        ev_frozen["by_label"] = by_label(frozen, scores["champion"]["frozen"], scores["challenger"]["frozen"])
        if ev_fresh is not None:
            ev_fresh["by_label"] = by_label(fresh, scores["champion"]["fresh"], scores["challenger"]["fresh"])
    ok, why = decide(ev_fresh, ev_frozen, cfg.retrain.margin, cfg.retrain.alpha)
    metric = "accuracy" if hib else "mean_target_nll"
    decision = {"decision": "promote" if ok else "keep_champion", "promoted": False,
                "champion": champion.id, "challenger": challenger.id, "metric": metric,
                "frozen": ev_frozen | {"path": str(frozen_path), "fingerprint": pin["fingerprint"]},
                "fresh": None if ev_fresh is None else ev_fresh | {"path": fresh_file},
                "margin": cfg.retrain.margin, "alpha": cfg.retrain.alpha, "reasons": why,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if ok and promote:
        registry.promote("challenger", evidence=decision)
        decision["promoted"] = True
    path = Path(cfg.registry.dir) / "decisions" / f"{time.strftime('%Y%m%d-%H%M%S')}-{challenger.id}.json"
    write_json(path, decision)
    decision["record"] = str(path)
    return decision
