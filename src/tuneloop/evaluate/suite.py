"""`tuneloop eval`: the fine-tuned model and its baselines on the same examples, one JSON.

Result shape: {"systems": {NAME: {"metrics": {METRIC: {"value", "ci"}}, "cost": {...}}},
"comparisons": [...]} with NAME among zero_shot, few_shot, retrieval, rag,
embedding_classifier, finetuned and finetuned_rag; plus the task, example counts, seed
variance and notes. Per-example outputs go to predictions.jsonl beside eval.json for the
report and human review.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tuneloop.config import Config, load_config
from tuneloop.data.load import load_splits
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.baselines import few_shot_prompts, prompted, raw_input
from tuneloop.evaluate.compare import compare
from tuneloop.evaluate.judge import judge_pairs
from tuneloop.evaluate.rag import Chunk, Retriever, load_corpus, with_documents
from tuneloop.evaluate.scoring import PRIMARY, Scored, score
from tuneloop.evaluate.systems import SystemOutput, run_embedding, run_llm, run_retrieval
from tuneloop.files import write_json
from tuneloop.models.inference import for_inference
from tuneloop.models.load import Placement, choose_placement, load_model, load_tokenizer_for
from tuneloop.records import label_set
from tuneloop.runs import load_run_model
from tuneloop.train.recipe import train

BASELINES = ("zero_shot", "few_shot", "retrieval", "rag", "embedding_classifier")
FINETUNED = ("finetuned", "finetuned_rag")


def resolve_target(target: str | Path, overrides: list[str] | None) -> tuple[Config, Path | None]:
    """A run folder (has config.yaml + adapter) or a config file/folder -> (config, run or None)."""
    p = Path(target)
    if (p / "config.yaml").exists() and ((p / "adapter").exists() or (p / "model").exists()):
        return load_config(p / "config.yaml", overrides), p
    return load_config(p, overrides), None


def parse_baselines(spec: str | None, cfg: Config) -> list[str]:
    """Comma list -> names; default: every baseline that applies to the task and config
    (rag when eval.corpus is set; retrieval for text tasks, embedding_classifier for labels)."""
    task_type = cfg.task.type
    if spec is None:
        names = ["zero_shot", "few_shot"]
        names += ["embedding_classifier"] if task_type == "classification" else ["retrieval"]
        names += ["rag"] if cfg.eval.corpus else []
        return names
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in BASELINES and n != "none"]
    if bad:
        raise TuneloopError(f"--baselines: unknown {bad}; choose from {', '.join(BASELINES)}, none")
    if "embedding_classifier" in names and task_type != "classification":
        raise TuneloopError("embedding_classifier applies to classification tasks only")
    if "rag" in names and not cfg.eval.corpus:
        raise TuneloopError("the rag baseline needs documents to retrieve from: set eval.corpus "
                            "(a .jsonl/.csv with a text column, or a folder of .txt/.md)")
    return [n for n in names if n != "none"]


def run_eval(target: str | Path, baselines: str | None = None, seeds: int | None = None,
             limit: int | None = None, free_generation: bool = True, n_boot: int = 1000,
             overrides: list[str] | None = None, out_dir: Path | None = None,
             quiet: bool = False) -> dict:
    """Evaluate a run (or only the baselines of a config); writes eval.json + predictions."""
    cfg, run = resolve_target(target, overrides)
    names = parse_baselines(baselines, cfg)
    if cfg.eval.finetuned_rag and not cfg.eval.corpus:
        raise TuneloopError("eval.finetuned_rag needs eval.corpus (the documents to retrieve)")
    if not names and run is None and not seeds:
        raise TuneloopError(f"{target}: nothing to evaluate: a config without --seeds has no "
                            "fine-tuned model, and --baselines is none; pass a run folder")
    splits = load_splits(cfg)
    examples, split_name = (splits.test, "test") if splits.test else (splits.validation,
                                                                        "validation")
    if not examples:
        raise TuneloopError("no test or validation examples to evaluate; set data.test")
    limit = limit or cfg.eval.max_examples
    examples = examples[:limit] if limit else examples
    validation = splits.validation[:limit] if limit else splits.validation
    labels = label_set(splits.train, cfg.task.labels) or None
    if cfg.task.type == "classification" and labels:
        cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"labels": labels})})
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    if placement.device == "cpu":
        # Scoring runs without autocast: on a CPU every system computes in fp32, also where the
        # CPU has fast bf16, so the fp32 inference paths (models.inference) apply there too.
        placement = Placement("cpu", "fp32")
    outputs: dict[str, SystemOutput] = {}
    timings: dict[str, float] = {}
    hits = None
    if "rag" in names or (cfg.eval.finetuned_rag and (run or seeds)):
        hits = _retrieve_chunks(cfg, examples, timings)
    if {"zero_shot", "few_shot", "rag"} & set(names):
        path, tok = load_tokenizer_for(cfg.model.name)
        base = for_inference(load_model(path, placement).eval(), placement)
        if "zero_shot" in names:
            outputs["zero_shot"] = run_llm("zero_shot", base, tok, cfg, examples,
                                           [prompted(e, cfg.task) for e in examples], validation,
                                           free_generation, quiet)
        if "few_shot" in names:
            t0 = time.perf_counter()
            prompts = few_shot_prompts(examples, splits.train, cfg.eval.few_shot_k, cfg.task)
            timings["few_shot_retrieval_s"] = time.perf_counter() - t0
            outputs["few_shot"] = run_llm("few_shot", base, tok, cfg, examples, prompts, None,
                                          free_generation, quiet)
        if "rag" in names:
            prompts = [with_documents(prompted(e, cfg.task), h)
                       for e, h in zip(examples, hits, strict=True)]
            outputs["rag"] = run_llm("rag", base, tok, cfg, examples, prompts, None,
                                     free_generation, quiet)
        del base
    if "retrieval" in names:
        outputs["retrieval"] = run_retrieval(cfg, splits.train, examples)
    if "embedding_classifier" in names:
        outputs["embedding_classifier"] = run_embedding(cfg, splits.train, examples)
    runs = _seed_runs(cfg, run, seeds, quiet)
    seed_scores: list[Scored] = []
    for i, r in enumerate(runs):
        model, tok, _ = load_run_model(r, placement, merge=True)
        for_inference(model, placement)
        o = run_llm("finetuned", model, tok, cfg, examples,
                    [e.prompt_messages for e in examples], validation, free_generation, quiet)
        if i == 0:
            outputs["finetuned"] = o
            if cfg.eval.finetuned_rag:
                # Same adapter, retrieved chunks in the prompt: do retrieval and tuning add up?
                prompts = [with_documents(e.prompt_messages, h)
                           for e, h in zip(examples, hits, strict=True)]
                outputs["finetuned_rag"] = run_llm("finetuned_rag", model, tok, cfg, examples,
                                                   prompts, None, free_generation, quiet)
        seed_scores.append(score(o, examples, cfg.task.type, labels, n_boot, cfg.seed))
        del model
    scored = {k: score(o, examples, cfg.task.type, labels, n_boot, cfg.seed)
              for k, o in outputs.items()}
    result = _result(cfg, scored, outputs, examples, split_name, runs, seed_scores, n_boot)
    result["timings"] = {k: round(v, 3) for k, v in timings.items()}
    if cfg.eval.judge and "finetuned" in outputs:
        texts = {k: [p or "" for p in o.preds] for k, o in outputs.items()}
        result["judge"] = judge_pairs(cfg.eval.judge, list(examples), texts, "finetuned",
                                      cfg.seed, n_boot, quiet)
    out_dir = out_dir or _default_out(cfg, run)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "eval.json", result)
    _write_predictions(out_dir / "predictions.jsonl", examples, outputs, scored, labels)
    result["eval_dir"] = str(out_dir)
    return result


def _retrieve_chunks(cfg: Config, examples, timings: dict[str, float]) -> list[list[Chunk]]:
    """The eval.rag_k corpus chunks nearest each example's input (embedding the corpus once)."""
    t0 = time.perf_counter()
    retriever = Retriever(load_corpus(cfg.eval.corpus), cfg.eval.chunk_chars)
    timings["corpus_embedding_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hits = retriever.top([raw_input(e, cfg.task) for e in examples], cfg.eval.rag_k)
    timings["rag_retrieval_s"] = time.perf_counter() - t0
    return hits


def _seed_runs(cfg: Config, run: Path | None, seeds: int | None, quiet: bool) -> list[Path]:
    """The run plus retrained copies with seed+1, seed+2, ... up to `seeds` runs in all.

    A config with --seeds K trains K runs; a config without it evaluates the baselines only.
    """
    runs = [run] if run else []
    want = seeds if seeds is not None else len(runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while len(runs) < want:
        c = cfg.model_copy(deep=True)
        c.seed = cfg.seed + len(runs)
        c.output.name = f"seed{c.seed}-{stamp}"
        runs.append(train(c, quiet=quiet)[0])
    return runs


def _default_out(cfg: Config, run: Path | None) -> Path:
    if run is not None:
        return run / "eval"
    return Path(cfg.output.dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"


def _result(cfg: Config, scored: dict[str, Scored], outputs: dict[str, SystemOutput],
            examples, split_name: str, runs: list[Path], seed_scores: list[Scored],
            n_boot: int) -> dict:
    systems = {k: {"metrics": s.metrics, "cost": outputs[k].cost()} for k, s in scored.items()}
    comparisons = []
    # The fine-tune against every other system; fine-tune + retrieval against the baselines.
    for a in (x for x in FINETUNED if x in scored):
        for b in scored:
            if b != a and not (a == "finetuned_rag" and b in FINETUNED):
                comparisons += compare(cfg.task.type, a, scored[a], b, scored[b],
                                       len(examples), n_boot, cfg.seed)
    res = {"task": cfg.task.type, "primary_metric": PRIMARY[cfg.task.type],
           "split": split_name, "examples": len(examples), "model": cfg.model.name,
           "runs": [str(r) for r in runs], "systems": systems, "comparisons": comparisons,
           "details": {k: s.details for k, s in scored.items()},
           "bootstrap": {"resamples": n_boot, "level": 0.95, "seed": cfg.seed},
           "notes": ["perplexity and bits_per_byte are on the validation split's targets",
                     "intervals: 95% percentile bootstrap over examples"]}
    if len(seed_scores) > 1:
        res["seed_variance"] = {
            m: {"values": [s.metrics[m]["value"] for s in seed_scores],
                "mean": round(float(np.mean([s.metrics[m]["value"] for s in seed_scores])), 6),
                "std": round(float(np.std([s.metrics[m]["value"] for s in seed_scores],
                                          ddof=1)), 6)}
            for m in seed_scores[0].metrics if seed_scores[0].metrics[m]["value"] is not None}
    return res


def _write_predictions(path: Path, examples, outputs: dict[str, SystemOutput],
                       scored: dict[str, Scored], labels) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for name, o in outputs.items():
            per = scored[name].per_example
            for i, ex in enumerate(examples):
                rec = {"system": name, "id": ex.id, "input": ex.user_text,
                       "reference": ex.target, "prediction": o.preds[i]}
                if o.gen is not None:
                    rec["generated"] = o.gen[i]
                if o.scores is not None and labels:
                    s = o.scores[i]
                    rec["confidence"] = float(np.exp(s.max() - np.logaddexp.reduce(s)))
                for k, v in per.items():
                    rec[k] = None if np.isnan(v[i]) else float(v[i])
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

