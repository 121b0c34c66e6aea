"""Packing: a micro-batch's examples laid end to end in one row, each attending only to itself.

The row has no padding at all, so every position the model computes is a real token. Isolation
takes two things. Position ids restart at 0 for every example (RoPE sees each example as if it
were alone). And attention is computed per example: `cu_seq_lens_q` (the cumulative example
lengths, the flash-attention "varlen" convention transformers already passes down to attention)
goes with the batch, and `packed_sdpa` runs one causal scaled-dot-product attention per
example. A block-diagonal mask over the whole row would give the same numbers, but it computes
(and on CPU, runs through a slower masked kernel) the full row-length squared score matrix, of
which only the diagonal blocks are used: measured, attention then took about a quarter of a
LoRA step on the bundled model. With the CPU kernels (train.cpu_kernels) the per-example
attention is one autograd node with a cheaper backward (cpu/packed_attention.py);
flash-attention-2 on CUDA reads the same `cu_seq_lens_q` itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from tuneloop.models.attention import attention_of, set_attention
from tuneloop.models.tokens import IGNORE, Encoded

ATTENTION = "tuneloop_packed_sdpa"


def collate_packed(items: list[Encoded]) -> dict[str, torch.Tensor]:
    """One row holding every example, with per-example position_ids, labels and boundaries."""
    ids, labels, pos, bounds = [], [], [], [0]
    for e in items:
        n = len(e.input_ids)
        ids += e.input_ids
        # The first token is never a target: its "previous token" belongs to another example.
        labels += [IGNORE] + list(e.labels[1:])
        pos += range(n)
        bounds.append(bounds[-1] + n)
    row = lambda x: torch.tensor(x, dtype=torch.long)[None]  # noqa: E731
    return {"input_ids": row(ids), "labels": row(labels), "position_ids": row(pos),
            "cu_seq_lens_q": torch.tensor(bounds, dtype=torch.int32)}


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0,
                scaling: float | None = None, **kwargs):
    """Causal attention per packed example; any other call is plain sdpa with its mask.

    Signature of a transformers attention function: query/key/value are (batch, heads, length,
    head_dim); returns (batch, length, heads, head_dim) and no weights.
    """
    return attend_packed(module, query, key, value, attention_mask, dropout, scaling, kwargs)


def attend_packed(module, query, key, value, attention_mask, dropout, scaling, kwargs,
                  whole_row: Callable | None = None):
    """packed_sdpa's body; `whole_row(q, k, v, bounds, scale)`, if given, attends a packed row at once."""
    # why: transformers' attention modules load with the model, not with this module
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("cu_seq_lens_q", None)
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    b = bounds.tolist()
    if whole_row is not None and not dropout:
        return whole_row(query, key, value, b, scaling), None
    out = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None,
                                  dropout=dropout, scaling=scaling, is_causal=True)[0]
           for s, e in itertools.pairwise(b) if e > s]
    return torch.cat(out, dim=1), None


def use_packed_attention(model, max_len: int) -> bool:
    """Switch the model's attention to `packed_sdpa`; False where it would change the numbers.

    Only models on plain sdpa/eager attention switch; a sliding window shorter than the longest
    example (Gemma 3's local layers) or soft-capped attention scores keep the model's own
    masked attention.
    """
    config = model.config
    window = getattr(config, "sliding_window", None)
    if (attention_of(model) not in ("sdpa", "eager", ATTENTION) or (window and window < max_len)
            or getattr(config, "attn_logit_softcapping", None)):
        return False
    set_attention(model, ATTENTION, packed_sdpa)
    return True
