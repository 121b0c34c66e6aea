"""Resolve a model name to weights on disk, choose device and precision, load model + tokenizer.

GGUF files are de-quantised once (~20-50 s) and cached as safetensors under $TUNELOOP_HOME,
so every later load takes well under a second.

torch and transformers are imported inside the functions that use them: this module is
imported when the CLI starts (registry -> runs -> here), and `tuneloop --help` must not pay
the seconds those imports take.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.console import err
from tuneloop.errors import TuneloopError
from tuneloop.files import file_lock, read_json_object
from tuneloop.models.catalog import CATALOG, gguf_path
from tuneloop.models.cpu import cpu_has_bf16
from tuneloop.models.tokens import ensure_template


def tuneloop_home() -> Path:
    return Path(os.environ.get("TUNELOOP_HOME", Path.home() / ".cache" / "tuneloop")).expanduser()


def resolve_model(name: str) -> str:
    """Return a local folder (or a hub id the user has cached) that from_pretrained can load."""
    if name in CATALOG:
        return str(_cached_catalog_model(name))
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise TuneloopError(f"{p}: not a Hugging Face model folder (no config.json)")
        return str(p.resolve())
    if p.suffix == ".gguf" or p.exists() or name.startswith((".", "/", "~")):
        raise TuneloopError(f"model {name!r}: no such folder; use a catalog name "
                            f"({', '.join(CATALOG)}), a model folder or a hub id")
    return _hub_model(name)


HUB_TIMEOUT_S = 10.0


def _hub_model(name: str) -> str:
    """A hub id: its snapshot folder when the Hugging Face cache has it; else the id, once the
    hub (asked with a short timeout, never when offline) confirms the model exists."""
    # why: huggingface_hub is imported with transformers; only a hub id needs it here.
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
    except (HFValidationError, ValueError):
        raise TuneloopError(f"model {name!r}: not a catalog name, a model folder or a valid hub "
                            f"id (owner/name){_did_you_mean(name)}") from None
    if isinstance(cached, str):
        return str(Path(cached).parent)
    if _offline():
        raise TuneloopError(f"model {name!r}: not a catalog name, a model folder, or a hub id in "
                            "the Hugging Face cache (HF_HUB_OFFLINE is set, so the hub is not "
                            f"asked){_did_you_mean(name)}")
    try:
        huggingface_hub.model_info(name, timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, HFValidationError):
        raise TuneloopError(f"model {name!r}: no such model on the Hugging Face hub (nor a "
                            f"catalog name or a model folder){_did_you_mean(name)}") from None
    except GatedRepoError:
        raise TuneloopError(f"model {name!r}: gated on the Hugging Face hub; accept its terms and "
                            "log in (`hf auth login`), or use a local folder") from None
    except Exception as e:  # any network failure, in the hub client's own error types
        raise TuneloopError(f"model {name!r}: not cached, and the Hugging Face hub did not answer "
                            f"within {HUB_TIMEOUT_S:.0f} s ({type(e).__name__}: {e}); download it "
                            f"while online or use a local folder{_did_you_mean(name)}") from None
    return name


def _offline() -> bool:
    flags = (os.environ.get(k, "").strip().upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in {"1", "ON", "YES", "TRUE"} for f in flags)


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list(CATALOG), n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"; {hint}catalog names: {', '.join(CATALOG)}"


def _cached_catalog_model(name: str) -> Path:
    home = tuneloop_home()
    target = home / "models" / name
    if (target / "config.json").exists():
        return target
    # DDP ranks and parallel runs convert a GGUF only once.
    with file_lock(home / "locks" / f"{name}.lock"):
        if (target / "config.json").exists():
            return target
        _convert_gguf(name, target, home)
    return target


def _convert_gguf(name: str, target: Path, home: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # why: light CLI start (docstring)

    entry = CATALOG[name]
    gguf = gguf_path(entry, home)
    err.print(f"[dim]De-quantising {gguf.name} once; later loads use the "
                               f"safetensors cache in {target}[/dim]")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The Trainer refuses models that still carry the GGUF quantization_config, and the
    # weights are plain fp32 now anyway.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None,
                                prefix=f".{name}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Placement:
    device: str  # cpu | cuda | mps
    precision: str  # bf16 | fp16 | fp32: the compute precision (autocast on CPU)

    @property
    def mixed_precision(self) -> str:
        """Accelerate's mixed_precision value."""
        return {"bf16": "bf16", "fp16": "fp16"}.get(self.precision, "no")


def compute_dtype(precision: str):
    """The torch dtype a half compute precision runs in (bf16, fp16); None for fp32 (no autocast)."""
    import torch  # why: keeps the CLI's start light (module docstring)

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """CUDA bf16 when present; CPU bf16 autocast where the CPU has AMX/avx512_bf16; else fp32."""
    import torch  # why: keeps the CLI's start light (module docstring)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TuneloopError("model.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if dtype == "auto":
        if device == "cuda":
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            dtype = "bf16" if cpu_has_bf16() else "fp32"
    return Placement(device, dtype)


def causal_lm(model):
    """The transformers *ForCausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_tokenizer(path: str):
    """The tokenizer in `path`, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer  # why: keeps the CLI's start light (module docstring)

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def chat_tokenizer(path: str):
    """load_tokenizer, ready to render chats: a template-less (base) tokenizer gets the
    fallback template."""
    tok = load_tokenizer(path)
    ensure_template(tok)
    return tok


def load_tokenizer_for(name: str) -> tuple[str, Any]:
    """Resolve a model name (catalog name, folder or hub id) and load its chat-ready tokenizer:
    (the local path that from_pretrained loads, tokenizer)."""
    path = resolve_model(name)
    return path, chat_tokenizer(path)


def load_model(path: str, placement: Placement | None = None):
    """Load a causal LM with fp32 master weights (bf16 on CUDA), on the chosen device."""
    # why: keeps the CLI's start light (module docstring)
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a sub-second load needs no bar; ours stay readable
    placement = placement or choose_placement()
    dtype = torch.bfloat16 if (placement.device == "cuda" and placement.precision == "bf16") \
        else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise TuneloopError(f"cannot load model {path!r}: {e}") from e
    return model.to(placement.device)


def weight_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors header (no tensor data read); a truncated or
    garbled file is a TuneloopError naming it."""
    from safetensors import safe_open  # why: keeps the CLI's start light (module docstring)

    try:
        with safe_open(str(file), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type (SafetensorError)
        raise TuneloopError(f"{file}: not a readable safetensors file ({e}); it is truncated or "
                            "corrupt. Copy it again from where it came from, or train the run "
                            "again") from None


def _read_json(file: Path, what: str) -> dict:
    try:
        return read_json_object(file, f"{what} is corrupt. Copy it again from where it came "
                                      "from, or train the run again")
    except FileNotFoundError:
        raise TuneloopError(f"{file}: missing; {what} is incomplete") from None


def check_adapter(folder: Path, base_path: str) -> None:
    """Refuse an adapter that would not load onto the base model at `base_path`: unreadable
    files, or tensors whose names or shapes differ from what the base model's modules need.

    The base is built on the meta device from its config, so no weights are read; the adapter
    is checked from its safetensors header alone.
    """
    # why: keeps the CLI's start light (module docstring); peft writes os.environ on import.
    import torch
    from peft import PeftConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    _read_json(folder / "adapter_config.json", f"the adapter in {folder}")
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise TuneloopError(f"{file}: missing; the adapter in {folder} is incomplete (only "
                            "safetensors adapters are loaded)")
    have = weight_shapes(file)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_path))
            peft = get_peft_model(base, PeftConfig.from_pretrained(str(folder)))
            need = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft).items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise TuneloopError(f"{folder / 'adapter_config.json'}: does not describe an adapter for "
                            f"the base model {base_path} ({e})") from None
    missing = sorted(set(need) - set(have))
    extra = sorted(set(have) - set(need))
    shaped = sorted(k for k in set(need) & set(have) if need[k] != have[k])
    if missing or extra or shaped:
        detail = "; ".join(f"{what} {len(keys)}, e.g. {keys[0]}" + (
            f" {have[keys[0]]} vs {need[keys[0]]}" if what == "wrong shape" else "")
            for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shaped))
            if keys)
        raise TuneloopError(f"{file}: does not fit the base model {base_path} ({detail}); it was "
                            "trained on another base model or is corrupt. Register or load it with "
                            "the config of the run that trained it")


def check_model_folder(folder: Path) -> None:
    """Refuse a full fine-tune's folder whose config or safetensors files are unreadable."""
    folder = Path(folder)
    _read_json(folder / "config.json", f"the model in {folder}")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TuneloopError(f"{folder}: no .safetensors weights found")
    for f in files:
        weight_shapes(f)
