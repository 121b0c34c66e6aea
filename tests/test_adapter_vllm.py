"""A run's adapter/ is a standard peft folder: peft's own loader restores every LoRA weight, and
adapter_config.json has what vLLM's PEFTHelper reads (rank, alpha, target modules) and none of
what it refuses (modules_to_save, DoRA, biases, non-linear targets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.errors import TuneloopError
from tuneloop.export.adapter import serving_check

runner = CliRunner()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model) -> Path:
    from conftest import write_classification_project

    root = tmp_path_factory.mktemp("adapter-proj")
    write_classification_project(root, tiny_model, n=16, train={"max_steps": 2})
    res = runner.invoke(app, ["train", str(root), "-q", "--set", "output.name=r"])
    assert res.exit_code == 0, res.output
    return root / "runs" / "r" / "adapter"


def test_peft_loader_restores_every_lora_weight(adapter, tiny_model):
    from peft import PeftConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    cfg = PeftConfig.from_pretrained(adapter)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), cfg)
    weights = load_peft_weights(str(adapter))
    result = set_peft_model_state_dict(model, weights)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]
    trained = [v for k, v in weights.items() if "lora_B" in k]
    assert trained and any(float(v.abs().max()) > 0 for v in trained)  # B moved off zero


def test_adapter_config_has_what_vllm_reads(adapter):
    raw = json.loads((adapter / "adapter_config.json").read_text())
    assert raw["peft_type"] == "LORA" and raw["r"] == 16 and raw["lora_alpha"] == 32
    assert raw.get("modules_to_save") in (None, []) and not raw.get("use_dora")
    assert raw.get("bias", "none") == "none"
    rep = serving_check(adapter)
    assert rep["ok"], rep["problems"]
    assert set(rep["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"}
    assert rep["modules_with_weights"] == rep["target_modules"]
    assert not rep["notes"]  # rank 16 fits vLLM's default --max-lora-rank


def _variant(adapter: Path, tmp_path: Path, **changes) -> Path:
    d = tmp_path / "a"
    shutil.copytree(adapter, d)
    cfg = json.loads((d / "adapter_config.json").read_text()) | changes
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("changes,expect", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "lora_only"}, "enable-lora-bias"),
    ({"peft_type": "IA3"}, "LoRA adapters only"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens"),
])
def test_what_vllm_refuses_is_named(adapter, tmp_path, changes, expect):
    rep = serving_check(_variant(adapter, tmp_path, **changes))
    assert not rep["ok"] and any(expect in p for p in rep["problems"]), rep["problems"]


def test_large_rank_needs_a_serve_flag(adapter, tmp_path):
    rep = serving_check(_variant(adapter, tmp_path, r=48))
    assert rep["ok"] and rep["notes"] == ["rank 48 > 16: start vLLM with --max-lora-rank 64"]


def test_corrupt_adapter_files_are_clear_errors(adapter, tmp_path):
    d = _variant(adapter, tmp_path)
    (d / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(TuneloopError, match="unreadable safetensors"):
        serving_check(d)
    (d / "adapter_config.json").write_text("{not json")
    with pytest.raises(TuneloopError, match="not valid JSON"):
        serving_check(d)
    with pytest.raises(TuneloopError, match="no adapter_config.json"):
        serving_check(tmp_path / "missing")


def test_served_adapter_answers_like_the_run(adapter, tiny_model):
    """What an engine loads (base + this folder through peft) is the run's model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneloop.models.load import Placement
    from tuneloop.runs import load_run_model

    ours, tok, _ = load_run_model(adapter.parent, Placement("cpu", "fp32"))
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                       adapter).eval()
    ids = tok("where is my card, it has not arrived", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, theirs(ids).logits, atol=1e-5)
