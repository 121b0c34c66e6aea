"""Packed rows isolate examples: each example's loss is what it is when batched alone."""

import torch

from tuneloop.config import MethodConfig
from tuneloop.models.tokens import IGNORE, Encoded
from tuneloop.train.batches import collate
from tuneloop.train.loss import TargetLoss
from tuneloop.train.methods import wrap
from tuneloop.train.packing import collate_packed, pack_rows


def _items(vocab: int, lengths: list[int]) -> list[Encoded]:
    g = torch.Generator().manual_seed(3)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        labels = [IGNORE] * (n // 2) + ids[n // 2:]  # prompt, then targets
        out.append(Encoded(ids, labels, False))
    return out


def test_pack_rows_respects_the_row_length():
    rows = pack_rows([5, 9, 3, 7, 2, 10], 12)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum([5, 9, 3, 7, 2, 10][i] for i in r) <= 12 for r in rows)
    assert len(rows) == 3  # 10+2, 9+3, 7+5: first-fit decreasing fills every row
    assert pack_rows([20], 12) == [[0]]  # longer than a row: alone, never split


def test_packed_and_unpacked_give_the_same_per_example_loss(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = wrap(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                 MethodConfig(dropout=0.0))
    model.eval()
    items = _items(model.config.vocab_size, [11, 30, 7, 19, 24, 5])
    loss = TargetLoss(model)
    alone = [loss.per_token(model, collate([e], 0)) for e in items]
    packed = collate_packed(items, 0, max_len=48)
    assert packed["input_ids"].shape[0] < len(items)
    flat = loss.per_token(model, packed)
    # Walk the packed rows in the order per_token returns targets (row-major positions).
    rows = pack_rows([len(e.input_ids) for e in items], 48)
    at = 0
    for row in rows:
        for i in row:
            n = len(alone[i])
            assert torch.allclose(flat[at:at + n], alone[i], atol=1e-4), i
            at += n
    assert at == len(flat)
    # Without isolation (one long sequence) later examples would see earlier ones.
    mixed = dict(packed)
    mixed["position_ids"] = torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])
    assert not torch.allclose(loss.per_token(model, mixed), flat, atol=1e-3)


def test_packing_halves_padding_on_varied_lengths():
    items = _items(50, [10, 60, 12, 55, 8, 40, 30, 25])
    padded = collate(items, 0)
    packed = collate_packed(items, 0, max_len=64)
    real = sum(len(e.input_ids) for e in items)
    assert packed["input_ids"].numel() - real < (padded["input_ids"].numel() - real) / 2
    assert int((packed["labels"] != IGNORE).sum()) == sum(e.n_targets for e in items)
