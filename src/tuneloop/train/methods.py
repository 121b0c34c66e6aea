"""One place that maps a method name to a peft config (or full fine-tuning)."""

from __future__ import annotations

import warnings
from pathlib import Path

from tuneloop.config import MethodConfig
from tuneloop.errors import TuneloopError
from tuneloop.models.load import load_model

# Import note: peft, transformers and bitsandbytes load inside functions. Importing peft writes
# os.environ (TORCHINDUCTOR_CACHE_DIR), and importing a tuneloop module must change nothing
# process-wide; bitsandbytes is the optional [gpu] extra.


def peft_config(m: MethodConfig):
    """The peft config for `m`, or None for full fine-tuning."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    task = TaskType.CAUSAL_LM
    if m.name in ("lora", "dora"):
        return LoraConfig(task_type=task, r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
                          target_modules=m.target_modules, use_dora=m.name == "dora")
    if m.name == "ia3":
        # None lets peft pick its per-architecture defaults (k, v, down_proj for Llama).
        targets = None if m.target_modules == "all-linear" else m.target_modules
        return IA3Config(task_type=task, target_modules=targets)
    if m.name == "prefix":
        return PrefixTuningConfig(task_type=task, num_virtual_tokens=m.num_virtual_tokens)
    if m.name == "prompt":
        return PromptTuningConfig(task_type=task, num_virtual_tokens=m.num_virtual_tokens)
    if m.name == "full":
        return None
    raise TuneloopError(f"method.name {m.name!r} is not supported")


def load_base(path: str, placement, m: MethodConfig):
    """The base model to fine-tune: as placed, or 4-bit NF4 for QLoRA (method.quantize, CUDA only)."""
    if not m.quantize:
        return load_model(path, placement)
    if placement.device != "cuda":
        raise TuneloopError("method.quantize: 4bit (QLoRA) needs a CUDA GPU (bitsandbytes kernels); "
                            f"this run is on {placement.device}. Remove method.quantize to train "
                            "LoRA on the full-precision model")
    if m.name not in ("lora", "dora"):
        raise TuneloopError(f"method.quantize: 4bit works with lora or dora, not {m.name!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise TuneloopError("method.quantize: 4bit needs bitsandbytes: pip install 'tuneloop[gpu]' "
                            "(or pip install bitsandbytes)") from e
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.bfloat16,
                                                 device_map={"": torch.cuda.current_device()})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def wrap(model, m: MethodConfig, lora_layers: dict[type, type] | None = None):
    """Attach the method's trainable parameters; for `full`, train every weight.

    `lora_layers` (target class -> LoRA layer class) goes to peft's custom-layer dispatch, so
    peft itself builds those LoRA layers (the CPU kernels' FusedLoraLinear).
    """
    if m.init_adapter:
        return _from_adapter(model, m, lora_layers)
    cfg = _with_layers(peft_config(m), lora_layers)
    if cfg is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model

    try:
        with warnings.catch_warnings():
            # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`; the
            # FutureWarning is theirs to fix and only clutters every training run's output.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing",
                                    category=FutureWarning)
            return get_peft_model(model, cfg)
    except ValueError as e:  # e.g. ia3 without known targets for this architecture
        raise TuneloopError(f"method {m.name!r} cannot be applied to this model: {e}; "
                            "set method.target_modules") from e


def _with_layers(cfg, lora_layers: dict[type, type] | None):
    """`cfg` with `lora_layers` registered where it is a LoRA config (peft's experimental API)."""
    if lora_layers and hasattr(cfg, "_register_custom_module"):
        cfg._register_custom_module(lora_layers)
    return cfg


def _from_adapter(model, m: MethodConfig, lora_layers: dict[type, type] | None = None):
    """Continue training a saved adapter; only safetensors weights are accepted (no pickle)."""
    from peft import PeftModel  # why: see the module's import note

    folder = Path(m.init_adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise TuneloopError(f"method.init_adapter: {folder} holds no adapter_config.json; "
                            "point it at a run's adapter/ folder")
    if not (folder / "adapter_model.safetensors").is_file():
        raise TuneloopError(f"method.init_adapter: {folder} has no adapter_model.safetensors "
                            "(only safetensors adapters are loaded)")
    if m.name == "full":
        raise TuneloopError("method.init_adapter needs a peft method, not 'full'")
    cfg = None  # peft reads it from the folder
    if lora_layers:
        from peft import PeftConfig

        cfg = _with_layers(PeftConfig.from_pretrained(folder), lora_layers)
    return PeftModel.from_pretrained(model, folder, is_trainable=True, config=cfg)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
