"""Is a run's adapter/ a standard peft folder that serving engines (vLLM, LoRAX) load?

vLLM reads adapter_config.json into its PEFTHelper (r, lora_alpha, target_modules, bias,
modules_to_save, use_dora, use_rslora) and refuses modules_to_save, DoRA and, unless started
with bias support, LoRA biases; the rank must not exceed --max-lora-rank (16 by default). It
loads adapter_model.safetensors, whose tensors must be `lora_A`/`lora_B` weights of linear
layers. This module checks exactly that, without importing vLLM (a GPU-only install).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError

VLLM_DEFAULT_MAX_RANK = 16
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values --max-lora-rank accepts
# Linear layers of the architectures tuneloop ships (Llama, Gemma 3) that vLLM applies LoRA to.
LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
_TENSOR = re.compile(r"^base_model\.model\.(.+)\.(\w+)\.lora_([AB])\.weight$")


def serving_check(adapter_dir: str | Path) -> dict[str, Any]:
    """What vLLM would read from the adapter, plus the problems that would make it refuse it
    ("problems") and what the serve command needs ("notes", e.g. a larger --max-lora-rank)."""
    d = Path(adapter_dir)
    cfg_path = d / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TuneloopError(f"{d}: no adapter_config.json; not a peft adapter folder") from e
    except json.JSONDecodeError as e:
        raise TuneloopError(f"{cfg_path}: not valid JSON ({e})") from e
    problems, notes = [], []
    kind = cfg.get("peft_type")
    if kind != "LORA":
        problems.append(f"peft_type {kind!r}: vLLM and LoRAX serve LoRA adapters only; export "
                        "merged weights (--format safetensors or gguf) instead")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            problems.append(f"adapter_config.json has no {key!r}")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']}: vLLM only supports none")
    if cfg.get("use_dora"):
        problems.append("DoRA: vLLM does not support it; export merged weights instead")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias {cfg['bias']!r}: vLLM needs --enable-lora-bias for it")
    if cfg.get("use_rslora"):
        notes.append("rsLoRA scaling: needs a vLLM version that reads use_rslora")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    # vLLM matches a target by its last name part, so full paths (model.layers.0.mlp.up_proj,
    # as peft saves explicit per-layer targets) count as their layer type.
    targets = sorted({t.split(".")[-1] for t in targets})
    odd = sorted(set(targets) - LINEAR)
    if odd:
        problems.append(f"target modules {odd}: vLLM applies LoRA to the attention and MLP "
                        f"linear layers ({', '.join(sorted(LINEAR))})")
    r = cfg.get("r")
    if isinstance(r, int) and r > VLLM_DEFAULT_MAX_RANK:
        rank = next((x for x in VLLM_RANKS if x >= r), None)
        if rank is None:
            problems.append(f"rank {r} is above the largest --max-lora-rank vLLM accepts")
        else:
            notes.append(f"rank {r} > 16: start vLLM with --max-lora-rank {rank}")
    weights = d / "adapter_model.safetensors"
    modules: set[str] = set()
    if not weights.exists():
        problems.append("no adapter_model.safetensors (vLLM loads safetensors or .bin; tuneloop "
                        "writes safetensors only)")
    else:
        from safetensors import safe_open

        try:
            with safe_open(weights, framework="np") as st:
                names = list(st.keys())
        except Exception as e:  # noqa: BLE001 (a torn or foreign file: say so, whatever it is)
            raise TuneloopError(f"{weights}: unreadable safetensors file ({e})") from e
        for n in names:
            m = _TENSOR.match(n)
            if not m:
                problems.append(f"tensor {n!r} is not a LoRA A/B weight of a linear layer")
                continue
            modules.add(m[2])
        if modules and targets and not modules <= set(targets):
            problems.append(f"weights for {sorted(modules - set(targets))} are not listed in "
                            "target_modules")
    return {"peft_type": kind, "r": r, "lora_alpha": cfg.get("lora_alpha"),
            "target_modules": targets, "modules_with_weights": sorted(modules),
            "base_model": cfg.get("base_model_name_or_path"), "problems": problems, "notes": notes,
            "ok": not problems}
