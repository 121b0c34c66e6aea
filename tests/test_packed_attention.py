"""The CPU packed attention's own backward gives autograd's gradients through torch's kernel."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from tuneloop.train.cpu.packed_attention import packed_causal_attention


def _reference(q, k, v, bounds):
    """One causal sdpa per example, keys repeated for grouped-query attention, autograd through it."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True)
                      for s, e in itertools.pairwise(bounds) if e > s], 2).transpose(1, 2)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gradients_match_autograd_through_sdpa(dtype, tol):
    g = torch.Generator().manual_seed(0)
    bounds = [0, 7, 7, 40, 41, 90]  # an empty example and a one-token one included
    length = bounds[-1]
    q, k, v = (torch.randn(1, h, length, 16, generator=g) for h in (6, 2, 2))  # 3 query heads per kv head
    grad = torch.randn(1, length, 6, 16, generator=g)

    def run(fn, *x, dtype=dtype):
        x = [t.detach().to(dtype).requires_grad_() for t in x]
        out = fn(*x)
        out.backward(grad.to(dtype))
        return [out.float()] + [t.grad.float() for t in x]

    # The reference is always fp32, so bf16 is checked against exact math, not against itself.
    want = run(lambda *x: _reference(*x, bounds), q, k, v, dtype=torch.float32)
    got = run(lambda *x: packed_causal_attention(*x, bounds, None), q, k, v)
    for name, a, b in zip(("output", "dq", "dk", "dv"), got, want, strict=True):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < tol, f"{name}: relative error {rel:.2e} (dtype {dtype})"
