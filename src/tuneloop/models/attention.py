"""Attention implementations tuneloop switches a model to, through transformers' own registry.

`gqa_sdpa` is sdpa for inference on a CPU with grouped-query attention. transformers' sdpa
copies every key and value head `num_key_value_groups` times (repeat_kv) before calling
torch's kernel whenever a mask is present on a CPU, although torch's CPU kernel takes grouped
heads as they are (`enable_gqa`). For the short queries of scoring and serving (a label's
tokens, a prompt's remainder) against a long cached prefix, that copy is most of the cost:
measured on SmolLM2-135M's shapes (9 query heads, 3 key/value heads), 2 cores, fp32,
64 rows x 5 queries x 730 keys took 82 ms with the copy and 12 ms without; with 140 queries
the gain is 10%. Training keeps repeat_kv: with gradients torch's grouped backward measured
10-50% slower, so calls that need them go to transformers' sdpa unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.torch_version import TorchVersion

from tuneloop.models.load import causal_lm

GQA_SDPA = "tuneloop_gqa_sdpa"


def attention_of(model) -> str | None:
    """The model's attention implementation (transformers offers no public getter for it)."""
    return causal_lm(model).config._attn_implementation


def set_attention(model, name: str, fn: Callable) -> None:
    """Register `fn` as transformers attention `name` and switch `model` to it.

    Through transformers' own hooks: AttentionInterface.register (an idempotent registry entry,
    made when a caller asks for it, never at import) and set_attn_implementation.
    """
    # why: transformers loads with the model, not with this module (the CLI's start stays light)
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(name, fn)
    # The masks are sdpa's: the new function reads them as sdpa does.
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    causal_lm(model).set_attn_implementation(name)


def gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0,
             scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' sdpa, except that a masked call without gradients on a CPU hands torch
    the grouped key/value heads as they are (enable_gqa) instead of copies of them.

    Signature of a transformers attention function: query/key/value are (batch, heads, length,
    head_dim); returns (batch, length, heads, head_dim) and no weights.
    """
    # why: as in set_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if groups == 1 or attention_mask is None or query.shape[2] == 1 or dropout \
            or query.device.type != "cpu" or torch.is_grad_enabled() \
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
        # One query token is already grouped by transformers (pack_gqa); an absent mask is a
        # causal prefill transformers runs with is_causal.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def use_gqa_sdpa(model) -> bool:
    """Switch a CPU model on plain sdpa with grouped key/value heads to gqa_sdpa (for
    inference; calls with gradients behave as before). False where nothing changes."""
    base = causal_lm(model)
    cfg = base.config
    heads, kv_heads = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    if attention_of(model) != "sdpa" or not heads or not kv_heads or heads == kv_heads \
            or getattr(cfg, "attn_logit_softcapping", None) or base.device.type != "cpu" \
            or TorchVersion(torch.__version__) < (2, 5):  # enable_gqa came with torch 2.5
        return False
    set_attention(model, GQA_SDPA, gqa_sdpa)
    return True
