"""Parity at export: the exported file, read by an independent reader, answers as the run does.

Readers: transformers' GGUF loader (always: it rebuilds model and tokenizer from the file's
own metadata, so a wrong tensor layout, vocabulary, chat template or EOS id shows up as
different answers) and llama.cpp through llama-cpp-python when it is installed. Both decode
greedily the first N prompts of the config's test split (validation when there is none), with
the same stop rule as `tuneloop eval`. The run itself answers with fp32 weights.

Reported per reader: exact agreement of the answers, the task metric of each side with its
95% bootstrap interval, and the paired difference with its interval. For F16 the answers must
agree on at least 95% of prompts and the file's metric must lie inside the run's interval; for
quantised files the difference is reported, not enforced.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import Config
from tuneloop.data.load import load_splits
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.metrics import parse_label
from tuneloop.evaluate.stats import mean_stat, metric_with_ci, paired_bootstrap
from tuneloop.evaluate.systems import label_gen_tokens
from tuneloop.evaluate.text_metrics import references, rouge_l, token_f1
from tuneloop.models.generate import generate, model_device, stop_ids
from tuneloop.models.load import Placement
from tuneloop.models.tokens import encode_prompt, end_of_turn_id, render
from tuneloop.records import Example, Message, label_set
from tuneloop.runs import load_run_model

MIN_AGREEMENT = 0.95  # F16: share of prompts whose greedy answer must match the run's exactly
# A difference that starts where the run's two best next tokens were closer than this (in
# logits) is a near tie that F16 rounding flipped (measured: SmolLM2's F16 weights move logits
# by up to ~0.02; a parted answer was a 0.004 tie), not a conversion error. They are counted
# and shown, to explain a difference; the pass rule is still exact answers (the issue's rule).
NEAR_TIE = 0.1
N_BOOT = 1000


class ParityError(TuneloopError):
    """The exported model does not answer as the run does (the CLI exits 1)."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def parity_examples(cfg: Config, n: int) -> tuple[list[Example], str]:
    """The first n examples of the test split (else validation) and the split's name."""
    splits = load_splits(cfg)
    examples, name = (splits.test, "test") if splits.test else (splits.validation, "validation")
    if not examples:
        raise TuneloopError("no test or validation examples to check parity on; set data.test "
                            "or pass --parity-n 0 to skip the check")
    return list(examples[:n]), name


def max_new_tokens(cfg: Config, tok, examples: Sequence[Example]) -> int:
    """Enough tokens for the longest label (classification), else eval.max_new_tokens."""
    if cfg.task.type == "classification":
        labels = label_set(examples, cfg.task.labels)
        if labels:
            return label_gen_tokens(tok, labels)
    return cfg.eval.max_new_tokens


def task_scores(cfg: Config, examples: Sequence[Example], answers: Sequence[str]
                ) -> tuple[str, np.ndarray]:
    """Per-example task metric of generated answers: label accuracy of the parsed answer
    (classification), token F1 (extraction) or ROUGE-L (generation, chat)."""
    if cfg.task.type == "classification":
        labels = label_set(examples, cfg.task.labels)
        return "generation_accuracy", np.array(
            [float(parse_label(a, labels) == e.label) for a, e in zip(answers, examples, strict=True)])
    fn, name = (token_f1, "f1") if cfg.task.type == "extraction" else (rouge_l, "rouge_l")
    return name, np.array([fn(a, references(e)) for a, e in zip(answers, examples, strict=True)])


def compare(cfg: Config, examples: Sequence[Example], run_answers: Sequence[str],
            answers: Sequence[str], seed: int = 0,
            margins: Sequence[float | None] | None = None) -> dict[str, Any]:
    """Agreement, each side's metric with its CI, and the paired difference (file - run).

    `margins`: per example, the run's logit margin at the first token where the two answers
    part (None where they agree); a part below NEAR_TIE is a near tie that rounding flipped.
    """
    n = len(examples)
    same = [a == b for a, b in zip(run_answers, answers, strict=True)]
    margins = list(margins) if margins is not None else [None] * n
    ties = sum(1 for s_, m in zip(same, margins, strict=True)
               if not s_ and m is not None and m < NEAR_TIE)
    name, run_s = task_scores(cfg, examples, run_answers)
    _, file_s = task_scores(cfg, examples, answers)
    run_m = metric_with_ci(mean_stat(run_s), n, N_BOOT, seed)
    file_m = metric_with_ci(mean_stat(file_s), n, N_BOOT, seed)
    diff = paired_bootstrap(mean_stat(file_s), mean_stat(run_s), n, N_BOOT, seed)
    lo, hi = run_m["ci"]
    return {"prompts": n, "agreement": round(sum(same) / max(n, 1), 4),
            "near_ties": ties,
            "agreement_with_ties": round((sum(same) + ties) / max(n, 1), 4),
            "disagreements": [{"id": e.id, "run": r, "file": a,
                               "run_margin": None if m is None else round(m, 4)}
                              for e, r, a, s, m in zip(examples, run_answers, answers, same,
                                                       margins, strict=True) if not s][:10],
            "sample": [{"id": e.id, "run": r, "file": a}
                       for e, r, a in zip(examples[:3], run_answers, answers, strict=False)],
            "metric": name, "run_metric": run_m, "file_metric": file_m,
            "metric_diff": {k: diff[k] for k in ("diff", "ci", "p_value")},
            "metric_within_run_ci": bool(lo - 1e-9 <= file_m["value"] <= hi + 1e-9)}


@contextlib.contextmanager
def _quiet_bars(quiet: bool) -> Iterator[None]:
    """transformers' GGUF reader draws a tqdm bar on stderr that no setting turns off after
    import; under --quiet/--json its stderr goes to a buffer instead."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def load_gguf(path: str | Path, quiet: bool = True):
    """Model and tokenizer rebuilt by transformers from the GGUF file alone (fp32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    with _quiet_bars(quiet):
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def transformers_answers(path: Path, prompts: Sequence[list[Message]], max_new: int, batch: int,
                         quiet: bool) -> tuple[list[str], float]:
    """Greedy answers of the GGUF as transformers reads it, and the load time in seconds."""
    t0 = time.perf_counter()
    model, tok = load_gguf(path, quiet)
    load_s = time.perf_counter() - t0
    answers = generate(model, tok, prompts, max_new, batch, quiet)
    del model
    return answers, load_s


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python (the optional [export] extra) can be imported."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def llama_cpp_answers(path: Path, tok, prompts: Sequence[list[Message]], max_new: int,
                      threads: int | None = None) -> tuple[list[str], dict[str, float]]:
    """Greedy answers of the GGUF in llama.cpp (llama-cpp-python), and timing figures.

    The prompt is the chat template's text (the same template the GGUF carries), tokenized by
    llama.cpp itself with special tokens parsed and no BOS added, as Ollama does.
    """
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=4096, n_threads=threads or os.cpu_count(),
                verbose=False)
    load_s = time.perf_counter() - t0
    stops = set(stop_ids(tok))
    answers, new_tokens, gen_s = [], 0, 0.0
    for msgs in prompts:
        ids = llm.tokenize(render(tok, msgs, add_generation_prompt=True).encode("utf-8"),
                           add_bos=False, special=True)
        out: list[int] = []
        t1 = time.perf_counter()
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if t in stops or len(out) >= max_new:
                break
            out.append(t)
        gen_s += time.perf_counter() - t1
        new_tokens += len(out)
        answers.append(llm.detokenize(out).decode("utf-8", errors="replace").strip())
    return answers, {"load_s": round(load_s, 3), "new_tokens": new_tokens,
                     "tokens_per_s": round(new_tokens / gen_s, 1) if gen_s else None}


@torch.no_grad()
def divergence_margins(model, tok, prompts: Sequence[list[Message]], run_answers: Sequence[str],
                       answers: Sequence[str]) -> list[float | None]:
    """Per prompt: where the two answers part (as tokens), the run's logit for its own next
    token minus its logit for the file's next token (a small value: a near tie). None where
    the answers agree."""
    stop = end_of_turn_id(tok)
    out: list[float | None] = []
    for msgs, ra, fa in zip(prompts, run_answers, answers, strict=True):
        if ra == fa:
            out.append(None)
            continue
        r = tok(ra, add_special_tokens=False)["input_ids"]
        f = tok(fa, add_special_tokens=False)["input_ids"]
        k = next((i for i, (x, y) in enumerate(zip(r, f, strict=False)) if x != y), min(len(r), len(f)))
        nr, nf = (r[k] if k < len(r) else stop), (f[k] if k < len(f) else stop)
        if nr == nf:  # re-tokenising the decoded text does not show where they part
            out.append(None)
            continue
        ids = torch.tensor([encode_prompt(tok, msgs) + r[:k]], device=model_device(model))
        logits = model(input_ids=ids).logits[0, -1].float()
        out.append(float(logits[nr] - logits[nf]))
    return out


def check_parity(run: Path, gguf_file: Path, cfg: Config, quant: str, n: int, batch: int = 8,
                 quiet: bool = True) -> dict[str, Any]:
    """Compare the run with its GGUF on n prompts; raise ParityError when F16 does not match."""
    examples, split = parity_examples(cfg, n)
    prompts = [e.prompt_messages for e in examples]
    t0 = time.perf_counter()
    model, tok, _ = load_run_model(run, Placement("cpu", "fp32"))
    max_new = max_new_tokens(cfg, tok, examples)
    ref = generate(model, tok, prompts, max_new, batch, quiet)
    run_s = time.perf_counter() - t0
    answers, load_s = transformers_answers(gguf_file, prompts, max_new, batch, quiet)
    margins = divergence_margins(model, tok, prompts, ref, answers)
    result: dict[str, Any] = {"split": split, "max_new_tokens": max_new, "quant": quant,
                              "run_seconds": round(run_s, 2), "near_tie_logits": NEAR_TIE,
                              "transformers": compare(cfg, examples, ref, answers, cfg.seed, margins)
                              | {"load_s": round(load_s, 2)}}
    if llama_cpp_available():
        lc, timing = llama_cpp_answers(gguf_file, tok, prompts, max_new)
        result["llama_cpp"] = compare(cfg, examples, ref, lc, cfg.seed,
                                      divergence_margins(model, tok, prompts, ref, lc)) | timing
    else:
        result["llama_cpp"] = None
    del model
    result["ok"] = True
    if quant == "f16":
        for reader in ("transformers", "llama_cpp"):
            r = result.get(reader)
            if r and (r["agreement"] < MIN_AGREEMENT or not r["metric_within_run_ci"]):
                result["ok"] = False
                raise ParityError(
                    f"parity failed ({reader}): the F16 GGUF gives the run's answer on "
                    f"{r['agreement']:.0%} of {r['prompts']} {split} prompts (need {MIN_AGREEMENT:.0%}; "
                    f"{r['near_ties']} of the others part at a near tie, which F16 rounding can "
                    f"flip); {r['metric']} "
                    f"{r['file_metric']['value']} vs the run's {r['run_metric']['value']} "
                    f"{r['run_metric']['ci']}. Nothing was written.", result)
    return result
