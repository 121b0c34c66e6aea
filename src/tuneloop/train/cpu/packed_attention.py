"""Causal attention over packed examples for CPU training, with a cheaper backward.

torch's CPU flash-attention kernel is fast forward but slow backward: measured on the bundled
model's shapes (9 query heads, 3 key/value heads, 64 dims, bf16), its backward took 6.6 ms for a
300-token example against 2.4 ms forward, about a fifth of a whole LoRA step. Here the forward
stays torch's flash kernel (nothing of size length^2 is kept), and the backward recomputes each
example's probabilities and applies the textbook softmax-attention gradient with batched
matmuls: 4.2 ms for the same example (benchmarks/train_throughput.py shows the whole step).

Grouped-query attention without copying keys: the query heads that share a key/value head are
stacked along the row axis, so one (kv_heads, group*length, head_dim) batched matmul serves the
group, and key/value gradients sum over the group inside the matmul.

Numerics match eager bf16 attention (scores and probabilities in bf16, softmax computed in
fp32 internally); gradients agree with autograd through torch's own kernel within bf16 noise,
checked in tests/test_packed_attention.py and, inside whole models, tests/test_cpu_kernels.py.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F

from tuneloop.train.packing import attend_packed

CPU_ATTENTION = "tuneloop_packed_sdpa_cpu"


@functools.lru_cache(maxsize=32)
def _causal_bias(n: int, group: int, dtype: torch.dtype) -> torch.Tensor:
    """(group*n, n) additive mask: row r is query position r % n, which sees keys <= it."""
    return torch.full((n, n), float("-inf"), dtype=dtype).triu_(1).repeat(group, 1)


def _spans(bounds: list[int]):
    return ((s, e) for s, e in itertools.pairwise(bounds) if e > s)


class PackedCausalAttention(torch.autograd.Function):
    """q (1, heads, L, d), k/v (1, kv_heads, L, d); examples are [bounds[i], bounds[i+1])."""

    @staticmethod
    def forward(ctx, q, k, v, bounds: list[int], scale: float):
        # Written as (1, L, heads, d): the layout o_proj reads, so the (1, L, heads*d) view
        # that goes on is this very tensor and whatever keeps it for the backward shares it.
        out = torch.empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=q.dtype, device=q.device)
        for s, e in _spans(bounds):
            out[:, s:e] = F.scaled_dot_product_attention(
                q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, scale=scale,
                enable_gqa=True).transpose(1, 2)
        ctx.save_for_backward(q, k, v, out)
        ctx.bounds, ctx.scale = bounds, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out = ctx.saved_tensors
        out, grad_out = out.transpose(1, 2), grad_out.transpose(1, 2)  # as (1, heads, L, d)
        scale = ctx.scale
        heads, kv_heads, d = q.shape[1], k.shape[1], q.shape[3]
        group = heads // kv_heads
        gq, gk, gv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for s, e in _spans(ctx.bounds):
            n = e - s
            rows = (kv_heads, group * n, d)  # query heads of one kv head stacked along rows
            qe = (q[0, :, s:e] * scale).reshape(rows)
            ke, ve = k[0, :, s:e], v[0, :, s:e]
            do = grad_out[0, :, s:e].reshape(rows)
            # Recompute the probabilities P of this example (never stored in the forward).
            p = torch.softmax(torch.baddbmm(_causal_bias(n, group, q.dtype), qe, ke.transpose(1, 2)), -1)
            # dS = P * (dP - rowsum(dO * O)), with dP = dO V^T (the softmax Jacobian, applied).
            delta = (do.float() * out[0, :, s:e].reshape(rows).float()).sum(-1, keepdim=True)
            ds = torch.bmm(do, ve.transpose(1, 2)).sub_(delta.to(q.dtype)).mul_(p)
            gv[0, :, s:e] = torch.bmm(p.transpose(1, 2), do)
            gq[0, :, s:e] = torch.bmm(ds, ke).mul_(scale).view(heads, n, d)
            gk[0, :, s:e] = torch.bmm(ds.transpose(1, 2), qe)  # qe carries the scale already
        return gq, gk, gv, None, None


def packed_causal_attention(query, key, value, bounds: list[int], scale: float | None) -> torch.Tensor:
    """(1, L, heads, d) attention output, each packed example attending only to itself."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return PackedCausalAttention.apply(query, key, value, bounds, scale)


def packed_sdpa_cpu(module, query, key, value, attention_mask, dropout: float = 0.0,
                    scaling: float | None = None, **kwargs):
    """train/packing.py's packed_sdpa, with this file's backward for packed rows on CPU."""
    whole_row = packed_causal_attention if query.device.type == "cpu" else None
    return attend_packed(module, query, key, value, attention_mask, dropout, scaling, kwargs, whole_row)
