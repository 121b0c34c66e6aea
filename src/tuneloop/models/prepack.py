"""Inference in fp32 on a CPU: frozen linear weights reordered once for oneDNN.

torch's nn.Linear on a CPU hands MKL the weight transposed at every call. oneDNN with the
weight reordered once into its blocked layout (what torch.compile's weight freezing does on
CPU, here without compiling) is faster for the same result: measured on SmolLM2-135M's
shapes, 2 cores, fp32, ~1.1x for prompt batches of 2,000 tokens and 1.4-3x for the 8-row
matrix products of decoding (benchmarks/serve_load.py, benchmarks/eval_wall.py quote the
end-to-end effect). torch.compile itself would cost minutes of compiling per model here.

Only for processes that do not train: the reordered copy costs one more copy of the weights
(540 MB for SmolLM2-135M), and a call that needs gradients, runs under autocast or gets
another dtype goes through nn.Linear as before. A weight changed in place (an adapter merged
into it) is reordered again at its next call: the copy is keyed by the tensor's storage and
version counter.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def available() -> bool:
    """Whether this torch has oneDNN's reordered-weight linear (CPU builds with mkldnn)."""
    ops = getattr(torch.ops, "mkldnn", None)
    return torch.backends.mkldnn.is_available() and ops is not None and \
        hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")


def prepack_linears(model) -> int:
    """Route every fp32 CPU nn.Linear of `model` through a reordered weight (for inference
    without gradients; other calls keep nn.Linear). Returns how many layers it covers.

    The module stays an nn.Linear, so peft can still wrap it (adapters loaded later)."""
    if not available():
        return 0
    n = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if type(module) is torch.nn.Linear and w is not None and w.device.type == "cpu" \
                and w.dtype == torch.float32:
            module.forward = types.MethodType(_forward, module)
            n += 1
    return n


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = self.weight
    if (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) or \
            x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return F.linear(x, w, self.bias)
    key = (w.data_ptr(), w._version)
    if getattr(self, "_reordered_key", None) != key:
        self._reordered = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
        self._reordered_key = key
    bias = None if self.bias is None else self.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, self._reordered, bias, "none", [], "")


def linear_bytes(model) -> int:
    """Bytes of the model's nn.Linear weights (what prepack_linears copies)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if type(m) is torch.nn.Linear)
