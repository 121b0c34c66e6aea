"""Pairwise LLM judge: the fine-tune against each baseline on the same inputs, asked of any
OpenAI-compatible endpoint (`eval.judge`), each pair in both orders so position bias shows.

Per example the two verdicts combine MT-bench style: a win only when the target is preferred
in both orders, a loss only when the baseline is, anything else a tie (score 1 / 0.5 / 0);
an example with an unreadable verdict is counted as `unparsed` and left out of the win rate.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import numpy as np

from tuneloop.config import JudgeConfig
from tuneloop.console import progress
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.stats import mean_stat, metric_with_ci
from tuneloop.records import Example

MAX_TOKENS = 16  # a verdict is one word; room for "Answer A is better."
CLIP = 4000  # characters per field, so a long source cannot crowd out the answers
SYSTEM = ("You are an impartial judge. Two assistants answered the same user request. Decide "
          "which answer serves the request better: correct, helpful, faithful to the source and "
          "close to the reference when those are given. Do not let the order in which the "
          "answers are shown or their length sway you. Reply with exactly one of: A, B, tie.")


def _clip(s: str) -> str:
    return s if len(s) <= CLIP else s[:CLIP] + " [...]"


def judge_messages(ex: Example, answer_a: str, answer_b: str) -> list[dict]:
    """The chat messages that ask which of two answers to `ex` is better."""
    parts = [f"[User request]\n{_clip(ex.user_text)}"]
    if ex.source:
        parts.append(f"[Source]\n{_clip(ex.source)}")
    parts.append(f"[Reference answer]\n{_clip(ex.target)}")
    parts += [f"[Answer A]\n{_clip(answer_a)}", f"[Answer B]\n{_clip(answer_b)}",
              "Which answer is better? Reply with A, B or tie."]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply; None when it says none of them clearly."""
    t = (text or "").strip()
    if m := re.search(r"\[\[\s*(A|B|(?i:tie|C))\s*\]\]", t):  # MT-bench style [[A]]
        return m.group(1) if m.group(1) in "AB" else "tie"
    if re.match(r"[\W_]*(?i:(?:it'?s\s+)?(?:a\s+)?(?:tie|draw|equal)\b)", t):
        return "tie"  # before the letter, so "A tie" is not read as A
    if m := re.match(r"[\W_]*(?:(?i:answer|verdict|winner)\W*)?([AB])(?![\w'])", t):
        return m.group(1)  # leads with the letter: "A", "**B**", "Answer A is better"
    named = set(re.findall(r"(?i:answer)\s+([AB])\b", t))
    if len(named) == 1:
        return named.pop()
    return "tie" if re.search(r"(?i)\b(tie|equally good|equally bad)\b", t) else None


def _pref(verdict: str | None, target_first: bool) -> int | None:
    """+1 target preferred, -1 baseline preferred, 0 tie, None unparsed."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0
    return 1 if (verdict == "A") == target_first else -1


def example_score(v_target_first: str | None, v_baseline_first: str | None) -> float | None:
    """Target's score on one example from both orders: 1 win, 0.5 tie or inconsistent, 0 loss."""
    p1, p2 = _pref(v_target_first, True), _pref(v_baseline_first, False)
    if p1 is None or p2 is None:
        return None
    return 1.0 if p1 == p2 == 1 else 0.0 if p1 == p2 == -1 else 0.5


def summarize(verdicts: list[tuple[str | None, str | None]], n_boot: int = 1000,
              seed: int = 0) -> dict:
    """One baseline's report from (target-first, baseline-first) verdict pairs."""
    scores = [example_score(a, b) for a, b in verdicts]
    shown = [v for pair in verdicts for v in pair if v in ("A", "B")]
    both = [(_pref(a, True), _pref(b, False)) for a, b in verdicts
            if a is not None and b is not None]
    vec = np.array([np.nan if s is None else s for s in scores], dtype=float)
    return {
        "n": len(verdicts),
        "win_rate": metric_with_ci(mean_stat(vec), len(vec), n_boot, seed),
        "wins": scores.count(1.0), "ties": scores.count(0.5), "losses": scores.count(0.0),
        "unparsed": scores.count(None),
        "position_bias": round(shown.count("A") / len(shown), 6) if shown else None,
        "consistency": round(sum(p == q for p, q in both) / len(both), 6) if both else None,
    }


def _ask(client: httpx.Client, url: str, model: str, messages: list[dict]) -> str:
    try:
        r = client.post(url, json={"model": model, "messages": messages, "temperature": 0,
                                   "max_tokens": MAX_TOKENS})
    except httpx.HTTPError as e:
        raise TuneloopError(f"judge endpoint {url} unreachable ({type(e).__name__}: {e}); "
                            "check eval.judge.base_url and that the server is up") from None
    if r.status_code != 200:
        raise TuneloopError(f"judge endpoint {url} answered HTTP {r.status_code}: {r.text[:300]}")
    try:
        return r.json()["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise TuneloopError(f"judge endpoint {url} sent no chat completion: {r.text[:300]}"
                            ) from None


def _headers(judge: JudgeConfig) -> dict:
    if not judge.api_key_env:
        return {}
    key = os.environ.get(judge.api_key_env)
    if not key:
        raise TuneloopError(f"eval.judge.api_key_env names {judge.api_key_env}, which is not set: "
                            f"export {judge.api_key_env}=<the endpoint's key>")
    return {"Authorization": f"Bearer {key}"}


def judge_pairs(judge: JudgeConfig, examples: list[Example], outputs: dict[str, list[str]],
                target: str = "finetuned", seed: int = 0, n_boot: int = 1000,
                quiet: bool = True) -> dict:
    """Ask the judge about target vs every other system in `outputs` (one output per example,
    in `examples` order) on the first judge.max_examples examples, both orders each."""
    if target not in outputs:
        raise TuneloopError(f"judge: no outputs of {target!r} (have: {', '.join(outputs)})")
    headers = _headers(judge)
    n = min(judge.max_examples, len(examples))
    for name, outs in outputs.items():
        if len(outs) < n:
            raise TuneloopError(f"judge: {name} has {len(outs)} outputs for {n} examples")
    baselines = [s for s in outputs if s != target]
    url = judge.base_url.rstrip("/") + "/chat/completions"
    report, per_example = {}, []
    with httpx.Client(timeout=judge.timeout_s, headers=headers) as client, \
            progress(quiet) as bar:
        task = bar.add_task("judge", total=2 * n * len(baselines))
        for b in baselines:
            pairs = []
            for ex, mine, theirs in zip(examples[:n], outputs[target][:n], outputs[b][:n], strict=True):
                v1 = parse_verdict(_ask(client, url, judge.model, judge_messages(ex, mine, theirs)))
                v2 = parse_verdict(_ask(client, url, judge.model, judge_messages(ex, theirs, mine)))
                bar.advance(task, 2)
                pairs.append((v1, v2))
                per_example.append({"id": ex.id, "baseline": b, "score": example_score(v1, v2),
                                    "verdicts": [v1, v2]})
            report[b] = summarize(pairs, n_boot, seed)
    return {"target": target, "model": judge.model, "base_url": judge.base_url,
            "baselines": report, "per_example": per_example}


def judge_agreement(judgements: dict, ratings: list[dict], n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """How often the judge's per-example preference matches human ratings (1-5 per system and
    example, `load_review_ratings`): human preference = sign(rating_target - rating_baseline).
    Examples the humans rated equal are left out and counted as `human_ties`; a judge tie
    where humans prefer one side counts as disagreement."""
    sums: dict[tuple[str, str], list[float]] = {}
    for r in ratings:
        sums.setdefault((str(r["system"]), str(r["example_id"])), []).append(float(r["rating"]))
    human = {k: sum(v) / len(v) for k, v in sums.items()}
    target = judgements["target"]
    hits: dict[str, list[float]] = {}
    ties: dict[str, int] = {}
    for row in judgements.get("per_example", []):
        b, ex_id = row["baseline"], str(row["id"])
        rt, rb = human.get((target, ex_id)), human.get((b, ex_id))
        if row["score"] is None or rt is None or rb is None:
            continue
        hits.setdefault(b, [])
        ties.setdefault(b, 0)
        if rt == rb:
            ties[b] += 1
            continue
        hits[b].append(float(np.sign(row["score"] - 0.5) == np.sign(rt - rb)))

    def stat(v: list[float]) -> dict:
        return metric_with_ci(mean_stat(np.array(v)), len(v), n_boot, seed)

    out = {b: {"n": len(v), "agreement": stat(v), "human_ties": ties[b]} for b, v in hits.items()}
    every = [x for v in hits.values() for x in v]
    return {"baselines": out, "n": len(every), "agreement": stat(every),
            "human_ties": sum(ties.values())}


def load_review_ratings(eval_dir: str | Path) -> list[dict] | None:
    """Per-example human ratings [{system, example_id, rating}] of an eval folder (or a run
    folder holding eval/), from `tuneloop review import`; None when nobody has imported any."""
    d = Path(eval_dir)
    rev = next((p for p in (d / "review", d / "eval" / "review") if (p / "ratings.json").exists()),
               None)
    if rev is None:
        return None
    stored = json.loads((rev / "ratings.json").read_text())
    return stored.get("ratings") or None
