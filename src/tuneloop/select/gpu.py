"""Extrapolate a candidate's LoRA training cost from this machine to common GPUs.

A first-order model, stated so it can be checked: training FLOPs are 2 (forward) + 2
(activation gradients) = 4 x params per token for adapter methods, whose frozen weights need no
weight gradients, and 6 x params for full fine-tuning; time = FLOPs / (peak bf16 tensor FLOP/s
x an assumed MFU). Memory = bf16 weights + 16 bytes per trainable parameter (fp32 master,
gradient, two Adam moments) + activations of the longest batch (per layer about 34 bytes per
token per hidden unit, bf16, no recomputation) + logits (bf16 plus fp32 softmax and its
gradient) + 1 GiB CUDA context. Small models reach low MFU, so treat the minutes as a lower
bound within a factor of about two.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float
    bf16_tflops: float  # dense tensor-core peak, fp32 accumulate (vendor spec sheets)


GPUS = (GPU("RTX 4090 24GB", 24.0, 165.2), GPU("A100 80GB", 80.0, 312.0))
ASSUMED_MFU = 0.2
CUDA_CONTEXT_GB = 1.0


def train_flops(params: int, tokens: int, full: bool = False) -> float:
    """FLOPs of one pass of training over `tokens` tokens."""
    return (6 if full else 4) * params * tokens


def gpu_memory_gb(params: int, trainable: int, arch: dict, batch: int, seq: int) -> float:
    """Estimated peak training memory on a CUDA GPU in bf16, GB (2**30 bytes)."""
    layers, hidden, vocab = arch.get("layers") or 0, arch.get("hidden") or 0, arch.get("vocab") or 0
    weights = 2 * params
    optimiser = 16 * trainable
    activations = 34 * batch * seq * hidden * layers
    logits = (2 + 4 + 4) * batch * seq * vocab
    return (weights + optimiser + activations + logits) / 2**30 + CUDA_CONTEXT_GB


def extrapolate(params: int, trainable: int, arch: dict, planned_tokens: int, batch: int,
                seq: int, full: bool = False, mfu: float = ASSUMED_MFU) -> list[dict]:
    """Estimated minutes and memory of the planned run on each GPU of the table."""
    flops = train_flops(params, planned_tokens, full)
    mem = gpu_memory_gb(params, trainable, arch, batch, seq)
    return [{"gpu": g.name, "estimated_train_minutes": round(flops / (g.bf16_tflops * 1e12 * mfu)
                                                             / 60, 3),
             "estimated_memory_gb": round(mem, 2), "fits": mem <= g.memory_gb}
            for g in GPUS]


def achieved_tflops(params: int, tokens_per_s: float, full: bool = False) -> float:
    """Training TFLOP/s this machine reached in the measured steps (same FLOP model)."""
    return train_flops(params, 1, full) * tokens_per_s / 1e12


ASSUMPTIONS = (f"GPU figures: training FLOPs = 4 x params x tokens (LoRA; 6 x for full), at "
               f"{ASSUMED_MFU:.0%} of peak bf16 tensor FLOP/s "
               + ", ".join(f"{g.name}: {g.bf16_tflops:g} TFLOP/s" for g in GPUS)
               + "; memory = bf16 weights + 16 B/trainable param + activations (34 B x batch x "
                 "seq x hidden x layers) + logits (10 B x batch x seq x vocab) + 1 GB context")
