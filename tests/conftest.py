"""Shared fixtures: a tiny random-weight model (seconds to build) and tiny projects."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tiny import build_tiny_model  # noqa: E402

LABELS = ["card_arrival", "exchange_rate"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Folder of a 2-layer random Llama with a byte-level BPE tokenizer and ChatML template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_classification_project(root: Path, model: Path, n: int = 40, **sections) -> Path:
    """A text/label project folder with tuneloop.yaml; returns the config path."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.jsonl", "w") as f:
        for i in range(n):
            lab = LABELS[i % 2]
            text = ("where is my card, it has not arrived " if lab == LABELS[0]
                    else "what is the exchange rate today ") + str(i)
            f.write(json.dumps({"text": text, "label": lab}) + "\n")
    cfg = {"data": {"train": "train.jsonl"},
           "task": {"type": "classification", "labels": LABELS},
           "model": {"name": str(model), "max_seq_len": 128},
           "train": {"epochs": 2, "batch_size": 4, "eval_every": 5, "save_every": 5,
                     "learning_rate": 1e-3},
           "output": {"dir": "runs"}}
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    (root / "tuneloop.yaml").write_text(yaml.safe_dump(cfg))
    return root / "tuneloop.yaml"


@pytest.fixture
def tiny_project(tmp_path, tiny_model) -> Path:
    return write_classification_project(tmp_path / "proj", tiny_model)
