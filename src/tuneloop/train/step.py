"""The one training step, the model set-up it runs on, and the validation loss it logs.

The training recipe, the calibration probe (train/calibrate.py) and the select probe
(select/measure.py) all build their model with `prepare_model`, their Accelerator with
`accelerator_for` and step with `train_step`, so every estimate measures the step that training
runs: the same kernels, the same autocast, the same loss weighting, clipping and optimizer.
"""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tuneloop.config import MethodConfig, TrainConfig
from tuneloop.errors import TuneloopError
from tuneloop.models.load import Placement, causal_lm
from tuneloop.models.tokens import IGNORE, Encoded
from tuneloop.train.batches import eval_batches
from tuneloop.train.cpu.prepare import cpu_kernels, release_freed_memory
from tuneloop.train.methods import wrap
from tuneloop.train.packing import use_packed_attention


def accelerator_for(placement: Placement):
    """A fresh Accelerator for `placement`: its device and mixed precision (autocast)."""
    # Accelerate keeps its precision in a process-wide singleton; a second run in the same
    # process with another precision (fp32 then bf16) would be refused. The process group
    # (PartialState) is kept, so DDP is unaffected.
    AcceleratorState._reset_state()
    return Accelerator(cpu=placement.device == "cpu", mixed_precision=placement.mixed_precision)


def fsdp_on_cpu(acc) -> bool:
    """FSDP asked for (Accelerate's `ACCELERATE_USE_FSDP=true`, set by `--fsdp`) on CPU processes.

    Accelerate (1.15) has no FSDP on CPU: it reads that setting only for accelerators and runs
    the launch as plain DDP, and `accelerate launch` refuses `--use_fsdp` with `--cpu`. torch's
    FSDP2 (`fully_shard`) runs on CPU over gloo, so there tuneloop shards the model itself.
    """
    return (acc.distributed_type.name == "MULTI_CPU"
            and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


def shard(model, acc):
    """FSDP2 over the CPU processes: each decoder layer, then the whole model, is sharded.

    What Accelerate's FSDP2 with TRANSFORMER_BASED_WRAP does on a GPU. Call it before the
    optimizer is built (it must hold the sharded parameters), and keep the model out of
    `acc.prepare`, which on CPU would wrap it in DDP; the forward runs under the Accelerator's
    autocast, as the prepared model's would.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise TuneloopError("FSDP on CPU is FSDP2 (torch's fully_shard) only; set FSDP_VERSION=2")
    mesh = init_device_mesh("cpu", (acc.num_processes,))
    wrap = set(getattr(causal_lm(model), "_no_split_modules", None) or ())
    for layer in [m for m in model.modules() if type(m).__name__ in wrap]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    forward = model.forward

    @functools.wraps(forward)
    def autocast_forward(*args, **kwargs):
        with acc.autocast():
            return forward(*args, **kwargs)

    model.forward = autocast_forward
    return model


def sharded(acc) -> bool:
    """FSDP (Accelerate's or `fsdp_on_cpu`) or ZeRO-3: parameters are split across processes,
    so a forward or a weight copy on one process alone would wait forever for the others."""
    kind = acc.distributed_type.name
    if kind == "FSDP" or fsdp_on_cpu(acc):
        return True
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    return kind == "DEEPSPEED" and getattr(plugin, "zero_stage", 0) == 3


def parallelism(acc, model) -> str:
    """How the processes split the work, read off the run: fsdp2 (the parameters are DTensor
    shards), fsdp, deepspeed, ddp, or none (one process)."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        return "fsdp2"
    kind = acc.distributed_type.name
    return {"NO": "none", "FSDP": "fsdp", "DEEPSPEED": "deepspeed"}.get(kind, "ddp")


def prepare_model(base, method: MethodConfig, placement: Placement, train: TrainConfig,
                  max_len: int):
    """`base` with `method` attached and set up as training runs it.

    Packed attention (train.packing), the CPU kernels (train.cpu_kernels; peft builds the fused
    LoRA layers itself), and gradient checkpointing (train.gradient_checkpointing).
    """
    kernels = cpu_kernels(base.config.model_type, placement, train.cpu_kernels)
    model = wrap(base, method, kernels.lora_layers if kernels else None)
    if train.packing:
        # Otherwise the model's own attention isolates the examples through a block-diagonal
        # mask it builds from the restarting position_ids: the same numbers, more compute.
        use_packed_attention(model, max_len)
    if kernels:
        kernels.attach(model)
    if train.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and restores the RNG for dropout.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def optimizer_for(model, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, with the run's learning rate and weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)


def train_step(model, loss_fn, batches: list[dict[str, torch.Tensor]], optimizer, scheduler,
               acc, max_grad_norm: float | None) -> tuple[float, float | None]:
    """One optimizer step over this process's micro-batches; returns (mean loss, grad norm).

    The loss is token-weighted over the whole step (every micro-batch, every process), so N
    processes with global batch B follow the same trajectory as one with B. `model` and
    `optimizer` are the Accelerator's (its prepared forward runs under autocast); `scheduler`
    may be None (the probes keep the learning rate fixed).
    """
    n_step = sum((b["labels"][:, 1:] != IGNORE).sum() for b in batches).float()
    if acc.num_processes > 1:
        n_step = acc.reduce(n_step, "sum")
    n_step = n_step.clamp(min=1)
    step_sum = torch.zeros((), device=acc.device)
    for micro, batch in enumerate(batches):
        # Gradients are synchronised across processes once, on the last micro-batch.
        sync = nullcontext() if micro == len(batches) - 1 else acc.no_sync(model)
        with sync:
            loss_sum, _ = loss_fn(model, batch)
            # DDP averages gradients over processes; scale back to a global token sum.
            acc.backward(loss_sum * acc.num_processes / n_step)
        step_sum += loss_sum.detach().float()
    grad_norm = None
    if max_grad_norm:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = float(acc.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if acc.device.type == "cpu":
        release_freed_memory()
    return (acc.reduce(step_sum, "sum") / n_step).item(), grad_norm


def validation_loss(model, loss_fn, items: list[Encoded], batch_size: int, pad_id: int,
                    accelerator) -> float:
    """Token-weighted mean loss on assistant tokens over the whole validation set."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device)
    shard = items[accelerator.process_index::accelerator.num_processes]
    with torch.no_grad():
        for batch in eval_batches(shard, batch_size, pad_id):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                loss_sum, n = loss_fn(model, batch)
            total += torch.stack([loss_sum.float(), n.float()])
    model.train()
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1].clamp(min=1)).item()
