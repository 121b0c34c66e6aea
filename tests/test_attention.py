"""gqa_sdpa on a tiny random model with grouped heads (4 query, 2 key/value): the same numbers
as transformers' sdpa, the grouped kernel only where it is meant to run."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneloop.models.attention import GQA_SDPA, attention_of, use_gqa_sdpa
from tuneloop.models.generate import pad_batch, positions


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from tuneloop.models.load import load_model

    return load_model(str(tiny_model)).eval()


@pytest.fixture
def grouped_calls(monkeypatch):
    """Every torch sdpa call's enable_gqa flag."""
    calls: list[bool] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(bool(k.get("enable_gqa")))
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def _continue(model, cache_rows: list[list[int]], more: list[list[int]]) -> torch.Tensor:
    """Left-padded prompts, then a few more tokens per row on their KV cache: the logits of
    the second call (short queries, long keys, a mask: the case gqa_sdpa is for)."""
    ids, attn = pad_batch(cache_rows, 0, "left")
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=True)
    nxt = torch.tensor(more)
    attn2 = torch.cat([attn, torch.ones_like(nxt)], dim=1)
    pos = positions(attn2)[:, -nxt.shape[1]:]
    return model(input_ids=nxt, attention_mask=attn2, position_ids=pos,
                 past_key_values=out.past_key_values).logits


def test_same_logits_as_sdpa_through_the_grouped_kernel(tiny, grouped_calls):
    prompts = [[5, 9, 13, 7, 22, 31, 8], [4, 4, 17]]
    more = [[11, 12, 40], [6, 7, 8]]
    with torch.no_grad():
        ref = _continue(tiny, prompts, more)
        assert not any(grouped_calls)
        fast = copy.deepcopy(tiny)
        assert use_gqa_sdpa(fast) and attention_of(fast) == GQA_SDPA
        grouped_calls.clear()
        out = _continue(fast, prompts, more)
    assert any(grouped_calls)  # the masked short-query pass ran grouped
    assert torch.allclose(out, ref, atol=1e-5)
    # A padded row's masked slots must stay masked: its logits equal the row run alone.
    with torch.no_grad():
        alone = _continue(fast, prompts[1:], more[1:])
    assert torch.allclose(out[1], alone[0], atol=1e-4)


def test_calls_with_gradients_keep_transformers_sdpa(tiny, grouped_calls):
    fast = copy.deepcopy(tiny)
    use_gqa_sdpa(fast)
    ids = torch.tensor([[5, 9, 13, 7], [4, 4, 17, 2]])
    attn = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    loss = fast(input_ids=ids, attention_mask=attn).logits.sum()
    loss.backward()
    assert grouped_calls and not any(grouped_calls)
    ref = tiny(input_ids=ids, attention_mask=attn).logits.sum()
    assert torch.allclose(loss, ref, atol=1e-4)


def test_models_without_grouped_heads_are_left_alone(tiny):
    plain = copy.deepcopy(tiny)
    plain.config.num_key_value_heads = plain.config.num_attention_heads
    assert not use_gqa_sdpa(plain) and attention_of(plain) == "sdpa"
    eager = copy.deepcopy(tiny)
    eager.set_attn_implementation("eager")
    assert not use_gqa_sdpa(eager)


def test_a_torch_without_grouped_sdpa_keeps_transformers_sdpa(tiny, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.4.1+cpu")
    model = copy.deepcopy(tiny)
    assert not use_gqa_sdpa(model) and attention_of(model) == "sdpa"
