"""Reordered-weight linears (models.prepack): the same outputs as nn.Linear, gradients through
nn.Linear, a weight changed in place followed, and peft adapters still applied on top."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneloop.models.inference import for_inference
from tuneloop.models.load import Placement
from tuneloop.models.prepack import available, prepack_linears

pytestmark = pytest.mark.skipif(not available(), reason="this torch has no oneDNN linear")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from tuneloop.models.load import load_model

    return load_model(str(tiny_model)).eval()


def _ids() -> torch.Tensor:
    return torch.tensor([[5, 9, 17, 3, 44, 8], [7, 7, 2, 90, 12, 6]])


def _reordered(model) -> int:
    return sum(hasattr(m, "_reordered") for m in model.modules())


@torch.no_grad()
def test_same_logits_through_reordered_weights(tiny):
    packed = copy.deepcopy(tiny)
    n = prepack_linears(packed)
    linears = sum(type(m) is torch.nn.Linear for m in tiny.modules())
    assert n == linears > 0
    assert torch.allclose(packed(_ids()).logits, tiny(_ids()).logits, atol=1e-5)
    assert _reordered(packed) == n  # every layer ran the reordered path


def test_gradients_go_through_nn_linear(tiny):
    packed = copy.deepcopy(tiny)
    prepack_linears(packed)
    plain = copy.deepcopy(tiny)
    for m in (packed, plain):
        m.lm_head.weight.requires_grad_(True)
        m(_ids()).logits.square().mean().backward()
    assert _reordered(packed) == 0  # nothing was reordered for a pass that needs gradients
    assert torch.allclose(packed.lm_head.weight.grad, plain.lm_head.weight.grad, atol=1e-6)


@torch.no_grad()
def test_a_weight_changed_in_place_is_reordered_again(tiny):
    packed = copy.deepcopy(tiny)
    prepack_linears(packed)
    before = packed(_ids()).logits
    layer = packed.model.layers[0].mlp.down_proj
    layer.weight.mul_(3.0)  # in place: same storage, new version
    changed = packed(_ids()).logits
    reference = copy.deepcopy(tiny)
    reference.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    assert not torch.allclose(changed, before, atol=1e-4)
    assert torch.allclose(changed, reference(_ids()).logits, atol=1e-5)


@torch.no_grad()
def test_an_adapter_loaded_later_still_applies(tiny):
    from peft import LoraConfig, get_peft_model

    def with_adapter(model):
        torch.manual_seed(0)
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
        return peft.eval()

    base = copy.deepcopy(tiny)
    prepack_linears(base)  # as the server does: the base first, adapters over it later
    packed = with_adapter(base)
    plain = with_adapter(copy.deepcopy(tiny))
    out = packed(input_ids=_ids()).logits
    assert torch.allclose(out, plain(input_ids=_ids()).logits, atol=1e-5)
    assert not torch.allclose(out, tiny(_ids()).logits, atol=1e-3)  # the adapter changed it
    q = packed.get_base_model().model.layers[0].self_attn.q_proj
    assert hasattr(q.base_layer, "_reordered")  # under the adapter, the base ran reordered


def test_only_fp32_cpu_placements_are_reordered(tiny, monkeypatch):
    for placement, expect in ((Placement("cpu", "bf16"), False), (Placement("cpu", "fp32"), True)):
        model = for_inference(copy.deepcopy(tiny), placement)
        assert ("forward" in vars(model.lm_head)) is expect
    # Not when the copy would not fit in a quarter of the memory available.
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 1000})())
    model = for_inference(copy.deepcopy(tiny), Placement("cpu", "fp32"))
    assert "forward" not in vars(model.lm_head)
