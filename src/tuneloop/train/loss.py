"""Causal-LM loss that sends only target positions through the LM head.

In chat SFT most positions are prompt (system turn, question) whose labels are masked; a
49k-token vocabulary makes the head and its fp32 logits the largest single cost of a small
model. So the loss runs the decoder body, keeps the hidden states whose next-token label is a
target, and projects those in row chunks with a fused cross-entropy: the gradient with respect
to the hidden states (and the head, when it trains) is computed chunk by chunk in the forward
pass, so no (rows x vocab) logits tensor outlives its chunk, in the forward or the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneloop.models.load import causal_lm
from tuneloop.models.tokens import IGNORE

CHUNK_ROWS = 256  # rows x 49k vocab x 4 bytes = 50 MB per chunk at most


class _FusedLinearCE(torch.autograd.Function):
    """sum_i CE(h_i @ W.T, y_i), with gradients computed during the forward pass."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int):
        need_w = weight.requires_grad
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        total = h.new_zeros((), dtype=torch.float32)
        for s in range(0, h.shape[0], chunk):
            hc, yc = h[s:s + chunk], targets[s:s + chunk]
            logits = (hc @ weight.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum()
            # d(CE)/d(logits) = softmax - onehot, built in place over the logits buffer
            g = logits.sub_(lse[:, None]).exp_()
            g[torch.arange(len(yc), device=g.device), yc] -= 1.0
            g = g.to(h.dtype)
            grad_h[s:s + chunk] = g @ weight
            if need_w:
                grad_w += (g.T @ hc).float()
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_h, grad_w if need_w else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gw = None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype)
        return grad_h * grad_out, gw, None, None


def fused_linear_ce(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Summed cross-entropy of `h @ weight.T` against `targets`, chunked over rows."""
    if h.shape[0] == 0:
        return h.sum() * 0.0 + weight.sum() * 0.0  # keeps the graph connected for DDP
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _FusedLinearCE.apply(h, weight, targets, chunk)
    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], chunk):
        logits = (h[s:s + chunk] @ weight.T).float()
        total += F.cross_entropy(logits, targets[s:s + chunk], reduction="sum")
    return total


def token_nll(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Per-row cross-entropy, no gradient (validation details and tests)."""
    with torch.no_grad():
        return torch.cat([F.cross_entropy((h[s:s + chunk] @ weight.T).float(), targets[s:s + chunk],
                                          reduction="none")
                          for s in range(0, h.shape[0], chunk)] or [h.new_zeros(0)])


def selective_ok(model) -> bool:
    """True where the body/head split applies (not prefix/prompt tuning, which rewrite inputs)."""
    return not getattr(model, "peft_config", None) or not any(
        getattr(c, "is_prompt_learning", False) for c in model.peft_config.values())


class TargetLoss:
    """Computes (summed NLL, target count) for a batch; call with the (maybe DDP) model."""

    def __init__(self, unwrapped, chunk: int = CHUNK_ROWS):
        self.selective = selective_ok(unwrapped)
        self.chunk = chunk
        self._hidden: list[torch.Tensor] = []
        self._armed = False
        self._handle = None
        if self.selective:
            lm = causal_lm(unwrapped)
            self.head = lm.get_output_embeddings()
            # A hook, not a direct body call: the forward must go through the DDP wrapper so
            # gradient synchronisation still happens. The handle is kept: `remove` detaches it.
            self._handle = lm.get_decoder().register_forward_hook(self._capture)

    def remove(self) -> None:
        """Detach the hook from the decoder (the model is then as it was before)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _capture(self, module, args, output) -> None:
        if self._armed:  # other callers of the model (generation) keep nothing here
            self._hidden.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    def hidden_and_targets(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states at target positions and their next-token labels."""
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        self._hidden.clear()
        self._armed = True
        try:
            # logits_to_keep=[] makes the model's own head project zero positions
            model(**inputs, use_cache=False,
                  logits_to_keep=torch.empty(0, dtype=torch.long, device=labels.device))
        finally:
            self._armed = False
        hidden = self._hidden.pop()
        self._hidden.clear()
        shifted = labels[:, 1:]
        keep = shifted != IGNORE
        return hidden[:, :-1][keep], shifted[keep]

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of token NLL over targets, number of targets) for one micro-batch."""
        n = (batch["labels"][:, 1:] != IGNORE).sum()
        if not self.selective:
            out = model(**batch)
            return out.loss.float() * n, n
        h, y = self.hidden_and_targets(model, batch)
        return fused_linear_ce(h, self._weight(), y, self.chunk), n

    def _weight(self) -> torch.Tensor:
        w = self.head.weight
        # FSDP2 shards parameters as DTensors; the head is used whole, outside the forward.
        return w.full_tensor() if hasattr(w, "full_tensor") else w

    def per_token(self, model, batch: dict) -> torch.Tensor:
        """NLL of every target token, in row-major position order (no gradient)."""
        with torch.no_grad():
            h, y = self.hidden_and_targets(model, batch)
            return token_nll(h, self._weight(), y, self.chunk)
