"""The target-only fused loss equals the model's own loss, gradients included."""

import pytest
import torch

from tuneloop.config import MethodConfig
from tuneloop.models.tokens import IGNORE
from tuneloop.train.loss import TargetLoss, fused_linear_ce
from tuneloop.train.methods import wrap


def _model(tiny_model, method="lora"):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return wrap(base, MethodConfig(name=method, dropout=0.0))


def _batch(vocab: int, rows: int = 3, width: int = 17):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, width), generator=g)
    labels = ids.clone()
    labels[:, :7] = IGNORE  # a prompt
    labels[1, 12:] = IGNORE  # padding
    attn = torch.ones_like(ids)
    attn[1, 12:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_target_loss_matches_naive_loss_and_gradients(tiny_model, method):
    model = _model(tiny_model, method)
    batch = _batch(model.config.vocab_size)
    naive = model(**batch).loss
    naive.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    total, n = TargetLoss(model, chunk=5)(model, batch)  # a tiny chunk exercises the loop
    (total / n).backward()
    got = _grads(model)
    assert float((total / n).detach()) == pytest.approx(float(naive.detach()), abs=1e-5)
    assert want.keys() == got.keys() and want
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-5, rtol=1e-4), k


def test_prompt_tuning_falls_back_to_the_model_loss(tiny_model):
    model = _model(tiny_model, "prompt")
    loss = TargetLoss(model)
    assert not loss.selective
    batch = _batch(model.config.vocab_size)
    total, n = loss(model, batch)
    assert float((total / n).detach()) == pytest.approx(float(model(**batch).loss.detach()), abs=1e-6)


def test_fused_ce_without_grad_and_with_no_targets():
    torch.manual_seed(0)
    h, w = torch.randn(9, 8), torch.randn(30, 8)
    y = torch.randint(0, 30, (9,))
    ref = torch.nn.functional.cross_entropy(h @ w.T, y, reduction="sum")
    assert float(fused_linear_ce(h, w, y, chunk=4)) == pytest.approx(float(ref), rel=1e-5)
    empty = fused_linear_ce(h[:0].requires_grad_(), w, y[:0])
    assert float(empty) == 0.0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    model = _model(tiny_model)
    model.train()
    batch = _batch(model.config.vocab_size)
    loss = TargetLoss(model)
    total, n = loss(model, batch)
    (total / n).backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    total, n = loss(model, batch)
    (total / n).backward()
    got = _grads(model)
    assert want.keys() == got.keys() and want
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
