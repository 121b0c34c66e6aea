"""The one switch for the CPU training kernels: `train.cpu_kernels` (auto | off).

CUDA loads the frozen base in bf16 already, and its fused kernels make small ops cheap. On CPU,
with `auto` and an architecture on ARCHITECTURES, training differs from plain peft +
transformers in four ways, all attached here or by peft's own dispatch:

* peft builds each LoRA projection as FusedLoraLinear: one autograd node with a cheaper
  dropout mask (cpu/fused_lora.py, cpu/dropout.py);
* frozen weights are stored in the compute dtype (a bf16 residual stream);
* RMSNorm and SwiGLU keep less for the backward (cpu/lean_layers.py);
* packed rows get their own attention backward (cpu/packed_attention.py).

With `off`, on another device, or for an architecture not on the list, none of that happens.
Every listed architecture has a parity test of these kernels against the library's own forward
and backward (tests/test_cpu_kernels.py); one without a test leaves the list.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

import torch

from tuneloop.models.attention import attention_of, set_attention
from tuneloop.models.load import compute_dtype
from tuneloop.train.cpu.lean_layers import use_lean_layers
from tuneloop.train.cpu.packed_attention import CPU_ATTENTION, packed_sdpa_cpu
from tuneloop.train.packing import ATTENTION

# model_type -> the RMSNorm and MLP classes whose forward is exactly Llama's (the lean ones
# apply to those). Gemma 3's norm scales by 1 + weight and its MLP is GELU: no lean layers.
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


def lean_classes(model_type: str) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(norm classes, MLP classes) of `model_type` that the lean layers replace."""
    # Imported here: each modeling module costs import time that only CPU training needs.
    if model_type == "llama":
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

        return (LlamaRMSNorm,), (LlamaMLP,)
    if model_type == "mistral":
        from transformers.models.mistral.modeling_mistral import MistralMLP, MistralRMSNorm

        return (MistralRMSNorm,), (MistralMLP,)
    if model_type == "qwen2":
        from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

        return (Qwen2RMSNorm,), (Qwen2MLP,)
    if model_type == "qwen3":
        from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm

        return (Qwen3RMSNorm,), (Qwen3MLP,)
    return (), ()


@dataclass(frozen=True)
class CpuKernels:
    """The CPU kernels for one run: peft's LoRA layer classes, and what `attach` adds after."""

    model_type: str
    precision: str

    @property
    def lora_layers(self) -> dict[type, type]:
        """peft's custom-layer dispatch: target class -> LoRA layer class."""
        # why: FusedLoraLinear subclasses peft's layer, and importing peft writes os.environ
        # (TORCHINDUCTOR_CACHE_DIR); peft loads here, when a model is wrapped, not on import.
        from tuneloop.train.cpu.fused_lora import LORA_LAYERS

        return LORA_LAYERS

    def attach(self, model) -> dict[str, int]:
        """After the method is attached: frozen weights in the compute dtype, lean layers, packed backward."""
        norms, mlps = lean_classes(self.model_type)
        counts = {"cast": frozen_to_compute_dtype(model, self.precision),
                  "lean": use_lean_layers(model, norms, mlps)}
        if attention_of(model) == ATTENTION:
            set_attention(model, CPU_ATTENTION, packed_sdpa_cpu)
        return counts


def cpu_kernels(model_type: str, placement, setting: str) -> CpuKernels | None:
    """The kernels this run trains with, or None for plain peft + transformers."""
    if setting == "off" or placement.device != "cpu" or model_type not in ARCHITECTURES:
        return None
    return CpuKernels(model_type, placement.precision)


def frozen_to_compute_dtype(model, precision: str) -> int:
    """Store every frozen weight in the bf16/fp16 compute dtype; returns how many were cast.

    Under autocast a matmul casts its fp32 weight to bf16 on every call, and the cast is only
    cached for weights that train, so a frozen base pays a full copy of itself per step and
    keeps fp32 weights it never updates. Frozen norms and embeddings go too: the embedding then
    yields bf16 hidden states, so the whole residual stream runs in bf16 and no layer casts its
    fp32 input again before each of its 7 projections (and their LoRA branches). Measured on the
    bundled model this took a LoRA step from about 175 to 235 tokens/s and cut saved
    activations; RMSNorm still normalises in fp32 internally, and validation loss matched the
    fp32-residual run within 1% (benchmarks/train_throughput.py). Trainable weights stay fp32
    (autocast computes with them in bf16, the optimizer updates fp32 masters).
    """
    dtype = compute_dtype(precision)
    if dtype is None:
        return 0
    cast = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(dtype)
            cast += 1
    return cast


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_freed_memory() -> None:
    """Hand the step's freed activation memory back to the OS (glibc's malloc_trim).

    glibc keeps freed blocks for reuse, and a step's activations of ever-changing sizes (packed
    rows differ every step) fragment its heap, so the process's RSS kept growing for many steps
    above the live peak: 4.3 GB where the step needed about 2.5. Trimming after each optimizer
    step keeps RSS near the step's own peak, measured at about 0.2 s per call (~3% of a step).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
