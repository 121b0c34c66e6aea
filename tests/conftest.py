"""Shared fixtures: a private TUNELOOP_HOME, tiny random-weight models (seconds to build) and
tiny projects."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# What `tuneloop`'s CLI entry point sets before torch loads (tuneloop.cli.main), set here for
# the in-process tests: idle OpenMP threads sleep instead of spinning, which on a busy or
# shared CPU made training and scoring several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tiny import build_tiny_model  # noqa: E402

LABELS = ["card_arrival", "exchange_rate"]
# What a catalog model's one-time conversion writes under $TUNELOOP_HOME: the safetensors and
# the lock that keeps two processes from converting at once. The tests share these with the
# user's cache (see tuneloop_home), and an assembled gemma GGUF when the user has one.
SHARED_CACHE, SHARED_IF_PRESENT = ("models", "locks"), ("gguf",)


@pytest.fixture(scope="session", autouse=True)
def tuneloop_home(tmp_path_factory) -> Path:
    """Every test runs with TUNELOOP_HOME in a temporary folder, so calibration.json and
    anything else tuneloop caches is measured afresh and never lands in the user's cache.

    One exception, on purpose: the converted catalog models. De-quantising the bundled GGUF
    takes ~20 s, so `models/` and `locks/` (and `gguf/`, if the user has one) are symlinks into
    the user's cache ($TUNELOOP_HOME, else ~/.cache/tuneloop). The integration tests read the
    model from there, and the only write the tests can make into the user's cache is that
    one-time conversion, the same one the first `tuneloop` command would make. Where the user's
    cache cannot be written, the conversion goes to the temporary home (once per session).
    """
    from tuneloop.models.load import tuneloop_home as user_home

    real = user_home()
    home = tmp_path_factory.mktemp("tuneloop-home")
    for name in SHARED_CACHE + SHARED_IF_PRESENT:
        if name in SHARED_CACHE:
            with contextlib.suppress(OSError):  # read-only: the temporary home it is
                (real / name).mkdir(parents=True, exist_ok=True)
        if (real / name).is_dir():
            (home / name).symlink_to(real / name, target_is_directory=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNELOOP_HOME", str(home))
    yield home
    mp.undo()
    for name in SHARED_CACHE + SHARED_IF_PRESENT:  # so removing old temp folders never
        if (home / name).is_symlink():             # reaches the user's cache
            (home / name).unlink()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Folder of a 2-layer random Llama with a byte-level BPE tokenizer and ChatML template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def learnable_model(tmp_path_factory) -> Path:
    """The tiny Llama with larger initial weights: LoRA at learning rate 1e-2 learns the
    two-label task in ~20 steps (held-out accuracy 1.0), where `tiny_model` stays at chance."""
    return build_tiny_model(tmp_path_factory.mktemp("learnable-model"), init_std=0.2)


def phrase(label: str, i: int) -> str:
    """Row i of the two-label task: a fixed phrase per label, made unique by its number."""
    return ("where is my card, it has not arrived " if label == LABELS[0]
            else "what is the exchange rate today ") + str(i)


def write_rows(path: Path, numbers: range | list[int]) -> Path:
    """A text/label JSONL file, labels alternating, one row per number (distinct numbers give
    distinct rows, so a held-out file never repeats a training row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for k, i in enumerate(numbers):
            lab = LABELS[k % 2]
            f.write(json.dumps({"text": phrase(lab, i), "label": lab}) + "\n")
    return path


def write_classification_project(root: Path, model: Path, n: int = 40, **sections) -> Path:
    """A text/label project folder with tuneloop.yaml (rows 0..n-1); returns the config path."""
    import yaml

    write_rows(root / "train.jsonl", range(n))
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
