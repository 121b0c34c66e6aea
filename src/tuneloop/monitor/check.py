"""`tuneloop monitor`: compare a window of served traffic with what the champion was trained on.

Input signals (embedding MMD, domain classifier, novel terms, perplexity) use every request in
the window: inputs drift whichever version answered them. Output and quality signals use the
requests the current champion answered, so a fresh promotion is not blamed for its
predecessor's answers.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import Config
from tuneloop.console import progress
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.metrics import parse_label
from tuneloop.files import write_json
from tuneloop.models.embed import embed
from tuneloop.models.generate import model_device, pad_batch
from tuneloop.monitor import drift
from tuneloop.monitor.traffic import (
    bucket_edges,
    feedback_correct,
    raw_text,
    reference_examples,
    to_datetime,
)
from tuneloop.registry.registry import Registry

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_window(spec: str) -> timedelta:
    """'30m', '24h', '7d', '2w' -> timedelta."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", spec or "")
    if not m:
        raise TuneloopError(f"window {spec!r}: expected a number and a unit m/h/d/w, e.g. 24h or 7d "
                            "(monitor.window or --window)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def input_nll(model, tok, texts: list[str], max_len: int = 256, batch_size: int = 16) -> list[float]:
    """Mean token NLL (nats) of each raw text under the model: exp of it is its perplexity.

    Inputs the model finds surprising are ones it was not tuned for; the text is scored bare,
    without the chat template, so the template's easy tokens do not dilute the signal.
    """
    dev = model_device(model)
    out: list[float] = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], truncation=True, max_length=max_len,
                      add_special_tokens=False)
            # Right padding: positions start at 0 in every row.
            ids, attn = pad_batch(enc["input_ids"], tok.pad_token_id)
            ids, attn = ids.to(dev), attn.to(dev)
            logits = model(input_ids=ids, attention_mask=attn).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:],
                                                    reduction="none")
            mask = attn[:, 1:].float()
            per = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
            out += [float(v) if m > 0 else float("nan") for v, m in zip(per, mask.sum(1), strict=True)]
    return out


def run_monitor(cfg: Config, window: str | None = None, now: datetime | None = None,
                perplexity: bool = True, quiet: bool = True, n_perm: int = 500) -> dict[str, Any]:
    """Every drift signal for the traffic window ending `now`; `drift` says if any crossed."""
    # why: the traffic store needs the [serve] extra (sqlalchemy); the signals in this module
    # (input_nll, drift tests) work without it.
    from tuneloop.serve.store import TrafficStore, store_url

    mcfg = cfg.monitor
    spec = window or mcfg.window
    until = now or datetime.now(UTC)
    since = until - parse_window(spec)
    registry = Registry.from_config(cfg)
    champion = registry.champion()  # None before any registration; a damaged registry raises
    store = TrafficStore(store_url(cfg))
    # Drift is about what the model answered: refused and failed requests (400s with
    # oversized input, 5xx) are logged too, but counted apart, not compared with training data.
    reqs = store.requests(since=since, until=until, status=200)
    failed = len(store.requests(since=since, until=until)) - len(reqs)
    fb = store.feedback(since=since, until=until)
    version = champion.id if champion else None
    thresholds = mcfg.model_dump()
    res: dict[str, Any] = {
        "window": {"spec": spec, "since": since.isoformat(), "until": until.isoformat()},
        "champion": version, "requests": len(reqs), "failed_requests": failed,
        "feedback": len(fb),
        "versions": _count(r.get("version") for r in reqs), "thresholds": thresholds,
        "signals": {}, "reasons": [], "series": [], "most_drifted": []}
    if len(reqs) < mcfg.min_requests:
        res |= {"verdict": "insufficient_data", "drift": False,
                "reasons": [f"{len(reqs)} requests in the window, fewer than monitor.min_requests="
                            f"{mcfg.min_requests}: no verdict"]}
        return res
    ref_examples, ref_source = reference_examples(cfg, champion)
    ref_texts = [raw_text(e.meta.get("text") or e.user_text, cfg.task) for e in ref_examples]
    cur_texts = [raw_text(r.get("input_text") or "", cfg.task) for r in reqs]
    res["reference"] = {"source": ref_source, "examples": len(ref_texts)}
    sig = res["signals"]
    with progress(quiet) as bar:
        task = bar.add_task("monitor", total=4)
        ref_emb, cur_emb = embed(ref_texts), embed(cur_texts)
        bar.advance(task)
        sig["embedding_mmd"] = drift.mmd_test(ref_emb, cur_emb, n_perm, cfg.seed)
        p = sig["embedding_mmd"]["p_value"]
        sig["embedding_mmd"]["drift"] = p is not None and p < mcfg.mmd_p_value
        sig["domain_classifier"] = drift.domain_classifier(ref_emb, cur_emb, seed=cfg.seed)
        dc = sig["domain_classifier"]
        dc["drift"] = dc["auc"] is not None and dc["auc"] > dc["random_auc"] + mcfg.domain_auc_margin
        sig["novel_terms"] = drift.novel_terms(ref_texts, cur_texts)
        sig["novel_terms"]["drift"] = sig["novel_terms"]["rate"] > mcfg.novel_term_rate
        bar.advance(task)
        cur_nll = None
        if perplexity and champion is not None:
            model, tok = registry.load("champion")
            ref_nll, cur_nll = input_nll(model, tok, ref_texts), input_nll(model, tok, cur_texts)
            sig["perplexity"] = _perplexity(ref_nll, cur_nll)
            del model
        bar.advance(task)
        served = [r for r in reqs if version is None or r.get("version") == version]
        sig["output"] = _outputs(served, ref_examples, cfg)
        sig["quality"] = _quality(store, fb, version, since, cfg, champion)
        bar.advance(task)
    dist = drift.nearest_distance(ref_emb, cur_emb)
    novel = drift.novel_rate_per_text(ref_texts, cur_texts)
    res["series"] = _series(reqs, fb, dist, novel, cur_nll, cfg)
    res["most_drifted"] = _most_drifted(reqs, cur_texts, dist, ref_texts)
    res["reasons"] = _reasons(sig, mcfg)
    res["drift"] = bool(res["reasons"])
    res["verdict"] = "drift" if res["drift"] else "no_drift"
    return res


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _perplexity(ref_nll: list[float], cur_nll: list[float]) -> dict:
    t = drift.shift_test(np.exp(ref_nll), np.exp(cur_nll))
    return t | {"ref_mean_nll": _mean(ref_nll), "cur_mean_nll": _mean(cur_nll)}


def _mean(v) -> float | None:
    a = np.asarray([x for x in v if x is not None and np.isfinite(x)], dtype=float)
    return round(float(a.mean()), 4) if len(a) else None


def _outputs(served: list[dict], ref_examples, cfg: Config) -> dict:
    """Output length (vs the training targets) and, for classification, parse failures."""
    outs = [r.get("output_text") or "" for r in served]
    res: dict[str, Any] = {"n": len(served),
                           "length_chars": drift.shift_test([len(e.target) for e in ref_examples],
                                                            [len(o) for o in outs]),
                           "errors": drift.rate_with_ci([int(r.get("status") or 200) >= 400
                                                         for r in served], seed=cfg.seed)}
    if cfg.task.type == "classification" and cfg.task.labels:
        res["parse_failures"] = drift.rate_with_ci(
            [parse_label(o, cfg.task.labels) is None for o in outs], seed=cfg.seed)
    return res


def _quality(store, fb: list[dict], version: str | None, since: datetime, cfg: Config,
             champion) -> dict:
    """Share of feedback saying the answer was right, now vs before the window (or vs the
    champion's registered test accuracy when there is no earlier feedback)."""
    mine = [f for f in fb if version is None or f.get("version") == version]
    now = [c for c in (feedback_correct(f, cfg.task) for f in mine) if c is not None]
    res: dict[str, Any] = {"current": drift.rate_with_ci(now, seed=cfg.seed)}
    before = [c for c in (feedback_correct(f, cfg.task) for f in store.feedback(until=since)
                          if version is None or f.get("version") == version) if c is not None]
    baseline, source = None, None
    if before:
        baseline, source = float(np.mean(before)), "feedback before the window"
    elif champion is not None:
        baseline, source = _registered_accuracy(champion), f"{champion.id} registered accuracy"
    res |= {"baseline": None if baseline is None else round(baseline, 4), "baseline_source": source}
    cur = res["current"]["value"]
    res["drop"] = round(baseline - cur, 4) if baseline is not None and cur is not None else None
    return res


def _registered_accuracy(version) -> float | None:
    """The champion's test accuracy as registered: its eval.json, else gate evidence."""
    ev = Path(version.path) / "eval.json"
    if ev.exists():
        try:
            rep = json.loads(ev.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TuneloopError(f"{ev}: not valid JSON ({e}); it was copied at `registry add` and "
                                "damaged since; copy the run's eval/eval.json over it, or delete "
                                "it to compare with earlier feedback instead") from None
        acc = (rep.get("systems", {}).get("finetuned", {}) if isinstance(rep, dict) else {}) \
            .get("metrics", {}).get("accuracy", {}).get("value")
        if isinstance(acc, int | float):
            return float(acc)
    return None


def _reasons(sig: dict, mcfg) -> list[str]:
    r = []
    e = sig["embedding_mmd"]
    if e.get("drift"):
        r.append(f"input embeddings: MMD p={e['p_value']} < {mcfg.mmd_p_value}")
    d = sig["domain_classifier"]
    if d.get("drift"):
        r.append(f"domain classifier AUC {d['auc']} > random {d['random_auc']} + "
                 f"{mcfg.domain_auc_margin}")
    n = sig["novel_terms"]
    if n.get("drift"):
        r.append(f"novel-term rate {n['rate']} > {mcfg.novel_term_rate}")
    q = sig["quality"]
    if q.get("drop") is not None and q["drop"] > mcfg.quality_drop:
        r.append(f"feedback quality {q['current']['value']} fell {q['drop']} from {q['baseline']} "
                 f"({q['baseline_source']}) > {mcfg.quality_drop}")
    return r


def _series(reqs, fb, dist, novel, nll, cfg: Config) -> list[dict]:
    """Per time bucket: requests, mean distance to training inputs, novel-term rate, input
    perplexity, output length and feedback quality (with a 95% interval)."""
    times = [to_datetime(r["created"]) for r in reqs]
    edges = bucket_edges(times)
    out = []
    fb_times = [to_datetime(f["created"]) for f in fb]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        ix = [i for i, t in enumerate(times) if lo <= t < hi or (hi == edges[-1] and t == hi)]
        if not ix:
            continue
        fix = [i for i, t in enumerate(fb_times) if lo <= t < hi or (hi == edges[-1] and t == hi)]
        corr = [c for c in (feedback_correct(fb[i], cfg.task) for i in fix) if c is not None]
        out.append({"start": lo.isoformat(), "requests": len(ix),
                    "distance": round(float(np.mean(dist[ix])), 4),
                    "novel_rate": round(float(np.mean(novel[ix])), 4),
                    "perplexity": _mean(np.exp([nll[i] for i in ix])) if nll is not None else None,
                    "output_chars": round(float(np.mean([len(reqs[i].get("output_text") or "")
                                                         for i in ix])), 1),
                    "quality": drift.rate_with_ci(corr, n_boot=300, seed=cfg.seed)})
    return out


def _most_drifted(reqs, texts, dist, ref_texts, top: int = 15) -> list[dict]:
    vocab = {w for t in ref_texts for w in drift.words(t)}
    order = np.argsort(-dist)[:top]
    return [{"request_id": reqs[i].get("request_id"), "created": str(reqs[i].get("created")),
             "input": texts[i][:300], "output": (reqs[i].get("output_text") or "")[:120],
             "distance": round(float(dist[i]), 4),
             "novel_terms": sorted({w for w in drift.words(texts[i]) if w not in vocab})[:10]}
            for i in order]


def write_json_report(res: dict, path: Path) -> None:
    """The monitor result as JSON (for dashboards and the loop's log)."""
    write_json(path, res)
