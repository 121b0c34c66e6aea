"""Run one system (an LLM with its prompts, or the embedding classifier) over the eval examples.

The output keeps per-example predictions, timing and token counts, so metrics, paired tests,
cost and the report's error list all come from one record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tuneloop.config import Config
from tuneloop.evaluate.baselines import embedding_classifier, nearest_answers
from tuneloop.evaluate.metrics import parse_label
from tuneloop.evaluate.runner import score_and_generate, target_nll
from tuneloop.models.generate import generate_with_counts
from tuneloop.models.tokens import encode_prompt
from tuneloop.records import Example, Message, label_set


@dataclass
class SystemOutput:
    """Everything one system produced on the eval set."""

    name: str
    preds: list[str | None]  # label (classification) or generated text
    gen: list[str | None] | None = None  # classification: free-generated answers (None: not
    # in the eval.generate_sample sample)
    gen_parsed: list[str | None] | None = None  # those answers mapped to labels (None: unparsed)
    gen_sampled: int | None = None  # how many examples were free-generated
    scores: np.ndarray | None = None  # classification: (n, labels) log-likelihoods or probs
    seconds_per_example: float = 0.0
    gen_seconds_per_example: float | None = None
    prompt_tokens: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    val_nll: list[tuple[float, int, int]] | None = None  # validation (nll, tokens, bytes)

    def cost(self) -> dict:
        """Latency per example and tokens per query (prompt + generated)."""
        c: dict = {"latency_s_per_example": round(self.seconds_per_example, 4)}
        if self.gen_seconds_per_example is not None:
            c["generation_latency_s_per_example"] = round(self.gen_seconds_per_example, 4)
        if self.prompt_tokens:
            p = float(np.mean(self.prompt_tokens))
            g = float(np.mean(self.new_tokens)) if self.new_tokens else 0.0
            c |= {"prompt_tokens_per_query": round(p, 1), "new_tokens_per_query": round(g, 1),
                  "tokens_per_query": round(p + g, 1)}
        else:
            c["tokens_per_query"] = None  # no LLM tokens: MiniLM + logistic regression
        return c


def label_gen_tokens(tok, labels: Sequence[str]) -> int:
    """Enough new tokens for the longest label plus a little slack for free generation."""
    return max(len(tok(lab, add_special_tokens=False)["input_ids"]) for lab in labels) + 4


def run_llm(name: str, model, tok, cfg: Config, examples: Sequence[Example],
            prompts: Sequence[list[Message]], validation: Sequence[Example] | None,
            free_generation: bool = True, quiet: bool = True) -> SystemOutput:
    """Predict with an LLM: label scoring (+ free generation) or greedy generation by task."""
    bs, n = cfg.eval.batch_size, max(len(examples), 1)
    prompt_tokens = [len(encode_prompt(tok, p)) for p in prompts]
    out = SystemOutput(name, [], prompt_tokens=prompt_tokens)
    if cfg.task.type == "classification":
        labels = label_set(examples, cfg.task.labels)
        # Parse failures are a rate: a sample estimates it, and free generation costs more
        # than label scoring, so only the first eval.generate_sample examples generate. Their
        # replies are decoded from the scoring pass's prompt cache (no second prefill).
        k = min(cfg.eval.generate_sample or len(prompts), len(prompts)) if free_generation else 0
        t0 = time.perf_counter()
        scores, texts, counts, decode_s = score_and_generate(
            model, tok, prompts, labels, k, label_gen_tokens(tok, labels), bs, quiet)
        out.seconds_per_example = (time.perf_counter() - t0 - decode_s) / n
        out.scores = scores.numpy()
        out.preds = [labels[i] for i in scores.argmax(1).tolist()]
        if free_generation:
            # A generated answer costs the prompt pass (shared with scoring) plus its decoding.
            out.gen_seconds_per_example = out.seconds_per_example + decode_s / max(k, 1)
            out.gen = list(texts) + [None] * (len(prompts) - k)
            out.gen_sampled = k
            out.new_tokens = counts
            out.gen_parsed = [parse_label(t, labels) for t in texts] + [None] * (len(prompts) - k)
    else:
        t0 = time.perf_counter()
        texts, counts = generate_with_counts(model, tok, prompts, cfg.eval.max_new_tokens,
                                             bs, quiet)
        out.seconds_per_example = (time.perf_counter() - t0) / n
        out.preds, out.new_tokens = list(texts), counts
    if validation:
        out.val_nll = target_nll(model, tok, validation, cfg.model.max_seq_len, bs, quiet)
    return out


def run_embedding(cfg: Config, train: Sequence[Example],
                  examples: Sequence[Example]) -> SystemOutput:
    """The MiniLM + logistic-regression classifier as a SystemOutput."""
    pred, proba, spe = embedding_classifier(train, examples, cfg.task, cfg.seed)
    return SystemOutput("embedding_classifier", list(pred), scores=np.log(proba + 1e-12),
                        seconds_per_example=spe)


def run_retrieval(cfg: Config, train: Sequence[Example],
                  examples: Sequence[Example]) -> SystemOutput:
    """The nearest training example's answer as the prediction (classification: its label)."""
    answers, spe = nearest_answers(examples, train, cfg.task)
    return SystemOutput("retrieval", list(answers), seconds_per_example=spe)
