"""Which kind of CPU this is: it decides the compute dtype, and every speed figure names it.

bf16 autocast pays only where the CPU multiplies bf16 in hardware (AMX or avx512_bf16): there
it runs 2-3x faster than fp32. Elsewhere PyTorch emulates it, hundreds of times slower, so fp32
is the path that runs. The flags in /proc/cpuinfo say what the chip has; PyTorch's and
oneDNN's own ISA caps (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2) say what the kernels
may use. A capped chip behaves as the cap says, which is how an AVX2-only machine is measured
on a newer one (the benchmarks report `isa_capped`).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is unreadable, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@cache
def isa_capped() -> bool:
    """True when PyTorch's or oneDNN's kernels are held below AVX-512 by their env variables."""
    import torch  # why: this module is imported at CLI start; torch only when asked

    capability = torch.backends.cpu.get_cpu_capability()  # honours ATEN_CPU_CAPABILITY
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    below_avx512 = not onednn.startswith(("AVX512", "AMX", "ALL", "DEFAULT"))
    return capability in ("DEFAULT", "AVX2", "ZVECTOR", "VSX") or below_avx512


@cache
def cpu_kind() -> str:
    """amx | avx512_bf16 | avx512 | avx2-only | other, as the kernels will see it."""
    flags = cpu_flags()
    if not isa_capped():
        if "amx_bf16" in flags:
            return "amx"
        if "avx512_bf16" in flags:
            return "avx512_bf16"
        if "avx512f" in flags:
            return "avx512"
    return "avx2-only" if "avx2" in flags else "other"


def cpu_has_bf16() -> bool:
    """AMX or avx512_bf16 usable: bf16 matmuls run several times faster than fp32 there."""
    return cpu_kind() in ("amx", "avx512_bf16")
