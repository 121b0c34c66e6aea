"""RMSNorm and SwiGLU that keep less for the backward pass, for CPU training.

Counted with autograd's saved-tensor hooks on the bundled model (one 1,279-token packed
micro-batch), the two largest activation stores outside the LoRA layers were:

* RMSNorm: transformers upcasts the bf16 residual stream to fp32 and autograd keeps that fp32
  copy, 2 per layer, 169 MB. `RMSNorm` keeps the bf16 input and the per-token 1/rms instead
  and redoes the upcast in the backward: half the bytes, and the same fp32 arithmetic.
* SwiGLU `act(gate) * up`: autograd keeps gate (for SiLU's gradient) and both factors of the
  product, 3 tensors of intermediate size per layer, 337 MB. `SwiGLU` keeps gate and up and
  recomputes silu(gate) in the backward (one cheap element-wise pass): a third less.

Both are exact reformulations (same dtypes, same formulas), checked against the transformers
modules in tests/test_lean_layers.py and tests/test_cpu_kernels.py. They apply to the classes an
architecture lists in cpu/prepare.py (those whose forward is exactly Llama's), only in training
with frozen norm weights; everything else runs the model's own forward.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class RMSNorm(torch.autograd.Function):
    """weight * (x / rms(x)) computed in fp32 and cast back, as transformers' LlamaRMSNorm."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, rstd, weight = ctx.saved_tensors
        normed = x.float() * rstd
        g = (grad_out * weight).to(x.dtype).float()  # the gradient reaching normed.to(x.dtype)
        grad_x = rstd * (g - normed * (g * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), None, None


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up, keeping gate and up only."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad_out):
        gate, up = ctx.saved_tensors
        grad_up = grad_out * F.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad_out * up, gate)
        return grad_gate, grad_up


def _training(module) -> bool:
    return module.training and torch.is_grad_enabled()


def _norm_forward(self, x):
    if not _training(self) or self.weight.requires_grad:
        return type(self).forward(self, x)
    return RMSNorm.apply(x, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    if not _training(self):
        return type(self).forward(self, x)
    return self.down_proj(SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def use_lean_layers(model, norms: Sequence[type], mlps: Sequence[type]) -> int:
    """Route the model's `norms` and SiLU `mlps` (instances of those classes) through the lean versions.

    Returns how many modules now take the lean path. The forward is bound on each instance, not
    patched on the class, so other models of the same class are untouched.
    """
    swapped = 0
    for module in model.modules():
        if isinstance(module, tuple(norms)) and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_norm_forward, module)
            swapped += 1
        elif (isinstance(module, tuple(mlps))
              and getattr(getattr(module, "config", None), "hidden_act", None) == "silu"):
            module.forward = types.MethodType(_mlp_forward, module)
            swapped += 1
    return swapped
