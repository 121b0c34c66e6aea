"""`tuneloop quickstart`: the whole promise in one command on the bundled example.

Train LoRA on 270 real banking77 messages, then score the prompted base model and the
fine-tuned model on the same held-out test slice, so the user sees what fine-tuning bought.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tuneloop.config import Config, load_config
from tuneloop.data.load import load_splits
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.baselines import prompted
from tuneloop.evaluate.metrics import classification_metrics
from tuneloop.evaluate.runner import score_choices
from tuneloop.evaluate.stats import mean_stat, metric_with_ci
from tuneloop.files import write_json
from tuneloop.models.load import choose_placement, load_model, load_tokenizer_for
from tuneloop.records import label_set
from tuneloop.runs import load_run_model
from tuneloop.train.recipe import train

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "support-intents"


def example_config(overrides: list[str] | None = None) -> Config:
    """The bundled support-intents example's config, with the user's overrides."""
    if not (EXAMPLE / "tuneloop.yaml").exists():
        raise TuneloopError(f"{EXAMPLE}: the bundled example is missing; quickstart runs from "
                            "a source checkout (git clone + make quickstart)")
    return load_config(EXAMPLE / "tuneloop.yaml", overrides)


def evaluate_classifier(model, tok, cfg: Config, examples, prompts, quiet: bool) -> dict[str, float]:
    """Accuracy and macro-F1 by scoring each label's log-likelihood after each prompt."""
    labels = label_set(examples, cfg.task.labels)
    scores = score_choices(model, tok, prompts, labels, cfg.eval.batch_size, quiet)
    pred = [labels[i] for i in scores.argmax(1).tolist()]
    gold = [ex.label for ex in examples]
    correct = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=float)
    ci = metric_with_ci(mean_stat(correct), len(correct), 1000, cfg.seed)["ci"]
    return classification_metrics(gold, pred, labels) | {"accuracy_ci": ci}


def run_quickstart(overrides: list[str] | None = None, quiet: bool = False) -> dict:
    """Train on the example, evaluate base vs fine-tuned; returns run_dir and systems."""
    t_start = time.perf_counter()
    cfg = example_config(overrides)
    test = load_splits(cfg).test
    if cfg.eval.max_examples:
        test = test[: cfg.eval.max_examples]
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    path, tok = load_tokenizer_for(cfg.model.name)
    base = load_model(path, placement).eval()
    # The base model is prompted with the label list; the fine-tuned one sees its short
    # training prompt, which is the point: the labels live in its weights, not its context.
    base_prompts = [prompted(ex, cfg.task) for ex in test]
    systems = {"base": evaluate_classifier(base, tok, cfg, test, base_prompts, quiet)}
    del base
    t_base = time.perf_counter()
    run, summary = train(cfg, quiet=quiet)
    t_train = time.perf_counter()
    model, tok, _ = load_run_model(run, placement, merge=True)
    systems["finetuned"] = evaluate_classifier(model, tok, cfg, test,
                                               [ex.prompt_messages for ex in test], quiet)
    t_end = time.perf_counter()
    result = {"run_dir": str(run), "test_examples": len(test), "systems": systems,
              "train": {k: summary[k] for k in ("steps", "train_seconds", "val_loss")},
              "seconds": {"base_scoring_and_load": round(t_base - t_start, 1),
                          "train": round(t_train - t_base, 1),
                          "finetuned_scoring": round(t_end - t_train, 1),
                          "wall": round(t_end - t_start, 1)}}
    write_json(run / "quickstart.json", result)
    return result
