"""The fused LoRA node computes exactly what peft's LoRA layers compute, forward and backward."""

import copy

import pytest
import torch

from tuneloop.config import MethodConfig
from tuneloop.train.cpu.dropout import use_fast_lora_dropout
from tuneloop.train.cpu.fused_lora import use_fused_lora
from tuneloop.train.methods import wrap


def _pair(tiny_model, dropout: float):
    """Two copies of one LoRA model (B made non-zero so every gradient is), the second fused."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft = wrap(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                MethodConfig(dropout=dropout))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    use_fast_lora_dropout(peft)
    fused = copy.deepcopy(peft)
    n_lora = sum(type(m).__name__ == "Linear" and hasattr(m, "lora_A") for m in fused.modules())
    assert use_fused_lora(fused) == n_lora > 0
    return peft.train(), fused.train()


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
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    dora = wrap(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                MethodConfig(name="dora", dropout=0.0))
    fused = copy.deepcopy(dora)
    use_fused_lora(fused)
    ids = torch.randint(3, dora.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    want_loss, want = _loss_and_grads(dora.train(), ids, False)
    got_loss, got = _loss_and_grads(fused.train(), ids, False)
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
    from tuneloop.train.cpu.prepare import prepare_cpu_model

    _, fused = _pair(tiny_model, 0.3)
    prepare_cpu_model(fused, "fp32")  # fused LoRA and lean norm/MLP, as the loop on CPU
    ids = torch.randint(3, fused.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
    want_loss, want = _loss_and_grads(fused, ids, False)
    fused.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    got_loss, got = _loss_and_grads(fused, ids, False)
    assert torch.allclose(got_loss, want_loss)
    assert all(torch.allclose(got[n], want[n], atol=1e-6) for n in want)
