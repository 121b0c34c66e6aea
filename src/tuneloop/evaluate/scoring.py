"""Turn a system's predictions into metrics with 95% bootstrap intervals, by task type.

Returns both the summary (value + CI per metric) and the per-example values that paired
tests and the report's worst-error list need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tuneloop.evaluate.faithfulness import not_in_source, unsupported_rate
from tuneloop.evaluate.metrics import classification_details, macro_f1_codes
from tuneloop.evaluate.stats import mean_stat, metric_with_ci, ratio_stat
from tuneloop.evaluate.text_metrics import (
    embedding_similarity,
    exact_match,
    references,
    rouge_l,
    token_f1,
)
from tuneloop.records import Example

if TYPE_CHECKING:  # only an annotation here: PRIMARY stays importable without torch (select)
    from tuneloop.evaluate.systems import SystemOutput

PRIMARY = {"classification": "accuracy", "extraction": "f1", "generation": "rouge_l",
           "chat": "rouge_l"}
# Metrics where a smaller value is the better one (verdicts and reports must know).
LOWER_IS_BETTER = {"unsupported_rate", "not_in_source_rate", "parse_failure_rate",
                   "perplexity", "bits_per_byte"}
# The faithfulness metric paired-tested beside the primary one, by task.
FAITHFULNESS = {"extraction": "not_in_source_rate", "generation": "unsupported_rate",
                "chat": "unsupported_rate"}


@dataclass
class Scored:
    """A system's metrics (value + ci), per-example scores and extra details."""

    metrics: dict[str, dict] = field(default_factory=dict)
    per_example: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # metric -> Stat, for paired bootstraps
    details: dict = field(default_factory=dict)


def score(out: SystemOutput, examples: Sequence[Example], task_type: str,
          labels: Sequence[str] | None, n_boot: int = 1000, seed: int = 0,
          faithfulness: bool = True) -> Scored:
    """Metrics of one system on the eval examples (plus validation perplexity when measured)."""
    sc = Scored()
    n = len(examples)
    if task_type == "classification":
        _classification(sc, out, examples, list(labels or []))
    else:
        _text(sc, out, examples, task_type, faithfulness)
    for name, stat in sc.stats.items():
        sc.metrics[name] = metric_with_ci(stat, n, n_boot, seed)
    if out.val_nll:
        nll = np.array([r[0] for r in out.val_nll])
        toks = np.array([r[1] for r in out.val_nll])
        nbytes = np.array([r[2] for r in out.val_nll])
        bpb = ratio_stat(nll / math.log(2), nbytes)
        mean_nll = ratio_stat(nll, toks)
        # Perplexity's interval is the exp of the mean-NLL interval (same resamples).
        ppl = metric_with_ci(mean_nll, len(nll), n_boot, seed)
        sc.metrics["perplexity"] = {"value": round(math.exp(min(ppl["value"], 50)), 4),
                                    "ci": [round(math.exp(min(c, 50)), 4) for c in ppl["ci"]]}
        sc.metrics["bits_per_byte"] = metric_with_ci(bpb, len(nll), n_boot, seed)
    return sc


def _classification(sc: Scored, out: SystemOutput, examples: Sequence[Example],
                    labels: list[str]) -> None:
    code = {lab: i for i, lab in enumerate(labels)}
    gold = np.array([code.get(e.label or "", -1) for e in examples])
    pred = np.array([code.get(p or "", -1) for p in out.preds])
    correct = (pred == gold).astype(float)
    sc.per_example["correct"] = correct
    sc.stats["accuracy"] = mean_stat(correct)
    sc.stats["macro_f1"] = lambda ix: macro_f1_codes(gold[ix], pred[ix], len(labels))
    sc.details = classification_details([e.label for e in examples], out.preds, labels)
    if out.gen_parsed is not None:
        # Only the eval.generate_sample examples were free-generated; the rest are NaN here.
        sampled = np.array([g is not None for g in (out.gen or out.gen_parsed)])
        gpred = np.array([code.get(p or "", -1) for p in out.gen_parsed])
        gcorrect = np.where(sampled, (gpred == gold).astype(float), np.nan)
        failed = np.where(sampled, (gpred < 0).astype(float), np.nan)
        sc.per_example["gen_correct"] = gcorrect
        sc.stats["generation_accuracy"] = mean_stat(gcorrect)
        sc.stats["generation_macro_f1"] = lambda ix: (
            macro_f1_codes(gold[ix][sampled[ix]], gpred[ix][sampled[ix]], len(labels))
            if sampled[ix].any() else float("nan"))
        sc.stats["parse_failure_rate"] = mean_stat(failed)
        keep = np.flatnonzero(sampled)
        sc.details["generation_confusion"] = classification_details(
            [examples[i].label for i in keep], [out.gen_parsed[i] for i in keep],
            labels)["confusion"]
        sc.details["generation_sample"] = int(sampled.sum())


def _text(sc: Scored, out: SystemOutput, examples: Sequence[Example], task_type: str,
          faithfulness: bool) -> None:
    preds = [p or "" for p in out.preds]
    refs = [references(e) for e in examples]
    f1 = np.array([token_f1(p, r) for p, r in zip(preds, refs, strict=True)])
    words = np.array([len(p.split()) for p in preds], dtype=float)
    sc.per_example |= {"f1": f1, "words": words}
    sc.stats |= {"f1": mean_stat(f1), "words": mean_stat(words)}
    sc.details["reference_words"] = round(float(np.mean(
        [len(e.target.split()) for e in examples])), 2) if examples else None
    if task_type == "extraction":
        em = np.array([exact_match(p, r) for p, r in zip(preds, refs, strict=True)])
        sc.per_example |= {"exact_match": em, "correct": em}
        sc.stats["exact_match"] = mean_stat(em)
        if faithfulness:
            sc.per_example["not_in_source_rate"] = _per_source(preds, examples, not_in_source)
            sc.stats["not_in_source_rate"] = mean_stat(sc.per_example["not_in_source_rate"])
        return
    rl = np.array([rouge_l(p, r) for p, r in zip(preds, refs, strict=True)])
    sim = embedding_similarity(preds, [r[0] for r in refs])
    sc.per_example |= {"rouge_l": rl, "embedding_similarity": sim}
    sc.stats |= {"rouge_l": mean_stat(rl), "embedding_similarity": mean_stat(sim)}
    if faithfulness:
        sc.per_example["unsupported_rate"] = _per_source(preds, examples, unsupported_rate)
        sc.stats["unsupported_rate"] = mean_stat(sc.per_example["unsupported_rate"])


def _per_source(preds: Sequence[str], examples: Sequence[Example], fn) -> np.ndarray:
    """fn(prediction, grounding) per example, NaN where fn has no verdict. The grounding is the
    record's `source`, else its prompt: a passage to answer from is usually in the prompt."""
    vals = [fn(p, e.source or "\n".join(m.content for m in e.prompt_messages))
            for p, e in zip(preds, examples, strict=True)]
    return np.array([np.nan if v is None else v for v in vals], dtype=float)
