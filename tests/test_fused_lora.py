"""The fused LoRA node computes exactly what peft's LoRA layers compute, forward and backward."""

import copy

import pytest
import torch

from tuneloop.config import MethodConfig
from tuneloop.train.cpu.dropout import FastDropout
from tuneloop.train.cpu.fused_lora import LORA_LAYERS, FusedLoraLinear
from tuneloop.train.methods import wrap


def _models(tiny_model, method: MethodConfig, with_fast_dropout: bool = True):
    """Peft's own LoRA model and the same weights in FusedLoraLinear layers (built by peft's dispatch).

    The reference gets FastDropout too (the fused layer draws its masks from the same generator in
    the same order), so dropout runs compare mask for mask.
    """
    from peft.tuners.lora.layer import Linear as PeftLoraLinear
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft = wrap(copy.deepcopy(base), method)
    fused = wrap(base, method, LORA_LAYERS)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # non-zero, so every gradient is
            torch.nn.init.normal_(p, std=0.02)
    fused.load_state_dict(peft.state_dict())
    if with_fast_dropout:
        for m in peft.modules():
            if isinstance(m, PeftLoraLinear):
                for k, d in list(m.lora_dropout.items()):
                    if isinstance(d, torch.nn.Dropout) and d.p > 0:
                        m.lora_dropout[k] = FastDropout(d.p)
    n_lora = sum(isinstance(m, PeftLoraLinear) for m in peft.modules())
    assert sum(isinstance(m, FusedLoraLinear) for m in fused.modules()) == n_lora > 0
    assert not any(isinstance(m, FusedLoraLinear) for m in peft.modules())
    return peft.train(), fused.train()


def _pair(tiny_model, dropout: float):
    """Two copies of one LoRA model, the second fused."""
    return _models(tiny_model, MethodConfig(dropout=dropout))


def _loss_and_grads(model, ids, autocast: bool):
    model.zero_grad()
    torch.manual_seed(7)  # same dropout masks: both draw them in the same order
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("dropout", "autocast", "tol"),
                         [(0.0, False, 1e-5), (0.3, False, 1e-5), (0.1, True, 3e-2)])
def test_fused_matches_peft(tiny_model, dropout, autocast, tol):
    peft, fused = _pair(tiny_model, dropout)
    ids = torch.randint(3, peft.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    want_loss, want = _loss_and_grads(peft, ids, autocast)
    got_loss, got = _loss_and_grads(fused, ids, autocast)
    assert abs(got_loss - want_loss) <= tol * abs(want_loss)
    assert want.keys() == got.keys()
    for name, g in want.items():
        assert got[name].dtype == torch.float32  # fp32 master weights get fp32 gradients
        rel = ((got[name] - g).norm() / g.norm()).item()
        assert rel < tol, f"{name}: relative error {rel:.2e}"


def test_dropout_changes_the_fused_result(tiny_model):
    """The masks are really applied: another seed draws other masks and gives other gradients."""
    _, fused = _pair(tiny_model, 0.3)
    ids = torch.randint(3, fused.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    _, a = _loss_and_grads(fused, ids, False)
    fused.zero_grad()
    torch.manual_seed(99)
    fused(input_ids=ids, labels=ids).loss.backward()
    assert any(not torch.allclose(a[n], p.grad) for n, p in fused.named_parameters() if p.requires_grad)


def test_eval_and_no_grad_use_peft_forward(tiny_model):
    peft, fused = _pair(tiny_model, 0.3)
    ids = torch.randint(3, peft.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(peft.eval()(input_ids=ids).logits, fused.eval()(input_ids=ids).logits)


def test_dora_keeps_peft_forward(tiny_model):
    """DoRA rescales by the weight norm; its layers are left to peft, so training matches peft."""
    dora, fused = _models(tiny_model, MethodConfig(name="dora", dropout=0.0))
    ids = torch.randint(3, dora.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    want_loss, want = _loss_and_grads(dora, ids, False)
    got_loss, got = _loss_and_grads(fused, ids, False)
    assert torch.equal(got_loss, want_loss)
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_trainable_base_bias_keeps_peft_forward(tiny_model):
    """A base layer that trains (here its bias) must get its gradient: peft's forward runs."""
    peft, fused = _pair(tiny_model, 0.0)
    for m in (peft, fused):
        proj = m.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        proj.bias = torch.nn.Parameter(torch.zeros(proj.out_features))
    ids = torch.randint(3, peft.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    want_loss, want = _loss_and_grads(peft, ids, False)
    got_loss, got = _loss_and_grads(fused, ids, False)
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias" in got
    assert all(torch.allclose(got[n], want[n], atol=1e-6) for n in want)


def test_gradient_checkpointing_redraws_the_same_masks(tiny_model):
    """Recomputed layers restore the RNG, so the fused dropout masks and gradients are unchanged."""
    from tuneloop.models.load import Placement
    from tuneloop.train.cpu.prepare import cpu_kernels

    _, fused = _pair(tiny_model, 0.3)
    cpu_kernels("llama", Placement("cpu", "fp32"), "auto").attach(fused)  # and lean norm/MLP
    ids = torch.randint(3, fused.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
    want_loss, want = _loss_and_grads(fused, ids, False)
    fused.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    got_loss, got = _loss_and_grads(fused, ids, False)
    assert torch.allclose(got_loss, want_loss)
    assert all(torch.allclose(got[n], want[n], atol=1e-6) for n in want)
