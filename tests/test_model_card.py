"""The model card: Hugging Face front matter, the evaluation table with baselines and intervals,
the data and training summaries, and known limits drawn from the comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tuneloop.registry.card import model_card, write_card

EVAL = {
    "task": "classification", "primary_metric": "accuracy", "split": "test", "examples": 50,
    "bootstrap": {"resamples": 1000, "level": 0.95, "seed": 0},
    "systems": {
        "finetuned": {"metrics": {"accuracy": {"value": 0.82, "ci": [0.7, 0.92]},
                                  "parse_failure_rate": {"value": 0.3, "ci": [0.2, 0.4]}}},
        "zero_shot": {"metrics": {"accuracy": {"value": 0.4, "ci": [0.26, 0.54]}}},
        "embedding_classifier": {"metrics": {"accuracy": {"value": 0.94, "ci": [0.86, 1.0]}}},
    },
    "comparisons": [
        {"a": "finetuned", "b": "zero_shot", "metric": "accuracy", "diff": 0.42, "p_value": 0.001,
         "verdict": "finetuned is better on accuracy by 0.420 (p=0.001)"},
        {"a": "finetuned", "b": "embedding_classifier", "metric": "accuracy", "diff": -0.12,
         "p_value": 0.02, "verdict": "embedding_classifier is better on accuracy by 0.120 (p=0.02)"},
    ],
}


def _run(root: Path, with_eval: bool = True) -> Path:
    run = root / "lora-1"
    (run / "adapter").mkdir(parents=True)
    cfg = {"data": {"train": "/data/train.csv", "test": "/data/test.csv"},
           "task": {"type": "classification", "labels": ["card_arrival", "exchange_rate"],
                    "system_prompt": "Classify the message."},
           "model": {"name": "smollm2-135m-instruct"},
           "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05,
                      "target_modules": "all-linear"},
           "train": {"learning_rate": 5e-4, "batch_size": 8, "epochs": 2}, "seed": 3}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "summary.json").write_text(json.dumps({"steps": 40, "train_seconds": 31.2,
                                                  "device": "cpu", "precision": "fp32",
                                                  "val_loss": 0.4, "best_val_loss": 0.38,
                                                  "best_step": 30}))
    (run / "data.json").write_text(json.dumps({"format": "text_label",
                                               "counts": {"train": 270, "validation": 30, "test": 50},
                                               "fingerprint": {"train": "ab" * 32}}))
    (run / "audit.json").write_text(json.dumps({"score": 87, "findings": [
        {"check": "near_duplicates", "severity": "warning", "message": "3 near-duplicate pairs"},
        {"check": "score", "severity": "info", "message": "score 87/100"}]}))
    if with_eval:
        (run / "eval").mkdir()
        (run / "eval" / "eval.json").write_text(json.dumps(EVAL))
    return run


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_front_matter_names_base_licence_and_metrics(tmp_path):
    card = model_card(_run(tmp_path))
    front = _front(card)
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["library_name"] == "peft" and front["license"] == "apache-2.0"
    assert {"tuneloop", "lora", "classification"} <= set(front["tags"])
    assert front["datasets"] == ["train.csv", "test.csv"]
    assert front["metrics"] == ["accuracy", "parse_failure_rate"]


def test_evaluation_table_with_baselines_and_intervals(tmp_path):
    card = model_card(_run(tmp_path))
    assert "| system | accuracy | parse_failure_rate |" in card
    assert "| finetuned | 0.820 [0.700, 0.920] | 0.300 [0.200, 0.400] |" in card
    assert "| zero_shot | 0.400 [0.260, 0.540] | – |" in card
    assert "finetuned is better on accuracy by 0.420" in card
    assert "50 test examples" in card and "95% bootstrap interval" in card


def test_known_limits_say_what_did_better(tmp_path):
    card = model_card(_run(tmp_path), notes=["Export parity: 100% identical."])
    limits = card.split("## Known limits")[1]
    assert "embedding_classifier did better than the fine-tuned model on accuracy" in limits
    assert "30% of answers did not parse" in limits
    assert "Evaluated on 50 examples" in limits and "Export parity: 100% identical." in limits


def test_data_and_training_sections(tmp_path):
    card = model_card(_run(tmp_path))
    data = card.split("## Training data")[1].split("## Training\n")[0]
    assert "train 270, validation 30, test 50" in data
    assert "audit score: 87/100; findings left: 1 (3 near-duplicate pairs)" in data
    train = card.split("## Training\n")[1]
    assert "lora (r=16, alpha=32" in train and "seed 3" in train and "ran 40 steps" in train
    assert "Classify the message." in card  # intended use: the system prompt to send


def test_without_eval_the_card_says_how(tmp_path):
    card = write_card(_run(tmp_path, with_eval=False), tmp_path / "README.md",
                      library="transformers").read_text()
    assert "Not evaluated yet: run `tuneloop eval RUN`" in card
    assert _front(card)["metrics"] == [] and _front(card)["library_name"] == "transformers"


def test_registry_version_layout_and_local_base(tmp_path):
    run = _run(tmp_path)
    (run / "eval" / "eval.json").rename(run / "eval.json")  # a registry version keeps it here
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["name"] = "/home/me/models/my-llama"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    card = model_card(run)
    assert _front(card)["base_model"] == "my-llama"  # no machine paths in a published card
    assert _front(card)["license"] == "other"
    assert "| finetuned | 0.820" in card
