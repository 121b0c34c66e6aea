"""FastDropout behaves as inverted dropout: right drop rate, unbiased, seeded, off in eval."""

import pytest
import torch

from tuneloop.config import MethodConfig
from tuneloop.train.cpu.dropout import FastDropout, keep_mask
from tuneloop.train.cpu.fused_lora import LORA_LAYERS, FusedLoraLinear
from tuneloop.train.methods import wrap


def test_drop_rate_scale_and_unbiased_mean():
    d = FastDropout(0.05).train()
    x = torch.ones(400, 1000)
    y = d(x)
    dropped = (y == 0).float().mean().item()
    # 400k independent draws: the standard error of the rate is ~3.4e-4.
    assert abs(dropped - 0.05) < 0.002
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - d.p)))
    assert abs(y.mean().item() - 1.0) < 0.003
    # Every 16-bit lane of each 64-bit draw is used: no position pattern in what gets dropped.
    lanes = (y == 0).float().view(-1, 4).mean(0)
    assert torch.all((lanes - 0.05).abs() < 0.004), lanes


def test_seeded_eval_identity_and_gradient():
    d = FastDropout(0.3).train()
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(1)
    a = d(x)
    torch.manual_seed(1)
    assert torch.equal(a, d(x))  # the global torch seed reproduces the mask
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0).float() / (1 - d.p))  # gradient only where kept
    assert d.eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        FastDropout(1.0)


def test_autocast_applies_mask_in_compute_dtype():
    d = FastDropout(0.1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert d(torch.randn(8, 8)).dtype == torch.bfloat16


def test_fused_lora_layers_build_fast_dropout(tiny_model):
    """peft builds FusedLoraLinear through its dispatch; each adapter's dropout is FastDropout."""
    from transformers import AutoModelForCausalLM

    model = wrap(AutoModelForCausalLM.from_pretrained(tiny_model), MethodConfig(dropout=0.1), LORA_LAYERS)
    layers = [m for m in model.modules() if isinstance(m, FusedLoraLinear)]
    drops = [m for m in model.modules() if isinstance(m, FastDropout)]
    assert layers and len(drops) == len(layers)
    assert all(d.p == pytest.approx(0.1, abs=1 / 65536) for d in drops)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    none = wrap(AutoModelForCausalLM.from_pretrained(tiny_model), MethodConfig(dropout=0.0), LORA_LAYERS)
    assert not any(isinstance(m, FastDropout) for m in none.modules())


@pytest.mark.parametrize("levels", [1, 3277, 65535])
def test_keep_mask_is_zero_one_at_the_exact_rate(levels):
    torch.manual_seed(0)
    keep = keep_mask((512, 1024), levels, torch.bfloat16)
    assert keep.dtype == torch.bfloat16 and set(keep.unique().tolist()) <= {0, 1}
    p = levels / 65536
    dropped = 1 - keep.float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / keep.numel()) ** 0.5 + 1e-6  # within 5 standard errors
