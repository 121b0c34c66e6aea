"""Packing: several examples per row, each attending only to itself.

A micro-batch's examples are placed into rows of at most max_len tokens (first-fit
decreasing), so a step sees exactly the examples it would see unpacked, with far less padding.
Isolation comes from position_ids that restart at 0 for every example: transformers turns a
restart into a block-diagonal causal mask when no attention_mask is given (sdpa and eager on
CPU, varlen kernels with flash-attention on GPU). Padding at the end of a row is one more block
of restarted positions with ignored labels, so nothing real ever attends to it.
"""

from __future__ import annotations

import torch

from tuneloop.models.tokens import IGNORE, Encoded


def pack_rows(lengths: list[int], max_len: int) -> list[list[int]]:
    """Indices grouped into rows of total length <= max_len (first-fit decreasing)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:  # an example longer than max_len still gets a row of its own
            rows.append([i])
            room.append(max_len - n)
    return rows


def collate_packed(items: list[Encoded], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """Packed rows with per-example position_ids and labels; no attention_mask (see module doc)."""
    rows = pack_rows([len(e.input_ids) for e in items], max_len)
    width = max(sum(len(items[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = items[i]
            n = len(e.input_ids)
            ids[r, at:at + n] = torch.tensor(e.input_ids)
            labels[r, at:at + n] = torch.tensor(e.labels)
            # The first token is never a target: its "previous token" belongs to another example.
            labels[r, at] = IGNORE
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def padding_fraction(batch: dict[str, torch.Tensor], real_tokens: int) -> float:
    """Share of the batch's positions that hold no real token."""
    total = batch["input_ids"].numel()
    return 1.0 - real_tokens / max(total, 1)
