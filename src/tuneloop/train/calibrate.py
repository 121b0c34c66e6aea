"""Machine calibration for cost estimates: one short micro-benchmark, cached per machine.

`tuneloop train --dry-run` predicts step time and peak memory without loading or stepping the
real model: step FLOPs come from the model's config and the planned batch shapes, divided by
the training FLOP rate this machine reached on the same architecture with random weights
(built from config.json, two micro-batch sizes, a few seconds); peak
memory is baseline + weights + trainable state + activations, where activation bytes are
counted exactly by running the real architecture on PyTorch's meta device (no data, no
compute) and scaled by the ratio of real to counted bytes seen in the same micro-benchmark.
The probe runs in a fresh process (a clean RSS) and its result is cached under
tuneloop_home()/calibration.json, keyed by CPU/GPU, threads, torch version, precision and the
architecture's sizes.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time

import psutil
import torch

from tuneloop.config import MethodConfig, TrainConfig
from tuneloop.files import atomic_write_text
from tuneloop.models.cpu import cpu_kind
from tuneloop.models.load import Placement, tuneloop_home
from tuneloop.train.loss import CHUNK_ROWS, TargetLoss
from tuneloop.train.methods import count_parameters, wrap
from tuneloop.train.step import accelerator_for, optimizer_for, prepare_model, train_step

# Import note: transformers (and peft under it) load inside functions. Importing peft writes
# os.environ (TORCHINDUCTOR_CACHE_DIR), and importing a tuneloop module must change nothing
# process-wide.

# 10: the LM head's chunk apart from the activation factor; 9: mean of 3 steps; 8: train_step
# (clipping, Accelerate autocast); 7: the real architecture
VERSION = 10
PROBE_ROWS, PROBE_WIDTH = (2, 8), 128  # two batch sizes; half of each row is a target
PROBE_STEPS = 3  # timed steps per batch size, after one that warms up


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def machine_key(placement: Placement) -> str:
    """What the calibration depends on: the chip, threads, torch and the compute precision."""
    # The kind (tuneloop.models.cpu) too: an ISA-capped run is another machine for the kernels.
    chip = torch.cuda.get_device_name() if placement.device == "cuda" else \
        f"{_cpu_name()} [{cpu_kind()}]"
    return f"v{VERSION}|{chip}|threads={torch.get_num_threads()}|torch={torch.__version__}|" \
           f"{placement.device}|{placement.precision}"


def model_sizes(config) -> dict[str, int]:
    """Matmul parameter counts of a decoder-only config: body, LM head, layers, widths."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    return {"body": layers * per_layer, "head": config.vocab_size * h, "layers": layers, "hidden": h,
            "attn_width": q}


def step_flops(sizes: dict[str, int], full: bool, lora: int, positions: int, width: float,
               targets: int) -> float:
    """FLOPs of one forward+backward over `positions` (rows of `width`), head on `targets`."""
    attn = 4 * sizes["layers"] * sizes["attn_width"] * width  # QK^T and AV per position
    if full:
        return positions * (6 * sizes["body"] + 3 * attn) + 6 * sizes["head"] * targets
    # Frozen base: no weight gradients, only input gradients (2N); the adapter trains (6N).
    return positions * (4 * sizes["body"] + 3 * attn + 6 * lora) + 4 * sizes["head"] * targets


def head_chunk_bytes(vocab: int, targets: int, half: bool) -> int:
    """Peak bytes of the loss's LM-head chunk (train/loss.py): up to CHUNK_ROWS target rows of
    vocabulary-wide logits, alive at once with the saved activations, once the body has run.

    Per element: fp32 logits and logsumexp's temporary of the same size (8 bytes); under bf16
    autocast also the bf16 logits and the bf16 copy of their gradient, not all alive at once
    (10 bytes, on the high side). With a 262k vocabulary that is 0.5-0.7 GB, which scaling the
    body's activations by one calibrated factor had spread over every batch size alike.
    """
    return min(targets, CHUNK_ROWS) * vocab * (10 if half else 8)


def saved_activation_bytes(model, rows: int, width: int) -> int:
    """Activation bytes autograd saves for backward in one forward, counted on the meta device.

    Saved tensors include weights (kept for input gradients); counting `rows` and `2*rows`
    and taking the difference leaves only what grows with the batch. Leaving out attention maps
    (the fused kernels keep none), that grows linearly with the tokens, so it is counted at a
    short width that no dimension of the model equals, where an attention map is the only
    (.., w, w) tensor, and scaled to `width`. (Counted at `width` itself, a width equal to the
    hidden or MLP size had those activations taken for attention maps and left out.)
    """
    w = _count_width(model.config)
    return round((_saved_bytes(model, 2 * rows, w) - _saved_bytes(model, rows, w)) * width / w)


def _count_width(config) -> int:
    """A sequence length that no size of `config` equals."""
    sizes = {getattr(config, k, None) for k in ("hidden_size", "intermediate_size", "head_dim",
                                                "num_attention_heads", "num_key_value_heads")}
    return next(w for w in (13, 17, 19, 23, 29, 31, 37) if w not in sizes)


def _saved_bytes(model, rows: int, width: int) -> int:
    total = 0

    def pack(t):
        nonlocal total
        # (.., width, width) tensors are attention maps of the decomposed sdpa that meta
        # tensors take; the fused CPU/CUDA kernels keep only the output and a logsumexp.
        if not (t.dim() >= 2 and t.shape[-1] == width and t.shape[-2] == width):
            total += t.numel() * t.element_size()
        return t

    ids = torch.zeros(rows, width, dtype=torch.long, device="meta")
    # A ready 4D mask skips transformers' data-dependent mask checks, which meta tensors refuse.
    mask = torch.ones(rows, 1, width, width, dtype=torch.bool, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask, use_cache=False,
              logits_to_keep=torch.empty(0, dtype=torch.long, device="meta"))
    return total


def meta_model(config, method):
    """The real architecture with the method attached, on the meta device (no memory, instant)."""
    from transformers import AutoModelForCausalLM  # why: see the module's import note

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = wrap(model, method.model_copy(update={"init_adapter": None}))
    model.train()
    return model


def _rss() -> int:
    return psutil.Process().memory_info().rss


def probe(device: str, precision: str, model_path: str, kernels: str = "auto") -> dict:
    """The micro-benchmark itself (run in a fresh process): FLOP rate, per-step overhead, memory.

    Two batch sizes separate the FLOP rate from a per-step cost that does not grow with the
    tokens (the per-op cost of thousands of small kernels, the optimizer). The probe is the
    real architecture (random weights from its config.json, nothing loaded): a small stand-in
    Llama had underpredicted the bundled model's steps by 23-28%. Its model is set up, and each
    step run, by train/step.py, exactly as the training recipe does (`kernels`: train.cpu_kernels).
    """
    from transformers import AutoConfig, AutoModelForCausalLM  # why: the module's import note

    base_rss = _rss()
    placement = Placement(device, precision)
    acc = accelerator_for(placement)
    config = AutoConfig.from_pretrained(model_path)
    sizes = model_sizes(config)
    train = TrainConfig(cpu_kernels=kernels)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).to(device)
    model = prepare_model(base, MethodConfig(), placement, train, PROBE_WIDTH)
    loss = TargetLoss(model)
    trainable, total = count_parameters(model)
    model, opt = acc.prepare(model, optimizer_for(model, train))
    model.train()
    init_rss = _rss()
    g = torch.Generator().manual_seed(0)
    points = []
    most_targets = 0
    for rows in PROBE_ROWS:
        width = PROBE_WIDTH
        ids = torch.randint(0, config.vocab_size, (rows, width), generator=g)
        labels = ids.clone()
        labels[:, : width // 2] = -100
        batch = {"input_ids": ids.to(device), "labels": labels.to(device)}
        times = []
        for i in range(1 + PROBE_STEPS):
            t = time.perf_counter()
            train_step(model, loss, [batch], opt, None, acc, train.max_grad_norm)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first step allocates and warms up
                times.append(time.perf_counter() - t)
        targets = int((labels[:, 1:] != -100).sum())
        most_targets = max(most_targets, targets)
        flops = step_flops(sizes, False, trainable, rows * width, width, targets)
        # The mean, not the fastest: the prediction is of a run's mean step, and the fastest
        # of a few steps is the luckiest (predicted 12-23% low, every config, both models).
        points.append((flops, sum(times) / len(times)))
    loss.remove()
    (f1, t1), (f2, t2) = points
    rate = (f2 - f1) / (t2 - t1) if t2 > t1 else f2 / t2
    per_param = (t1 - f1 / rate) / total if rate > 0 else -1.0
    # On a loaded machine the two-point fit is noisy; trust it only when the fixed cost it
    # finds is plausible (under half the small step), else fall back to one point.
    if rate <= 0 or per_param < 0 or per_param * total > 0.5 * t1:
        rate, per_param = f2 / t2, 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    counted = saved_activation_bytes(meta_model(config, MethodConfig()), PROBE_ROWS[-1], PROBE_WIDTH)
    head = head_chunk_bytes(config.vocab_size, most_targets, precision in ("bf16", "fp16"))
    return {"base_rss": base_rss, "flops_per_s": rate, "seconds_per_param": per_param,
            "activation_factor": max(0.2, (peak - init_rss - head) / counted)}


def _arch_key(model_path: str) -> str:
    """The sizes of an architecture that its step cost depends on."""
    from transformers import AutoConfig  # why: see the module's import note

    c = AutoConfig.from_pretrained(model_path)
    sizes = model_sizes(c)
    return f"{c.model_type}:{sizes['layers']}x{sizes['hidden']}:v{c.vocab_size}:{sizes['body']}"


def calibration_key(placement: Placement, model_path: str, kernels: str = "auto") -> str:
    """The cache key: this machine, the architecture and train.cpu_kernels."""
    return f"{machine_key(placement)}|{_arch_key(model_path)}|kernels={kernels}"


def calibration(placement: Placement, model_path: str, refresh: bool = False,
                kernels: str = "auto") -> dict:
    """This machine's calibration for this architecture, measured once (seconds), then cached."""
    path = tuneloop_home() / "calibration.json"
    key = calibration_key(placement, model_path, kernels)
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key in cache and not refresh:
        return cache[key] | {"cached": True}
    code = ("import json, sys; from tuneloop.train.calibrate import probe; "
            f"print(json.dumps(probe({placement.device!r}, {placement.precision!r}, "
            f"{model_path!r}, {kernels!r})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cal = json.loads(res.stdout.strip().splitlines()[-1])
    cache = json.loads(path.read_text()) if path.exists() else {}  # another process may have written
    cache[key] = cal
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cache, indent=1))
    return cal | {"cached": False}
