"""Padding-free prompt prefill: a batch's prompts run as one packed sequence.

A left-padded batch costs its longest prompt times its rows. The server's batches mix
whatever clients sent (prompts of 35 and 79 tokens in one batch are common), so up to half
of a padded prefill can be padding. Packed, every real token runs once: the rows'
remainders are concatenated into one sequence, a block-diagonal causal mask keeps each row
to its own tokens (and the shared prefix), and each row keeps the positions it would have
had alone. The KV cache is then laid out as the padded path lays it out ([prefix | pad |
row], left-padded), so decoding and scoring continue as before.

Only for models whose every layer attends to all earlier tokens through SDPA: a custom 4D
mask goes to the attention as it is, and a sliding-window layer would need its own.
"""

from __future__ import annotations

import torch

from tuneloop.models.attention import GQA_SDPA
from tuneloop.models.load import causal_lm


def packable(model) -> bool:
    """Whether this model's prefill can run packed (full attention in every layer, SDPA)."""
    cfg = getattr(causal_lm(model), "config", None)
    if cfg is None or getattr(cfg, "_attn_implementation", None) not in ("sdpa", GQA_SDPA):
        return False
    if set(getattr(cfg, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
        return False
    return getattr(cfg, "sliding_window", None) is None or getattr(cfg, "use_sliding_window", True) is False


def padding_share(lengths: list[int]) -> float:
    """The fraction of a left-padded batch of these lengths that would be padding."""
    total = len(lengths) * max(lengths, default=0)
    return 1 - sum(lengths) / total if total else 0.0


def packed_prefill(model, rests: list[list[int]], shared: int, dev, cache, cache_kw: str):
    """Run the rows' remainders (after `shared` prefix tokens whose batch-1 KV cache is
    `cache`, or none when shared is 0) as one sequence.

    Returns what the padded prefill returns: each row's last logits (b, 1, V), the cache laid
    out per row ([prefix | left padding | row]), the matching 0/1 attention mask and each
    row's next position.
    """
    b = len(rests)
    lens = torch.tensor([len(r) for r in rests])
    starts = lens.cumsum(0) - lens
    total = int(lens.sum())
    seg = torch.repeat_interleave(torch.arange(b), lens)  # the row of each packed token
    local = torch.arange(total) - starts[seg]  # its position within its row's remainder
    own = (seg[:, None] == seg[None, :]) & (local[None, :] <= local[:, None])
    mask = torch.cat([torch.ones(total, shared, dtype=torch.bool), own], dim=1)[None, None]
    ids = torch.tensor([[t for r in rests for t in r]])
    extra = {cache_kw: cache} if cache is not None else {}
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                position_ids=(shared + local)[None].to(dev), use_cache=True,
                logits_to_keep=(starts + lens - 1).to(dev), **extra)
    cache = getattr(out, "cache", None) or out.past_key_values
    # Slot c of row r (width W) holds the row's token c - (W - len) or, before it, padding
    # (any real key: the attention mask hides it).
    width = int(lens.max())
    col = torch.arange(width)[None]
    real = col >= (width - lens)[:, None]
    src = shared + torch.where(real, starts[:, None] + col - (width - lens)[:, None], 0)
    index = torch.cat([torch.arange(shared).expand(b, shared), src], dim=1).to(dev)
    for layer in cache.layers:  # (1, heads, S, d) -> (b, heads, shared + W, d)
        layer.keys = layer.keys[0][:, index].transpose(0, 1).contiguous()
        layer.values = layer.values[0][:, index].transpose(0, 1).contiguous()
    attn = torch.cat([torch.ones(b, shared, dtype=torch.long), real.long()], dim=1).to(dev)
    return out.logits[0][:, None].float(), cache, attn, (shared + lens)[:, None].to(dev)
