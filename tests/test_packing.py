"""Packed rows isolate examples: each example's loss is what it is when batched alone."""

import torch

from tuneloop.config import MethodConfig
from tuneloop.models.tokens import IGNORE, Encoded
from tuneloop.train.batches import collate
from tuneloop.train.loss import TargetLoss
from tuneloop.train.methods import wrap
from tuneloop.train.packing import ATTENTION, attention_of, collate_packed, use_packed_attention


def _items(vocab: int, lengths: list[int]) -> list[Encoded]:
    g = torch.Generator().manual_seed(3)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        labels = [IGNORE] * (n // 2) + ids[n // 2:]  # prompt, then targets
        out.append(Encoded(ids, labels, False))
    return out


def test_packed_and_unpacked_give_the_same_per_example_loss(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = wrap(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                 MethodConfig(dropout=0.0))
    model.eval()
    items = _items(model.config.vocab_size, [11, 30, 7, 19, 24, 5])
    loss = TargetLoss(model)
    alone = torch.cat([loss.per_token(model, collate([e], 0)) for e in items])
    packed = collate_packed(items)
    assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for e in items))
    # Both ways of isolating the examples agree with running each alone: the model's own sdpa
    # (a block-diagonal mask built from the restarting position_ids) and packed_sdpa (one
    # causal attention per example, from cu_seq_lens_q).
    assert torch.allclose(loss.per_token(model, packed), alone, atol=1e-4)
    assert use_packed_attention(model, 64) and attention_of(model) == ATTENTION
    assert torch.allclose(loss.per_token(model, packed), alone, atol=1e-4)
    # Unpacked calls on the switched model still get their masks: a left-padded row (as in
    # generation) gives the example's own loss only if the padding is masked out.
    e = items[2]
    pad = 5
    left = {"input_ids": torch.tensor([[0] * pad + e.input_ids]),
            "labels": torch.tensor([[IGNORE] * pad + e.labels]),
            "attention_mask": torch.tensor([[0] * pad + [1] * len(e.input_ids)]),
            "position_ids": torch.tensor([[0] * pad + list(range(len(e.input_ids)))])}
    assert torch.allclose(loss.per_token(model, left), loss.per_token(model, collate([e], 0)), atol=1e-4)
    # Without isolation (one long sequence) later examples would see earlier ones.
    mixed = {k: v for k, v in packed.items() if k != "cu_seq_lens_q"}
    mixed["position_ids"] = torch.arange(packed["input_ids"].shape[1])[None]
    assert not torch.allclose(loss.per_token(model, mixed), alone, atol=1e-3)


def test_packed_training_gradients_match_unpacked(tiny_model):
    """The backward pass is isolated too: same LoRA gradients packed or one example at a time."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = wrap(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                 MethodConfig(dropout=0.0))
    use_packed_attention(model, 64)
    items = _items(model.config.vocab_size, [9, 21, 14])
    loss = TargetLoss(model)

    def grads(batches):
        model.zero_grad()
        for b in batches:
            loss(model, b)[0].backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    assert torch.allclose(grads([collate_packed(items)]), grads([collate([e], 0) for e in items]),
                          atol=1e-5)


def test_packing_leaves_no_padding():
    items = _items(50, [10, 60, 12, 55, 8, 40, 30, 25])
    padded = collate(items, 0)
    packed = collate_packed(items)
    real = sum(len(e.input_ids) for e in items)
    assert packed["input_ids"].numel() == real < padded["input_ids"].numel()
    assert int((packed["labels"] != IGNORE).sum()) == sum(e.n_targets for e in items)
