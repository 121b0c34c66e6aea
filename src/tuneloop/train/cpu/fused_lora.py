"""One autograd node per LoRA projection for CPU training, instead of about ten.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate modules: on a bf16
residual stream it first copies x to fp32 (the adapter weights' dtype), autocast copies it back,
dropout draws a mask and writes a scaled copy, and each of those steps is an autograd node that
keeps its own input. A LoRA step on all linear layers of a 30-layer model runs that 210 times
forward and again backward, and profiled on the bundled model the copies, masks and small
element-wise kernels around the adapters were a sixth of the step.

`LoraLinear` does the same arithmetic in one node: the base matmul, a keep mask, the rank-r
product, and the update added in place (the 1/(1-p) dropout scale folded into the rank-r
scaling, where it costs r instead of in_features per token). It keeps only x (which q, k and
v, or gate and up, share), the keep mask and the rank-r product, so saved activations
shrink too. Adapter weights stay fp32 masters and are used in the compute dtype, as autocast
would; their gradients come back in fp32. The masks are FastDropout's (cpu/dropout.py), from
the same seeded generator.

Only plain single-adapter LoRA on a frozen `nn.Linear` in training takes this path;
evaluation, generation, DoRA, a trained base weight or bias, merged or disabled adapters and
mixed-adapter batches run peft's own forward.

`FusedLoraLinear` is attached through peft's custom-layer dispatch
(`LoraConfig._register_custom_module`, peft's documented experimental API): peft itself builds
it for every `nn.Linear` target, so no module is swapped after the fact.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from tuneloop.train.cpu.dropout import LEVELS, FastDropout, drop_levels, keep_mask


class LoraLinear(torch.autograd.Function):
    """y = x W^T + b + alpha * (dropped(x) A^T) B^T, with alpha = scaling / (1 - p)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, alpha: float, levels: int):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
        out = torch.nn.functional.linear(x2, w, None if bias is None else bias.to(dtype))
        keep = keep_mask(x2.shape, levels, dtype, x.device) if levels else None
        xd = x2 if keep is None else x2 * keep
        h = xd @ a.t()
        out.addmm_(h, b.t(), alpha=alpha)
        ctx.save_for_backward(x2, w, a, b, h, keep)
        ctx.alpha, ctx.in_shape, ctx.in_dtype = alpha, x.shape, x.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x2, w, a, b, h, keep = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(x2.dtype)
        gh = (g @ b).mul_(ctx.alpha)  # gradient at the rank-r product h
        grad_b = torch.mm(g.t(), h).mul_(ctx.alpha)
        xd = x2 if keep is None else x2 * keep
        grad_a = torch.mm(gh.t(), xd)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, w)
            if keep is None:
                grad_x.addmm_(gh, a)
            else:
                grad_x.addcmul_(gh @ a, keep)  # the adapter's share, where the input was kept
            grad_x = grad_x.view(ctx.in_shape).to(ctx.in_dtype)
        return grad_x, None, None, grad_a.float(), grad_b.float(), None, None


class FusedLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear, trained through LoraLinear with FastDropout masks where it allows."""

    def update_layer(self, adapter_name, *args, **kwargs):
        """peft's update_layer, then the adapter's dropout becomes FastDropout (same p, cheaper masks)."""
        super().update_layer(adapter_name, *args, **kwargs)
        drop = self.lora_dropout[adapter_name]
        if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
            self.lora_dropout[adapter_name] = FastDropout(drop.p)

    def forward(self, x, *args, **kwargs):
        """peft's forward, through LoraLinear when the layer allows it."""
        adapters = self.active_adapters
        if (args or kwargs or not self.training or not torch.is_grad_enabled()
                or x.device.type != "cpu" or self.merged or self.disable_adapters
                or len(adapters) != 1 or self.fan_in_fan_out):
            return super().forward(x, *args, **kwargs)
        name, base = adapters[0], self.base_layer
        trains_base = base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)
        if (trains_base or name not in self.lora_A or name in self.lora_variant
                or self.lora_B[name].bias is not None):
            return super().forward(x, *args, **kwargs)
        levels = drop_levels(getattr(self.lora_dropout[name], "p", 0.0))
        alpha = self.scaling[name] / (1.0 - levels / LEVELS)
        return LoraLinear.apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                self.lora_B[name].weight, alpha, levels)


LORA_LAYERS = {torch.nn.Linear: FusedLoraLinear}  # peft's dispatch: target class -> LoRA layer class
