"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and loop state.

Only trainable parameters are saved (a LoRA checkpoint is a few MB, not the whole base model).
Each checkpoint is written to a temp folder and renamed, so a crash leaves the last good one.

    step-N/trainable.safetensors   the trainable weights
    step-N/state.pt                optimizer, scheduler and RNG state: tensors and plain data only
    step-N/loop.json               step, tokens, best validation loss, ...

state.pt is read with `torch.load(weights_only=True)`, which builds tensors, numbers, strings
and containers and refuses anything else, so a crafted checkpoint cannot run code on resume.
The RNG states are stored as plain data (numpy's as a tensor, not an ndarray) for that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneloop.errors import TuneloopError

KEEP = 2
# What a full disk looks like when the write happens in torch's or safetensors' native code.
_DISK_FULL = ("No space left", "os error 28", "Disk quota", "file write failed",
              "PytorchStreamWriter failed writing")


def trainable_state(model) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (the adapter, or every weight for `full`).

    An FSDP2 shard (a DTensor) is gathered whole: call it on every process then.
    """
    return {n: _whole(p).detach().cpu().clone() for n, p in model.named_parameters()
            if p.requires_grad}


def load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            p = params[name]
            value = value.to(p.device, p.dtype)
            if hasattr(p, "device_mesh"):  # an FSDP2 shard: keep this process's part
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)
            p.copy_(value)


def _whole(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain data (no pickled objects)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["name"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"],
                npst["has_gauss"], npst["cached_gaussian"])
    np.random.set_state(npst)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(x):
    """random.setstate wants (int, tuple, ...): undo a list that a round trip may have made."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def save(ckpt_root: Path, step: int, model, optimizer, scheduler, loop_state: dict) -> Path:
    """Write checkpoints/step-N atomically and keep the newest KEEP.

    A failed write (a full disk) removes the temp folder and raises TuneloopError; the
    checkpoints already there stay as they were.
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_root.glob(".tmp-step-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}"
    tmp.mkdir()
    try:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state()}, tmp / "state.pt")
        (tmp / "loop.json").write_text(json.dumps(loop_state))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _disk_error(e):
            raise
        prev = latest(ckpt_root)
        keep = f"{prev.name} is intact" if prev else "no earlier checkpoint exists"
        raise TuneloopError(f"{final}: could not write the checkpoint ({e}); {keep}. Free disk "
                            f"space in {ckpt_root} (or fix what the error names), then continue "
                            f"with `tuneloop train --resume {ckpt_root.parent}`") from e
    for old in sorted(ckpt_root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _disk_error(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return True
    return any(s in str(e) for s in _DISK_FULL) or isinstance(e.__cause__ or e.__context__, OSError)


def latest(ckpt_root: Path) -> Path | None:
    found = sorted(ckpt_root.glob("step-*"))
    return found[-1] if found else None


class CorruptCheckpoint(TuneloopError):
    """A checkpoint that cannot be read (truncated, missing a file): an older one may do."""


@dataclass
class Checkpoint:
    """A checkpoint read and checked, not yet applied to live objects."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    loop: dict[str, Any] = field(default_factory=dict)


def read(path: Path) -> Checkpoint:
    """Read a checkpoint without applying it. CorruptCheckpoint when a file is unreadable;
    TuneloopError (never code execution) when state.pt holds anything but tensors and data."""
    try:
        weights = load_file(str(path / "trainable.safetensors"))
    except Exception as e:  # safetensors raises its own error type for a torn file
        raise CorruptCheckpoint(f"{path / 'trainable.safetensors'}: unreadable ({e})") from None
    state = _load_state(path / "state.pt")
    try:
        loop = json.loads((path / "loop.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{path / 'loop.json'}: unreadable ({e})") from None
    if not isinstance(loop, dict) or not isinstance(loop.get("step"), int):
        raise CorruptCheckpoint(f"{path / 'loop.json'}: no step count in it")
    return Checkpoint(path, weights, state, loop)


def _load_state(file: Path) -> dict[str, Any]:
    # The allow-list only admits what checkpoints written before the RNG state became plain
    # data hold (numpy's RNG keys as an ndarray): array reconstruction, no callables.
    legacy = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _np_reconstruct()]
    allowed = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allowed(legacy) if allowed else contextlib.nullcontext():
            state = torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        names = {f"{g.__module__}.{g.__qualname__}" for g in legacy}
        unsafe = [g for g in _unsafe_globals(file) if g not in names]
        if unsafe:
            raise TuneloopError(
                f"{file}: refused to load it: it names Python objects ({', '.join(unsafe)}) that "
                "could run code when unpickled. tuneloop never writes those, so the file was "
                "replaced; treat the run folder as untrusted. To resume from an older checkpoint, "
                f"delete {file.parent}") from None
        raise CorruptCheckpoint(f"{file}: unreadable ({_first_line(e)})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise CorruptCheckpoint(f"{file}: unreadable ({_first_line(e)})") from None
    if not isinstance(state, dict) or not all(
            isinstance(state.get(k), dict) for k in ("optimizer", "scheduler", "rng")):
        raise CorruptCheckpoint(f"{file}: not a tuneloop checkpoint state "
                                "(no optimizer, scheduler and rng entries)")
    return state


def _np_reconstruct():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    return core.multiarray._reconstruct


def _unsafe_globals(file: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    except Exception:  # not a zip checkpoint: a raw pickle stream names its globals too
        return _pickle_globals(file)


def _pickle_globals(file: Path) -> list[str]:
    """Globals a raw pickle would import, read with pickletools (nothing is executed)."""
    import pickletools

    names, strings = [], []
    try:
        with open(file, "rb") as f:
            for op, arg, _pos in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # a torn stream: whatever was named before the tear
        pass
    return names


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def require(ckpt_root: Path) -> None:
    """TuneloopError unless `ckpt_root` holds a checkpoint: a resume never restarts silently."""
    if latest(ckpt_root) is None:
        raise TuneloopError(f"{ckpt_root}: no checkpoint to resume from (the run stopped before "
                            "its first one; see train.save_every). Start the run again without "
                            "--resume, in a new folder (another output.name)")


def restore(ckpt_root: Path, model, optimizer, scheduler) -> tuple[dict, Path, list[str]]:
    """Apply the newest readable checkpoint under `ckpt_root`; returns (loop state, its path,
    one line per newer checkpoint skipped as corrupt). TuneloopError when none is readable."""
    require(ckpt_root)
    found = sorted(ckpt_root.glob("step-*"), reverse=True)
    skipped = []
    for path in found:
        try:
            ckpt = read(path)
        except CorruptCheckpoint as e:
            skipped.append(str(e))
            continue
        apply(ckpt, model, optimizer, scheduler)
        return ckpt.loop, path, skipped
    raise TuneloopError("no readable checkpoint to resume from: " + "; ".join(skipped) +
                        ". Start the run again without --resume, in a new folder")


def apply(ckpt: Checkpoint, model, optimizer, scheduler) -> None:
    """Put a read checkpoint into live objects (after checking it fits the model)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wrong = [n for n, t in ckpt.weights.items() if n not in params or params[n].shape != t.shape]
    if wrong or len(ckpt.weights) != len(params):
        raise TuneloopError(f"{ckpt.path}: its weights do not fit this run's model ({len(wrong)} "
                            f"unknown or differently shaped, e.g. {wrong[:2]}); was config.yaml "
                            "changed since the run started?")
    load_trainable(model, ckpt.weights)
    try:
        optimizer.load_state_dict(ckpt.state["optimizer"])
        scheduler.load_state_dict(ckpt.state["scheduler"])
    except (ValueError, KeyError) as e:
        raise TuneloopError(f"{ckpt.path / 'state.pt'}: optimizer state does not fit this run "
                            f"({e}); was config.yaml changed since the run started?") from None
    set_rng_state(ckpt.state["rng"])

