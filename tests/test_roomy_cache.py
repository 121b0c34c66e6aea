"""A cache with room to grow decodes exactly as transformers' DynamicCache does."""

from __future__ import annotations

import pytest
import torch

from tuneloop.models.generate import decode, detached, pad_batch, positions
from tuneloop.models.roomy_cache import with_room


@pytest.fixture(scope="module")
def tiny(learnable_model):
    from tuneloop.models.load import load_model

    return load_model(str(learnable_model)).eval()


@torch.no_grad()
def _prompt_pass(model):
    ids, attn = pad_batch([[5, 9, 13, 7, 22, 31, 8], [4, 4, 17], [30, 2]], 0, "left")
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=True)
    return out.logits[:, -1], out.past_key_values, attn, positions(attn)[:, -1:] + 1


@torch.no_grad()
def test_decoding_with_room_equals_the_growing_cache_and_leaves_the_prompt_cache(tiny, monkeypatch):
    logits, cache, attn, pos = _prompt_pass(tiny)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    # Reference: decode on transformers' own cache (torch.cat at every step).
    import tuneloop.models.generate as gen

    monkeypatch.setattr(gen, "with_room", lambda c, extra: c)
    ref = decode(tiny, logits, detached(cache), attn, pos, 0, [-1], 12)
    monkeypatch.undo()
    out = decode(tiny, logits, cache, attn, pos, 0, [-1], 12)
    assert torch.equal(out, ref) and out.shape == (3, 12)
    assert len(set(out[0].tolist())) > 1  # the model says more than one token: a real check
    for layer, (k, v) in zip(cache.layers, before, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


@torch.no_grad()
def test_a_full_buffer_grows_and_rows_can_still_be_selected(tiny):
    _, cache, _, _ = _prompt_pass(tiny)
    roomy = with_room(cache, 2)
    layer = roomy.layers[0]
    n = layer.keys.shape[-2]
    k = torch.randn(3, layer.keys.shape[1], 5, layer.keys.shape[-1])
    keys, _ = layer.update(k, k.clone())  # 5 new tokens, room for 2: the buffer grows
    assert keys.shape[-2] == n + 5 and torch.equal(keys[..., n:, :], k)
    assert torch.equal(keys[..., :n, :], cache.layers[0].keys)
    layer.batch_select_indices(torch.tensor([2, 0]))  # replaces the views
    keys, _ = layer.update(k[:2, :, :1], k[:2, :, :1])
    assert keys.shape[:1] == (2,) and keys.shape[-2] == n + 6
    assert torch.equal(keys[0, :, n:n + 5], k[2]) and torch.equal(keys[:, :, -1], k[:2, :, 0])
