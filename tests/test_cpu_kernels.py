"""train.cpu_kernels: every allow-listed architecture matches the library, and `off` is stock peft."""

import copy
import json

import pytest
import torch

from tuneloop.config import MethodConfig, TrainConfig, load_config
from tuneloop.models.load import Placement
from tuneloop.models.tokens import IGNORE, Encoded
from tuneloop.train.batches import collate
from tuneloop.train.cpu.dropout import FastDropout
from tuneloop.train.cpu.fused_lora import FusedLoraLinear
from tuneloop.train.cpu.packed_attention import CPU_ATTENTION
from tuneloop.train.cpu.prepare import ARCHITECTURES, cpu_kernels, lean_classes
from tuneloop.train.loss import TargetLoss
from tuneloop.train.packing import ATTENTION, attention_of, collate_packed
from tuneloop.train.step import prepare_model

FP32 = Placement("cpu", "fp32")
SIZES = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "max_position_embeddings": 256, "tie_word_embeddings": True}


def _base(model_type: str):
    """A tiny random model of `model_type`, with non-trivial norm weights (their gradient path)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **SIZES),
                                             dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0 if model_type != "gemma3_text" else 0.0, 0.3)
    return model


def _items(lengths: list[int]) -> list[Encoded]:
    g = torch.Generator().manual_seed(3)
    out = []
    for n in lengths:
        ids = torch.randint(3, SIZES["vocab_size"], (n,), generator=g).tolist()
        out.append(Encoded(ids, [IGNORE] * (n // 3) + ids[n // 3:], False))
    return out


def _loss_and_grads(model, batch):
    """The training loss (TargetLoss, as train_step computes it) and every LoRA gradient."""
    model.train().zero_grad()
    loss_fn = TargetLoss(model)
    loss_sum, n = loss_fn(model, batch)
    (loss_sum / n).backward()
    loss_fn.remove()
    return (loss_sum / n).detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                                     if p.requires_grad}


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_kernels_match_the_library_forward_and_backward(model_type, packing):
    base = _base(model_type)
    method = MethodConfig(dropout=0.0)
    ref = prepare_model(copy.deepcopy(base), method, FP32,
                        TrainConfig(cpu_kernels="off", packing=packing), 64)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_B" in name:  # non-zero, so every LoRA gradient is
                p.normal_(0.0, 0.05)
    kern = prepare_model(base, method, FP32, TrainConfig(cpu_kernels="auto", packing=packing), 64)
    kern.load_state_dict(ref.state_dict())
    # The kernels are really in place (else the comparison below would be vacuous).
    fused = sum(isinstance(m, FusedLoraLinear) for m in kern.modules())
    assert fused == 7 * SIZES["num_hidden_layers"]
    assert not any(isinstance(m, FusedLoraLinear) for m in ref.modules())
    norms, mlps = lean_classes(model_type)
    lean = sum("forward" in vars(m) for m in kern.modules())
    assert lean == sum(isinstance(m, norms + mlps) for m in kern.modules())
    assert (lean > 0) == (model_type != "gemma3_text")  # Gemma's norm and MLP are not Llama's
    if packing:
        assert (attention_of(kern), attention_of(ref)) == (CPU_ATTENTION, ATTENTION)
    items = _items([11, 30, 7, 19])
    batch = collate_packed(items) if packing else collate(items, 0)
    want_loss, want = _loss_and_grads(ref, batch)
    got_loss, got = _loss_and_grads(kern, batch)
    assert torch.allclose(got_loss, want_loss, rtol=1e-5), (got_loss, want_loss)
    assert want.keys() == got.keys() and len(want) == 2 * fused
    for name, g in want.items():
        rel = ((got[name] - g).norm() / g.norm()).item()
        assert rel < 1e-4, f"{model_type} {name}: relative error {rel:.2e}"


def test_kernels_only_on_cpu_for_listed_architectures_and_auto():
    assert cpu_kernels("llama", FP32, "auto") is not None
    assert cpu_kernels("llama", FP32, "off") is None
    assert cpu_kernels("llama", Placement("cuda", "bf16"), "auto") is None
    assert cpu_kernels("gpt2", FP32, "auto") is None  # not on the allow-list: plain peft


def _capture_models(monkeypatch) -> list:
    from tuneloop.train import recipe

    seen, real = [], recipe.prepare_model

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(recipe, "prepare_model", spy)
    return seen


def _losses(run) -> list[float]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r] + [r["val_loss"] for r in recs if "val_loss" in r]


@pytest.mark.parametrize(("dtype", "rel"), [("fp32", 1e-6), ("bf16", 4e-3)])
def test_off_trains_stock_peft_and_matches_auto(tiny_project, monkeypatch, dtype, rel):
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    from tuneloop.train.recipe import train

    seen = _capture_models(monkeypatch)
    common = ["train.max_steps=4", "train.eval_every=2", "method.dropout=0", f"model.dtype={dtype}",
              "train.packing=true"]
    off_run, _ = train(load_config(tiny_project, common + ["train.cpu_kernels=off", "output.name=plain"]),
                       quiet=True)
    off = seen[-1]
    layers = [m for m in off.modules() if isinstance(m, PeftLoraLinear)]
    assert layers and all(type(m) is PeftLoraLinear for m in layers)  # peft's own class
    inner = list(off.modules())[1:]  # the top module's forward is Accelerate's autocast wrapper
    assert not any(isinstance(m, FastDropout) or "forward" in vars(m) for m in inner)
    assert attention_of(off) == ATTENTION  # packing's per-example sdpa, autograd's backward
    assert all(p.dtype == torch.float32 for p in off.parameters())  # no frozen-weight cast
    auto_run, _ = train(load_config(tiny_project, common + ["output.name=auto"]), quiet=True)
    auto = seen[-1]
    assert any(isinstance(m, FusedLoraLinear) for m in auto.modules())
    assert attention_of(auto) == CPU_ATTENTION
    assert _losses(auto_run) == pytest.approx(_losses(off_run), rel=rel)
