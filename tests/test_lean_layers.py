"""The lean RMSNorm and SwiGLU give transformers' own results, forward and backward."""

import copy

import pytest
import torch

from tuneloop.config import MethodConfig
from tuneloop.train.cpu.lean_layers import use_lean_layers
from tuneloop.train.cpu.prepare import frozen_to_compute_dtype
from tuneloop.train.methods import wrap


def _llama_classes():
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    return (LlamaRMSNorm,), (LlamaMLP,)


@pytest.mark.parametrize(("bf16", "tol"), [(False, 1e-6), (True, 1e-2)])
def test_lean_model_matches_transformers(tiny_model, bf16, tol):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ref = wrap(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
               MethodConfig(dropout=0.0))
    for name, p in ref.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
        if "norm" in name:  # non-trivial norm weights, so their use in the backward is checked
            torch.nn.init.normal_(p, mean=1.0, std=0.3)
    if bf16:
        frozen_to_compute_dtype(ref, "bf16")
    lean = copy.deepcopy(ref)
    layers = lean.config.num_hidden_layers
    # 2 norms and 1 MLP per layer, and the final norm
    assert use_lean_layers(lean, *_llama_classes()) == 3 * layers + 1
    ids = torch.randint(3, ref.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))

    def run(model):
        model.train().zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]

    want_loss, want = run(ref)
    got_loss, got = run(lean)
    assert abs(got_loss - want_loss) <= tol * abs(want_loss)
    for a, b in zip(got, want, strict=True):
        assert ((a - b).norm() / b.norm()).item() < tol


def test_eval_and_trainable_norms_use_the_model_forward(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    use_lean_layers(model, *_llama_classes())
    norm = model.model.norm
    x = torch.randn(2, 5, norm.weight.shape[0], requires_grad=True)
    # Full fine-tuning trains the norm weight: the model's forward must give it a gradient.
    norm.train()(x).sum().backward()
    assert norm.weight.grad is not None
    with torch.no_grad():
        assert torch.equal(norm.eval()(x), type(norm).forward(norm, x))


def test_only_the_given_classes_are_routed(tiny_model):
    """Layers are matched by class: a model without those classes is left as it is."""
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert use_lean_layers(model, (Qwen2RMSNorm,), (Qwen2MLP,)) == 0
    assert not any("forward" in vars(m) for m in model.modules())
