"""Prompt prefill on a tiny random model: the packed path and a kept prefix cache give what the
padded path gives, and leave the caches they reuse as they were."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tuneloop.models import generate as gen
from tuneloop.models.generate import decode, greedy_ids, pad_batch, positions, prefill, prefix_cache
from tuneloop.models.packed import packable, padding_share
from tuneloop.models.tokens import encode_prompt
from tuneloop.records import Message


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from tuneloop.models.load import load_model, load_tokenizer
    from tuneloop.models.tokens import ensure_template

    tok = load_tokenizer(str(tiny_model))
    ensure_template(tok)
    return load_model(str(tiny_model)).eval(), tok


def _ragged(tok) -> list[list[int]]:
    """Chat prompts of very different lengths (a padded batch would be mostly padding)."""
    texts = ["hi", "where is my card " * 6, "ok 3", "exchange rate please " * 3, "x"]
    return [encode_prompt(tok, [Message("user", t)]) for t in texts]


def _full_logits(model, seqs: list[list[int]]) -> torch.Tensor:
    """Reference: each prompt alone, no cache; its last position's logits."""
    return torch.cat([model(input_ids=torch.tensor([s])).logits[:, -1] for s in seqs])


@torch.no_grad()
def test_packed_prefill_equals_each_prompt_alone_and_decodes_the_same(tiny, monkeypatch):
    model, tok = tiny
    seqs = _ragged(tok)
    shared = gen.common_prefix_len(seqs)
    assert shared > 0 and padding_share([len(s) - shared for s in seqs]) > gen.PACK_MIN_PADDING
    calls = []
    real = gen.packed_prefill
    monkeypatch.setattr(gen, "packed_prefill", lambda *a, **k: calls.append(1) or real(*a, **k))
    logits, cache, attn, nxt = prefill(model, seqs, shared, tok.pad_token_id, "cpu")
    assert calls == [1]  # the packed path ran
    assert torch.allclose(logits[:, -1], _full_logits(model, seqs), atol=1e-4)
    # The cache and mask are laid out as the padded path lays them out: decoding continues alike.
    monkeypatch.setattr(gen, "PACK_MIN_PADDING", 1.0)
    p_logits, p_cache, p_attn, p_nxt = prefill(model, seqs, shared, tok.pad_token_id, "cpu")
    assert calls == [1]  # padded this time
    assert torch.equal(attn, p_attn) and torch.equal(nxt, p_nxt)
    assert torch.equal(nxt[:, 0], torch.tensor([len(s) for s in seqs]))
    for a, b in zip(cache.layers, p_cache.layers, strict=True):
        assert a.keys.shape == b.keys.shape
        real_slots = attn.bool()  # padding slots hold different (masked) keys
        assert torch.allclose(a.keys.transpose(1, 2)[real_slots], b.keys.transpose(1, 2)[real_slots],
                              atol=1e-4)
    stop = [tok.eos_token_id]
    packed = decode(model, logits[:, -1], cache, attn, nxt, tok.pad_token_id, stop, 6)
    padded = decode(model, p_logits[:, -1], p_cache, p_attn, p_nxt, tok.pad_token_id, stop, 6)
    assert torch.equal(packed, padded)


@torch.no_grad()
def test_packed_prefill_through_a_peft_adapter(tiny, monkeypatch):
    """The server packs batches of adapter versions: peft passes the mask, positions and
    logits_to_keep through to the base model."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    torch.manual_seed(0)
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False)).eval()
    seqs = _ragged(tok)
    shared = gen.common_prefix_len(seqs)
    calls = []
    real = gen.packed_prefill
    monkeypatch.setattr(gen, "packed_prefill", lambda *a, **k: calls.append(1) or real(*a, **k))
    logits = prefill(peft, seqs, shared, tok.pad_token_id, "cpu")[0]
    assert calls == [1]
    assert torch.allclose(logits[:, -1], _full_logits(peft, seqs), atol=1e-4)
    assert not torch.allclose(logits[:, -1], _full_logits(model, seqs), atol=1e-3)  # adapter on


@torch.no_grad()
def test_a_kept_prefix_cache_is_reused_and_left_as_it_was(tiny):
    model, tok = tiny
    seqs = _ragged(tok)
    shared = gen.common_prefix_len(seqs)
    kept = prefix_cache(model, seqs[0][:shared], "cpu")
    before = [(layer.keys.clone(), layer.values.clone()) for layer in kept.layers]
    for rows in (seqs, seqs[:1], seqs[1:3]):  # packed, a lone row, padded
        with_kept = greedy_ids(model, rows, shared, tok.pad_token_id, "cpu", [tok.eos_token_id], 5,
                               prefix=kept)
        fresh = greedy_ids(model, rows, shared, tok.pad_token_id, "cpu", [tok.eos_token_id], 5)
        assert torch.equal(with_kept, fresh)
    for layer, (k, v) in zip(kept.layers, before, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


@torch.no_grad()
def test_padded_and_packed_agree_without_a_shared_prefix(tiny):
    model, tok = tiny
    seqs = [[5, 6, 7], list(range(10, 40)), [8, 9]]  # nothing shared: shared = 0
    logits, cache, attn, nxt = prefill(model, seqs, 0, tok.pad_token_id, "cpu")
    ids, mask = pad_batch(seqs, tok.pad_token_id, "left")
    assert torch.equal(attn, mask)
    assert torch.equal(nxt[:, 0], positions(mask)[:, -1] + 1)
    assert torch.allclose(logits[:, -1], _full_logits(model, seqs), atol=1e-4)


def test_packing_only_where_every_layer_sees_every_earlier_token():
    def model(**cfg):
        return SimpleNamespace(config=SimpleNamespace(**{"_attn_implementation": "sdpa", **cfg}))

    assert packable(model())
    assert packable(model(layer_types=["full_attention"] * 2, sliding_window=None))
    assert not packable(model(layer_types=["sliding_attention", "full_attention"], sliding_window=512))
    assert not packable(model(sliding_window=4096))  # Mistral-style: every layer slides
    assert packable(model(sliding_window=4096, use_sliding_window=False))  # Qwen2: off
    assert not packable(model(_attn_implementation="eager"))  # would add a bool mask to scores
    assert padding_share([3, 3]) == 0 and padding_share([1, 3]) == pytest.approx(1 / 3)
