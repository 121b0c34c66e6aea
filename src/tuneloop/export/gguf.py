"""Write a merged Hugging Face model folder as one GGUF file that llama.cpp and Ollama load.

Why tuneloop writes GGUF itself: llama.cpp's converter (convert_hf_to_gguf.py) is a script in
llama.cpp's source tree, not a pip-installable library; it changes with llama.cpp and needs
its checkout. The `gguf` package on PyPI (maintained in the same repository) ships the file
format, the per-architecture tensor-name maps, the metadata keys and the Q8_0 quantiser, and
we use all of those. What is left is small and follows llama.cpp's conversion rules for the
two architectures tuneloop ships, each checked below rather than guessed:

- Llama (SmolLM2): q_proj/k_proj rows are permuted into llama.cpp's rotary layout
  (`_permute_rope`); tied embeddings write no `output.weight`.
- Gemma 3: every `*norm.weight` is stored as 1 + weight (llama.cpp's RMSNorm multiplies by
  the stored value, Gemma's by 1 + weight); the sliding-window pattern (5 local : 1 global) and
  the local rope base (10,000) are fixed in llama.cpp, so a config that differs is refused.

Any other architecture, rope scaling or tokenizer type is refused with a clear error instead of
being converted wrongly. Tensors: 1-D (norms) stay F32, matrices F16 or Q8_0. Q4_K_M needs
llama.cpp's own quantiser (the `gguf` package can read K-quants but not write them): through
llama-cpp-python when it is installed (the `[export]` extra), else the error says how.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.errors import TuneloopError

QUANTS = ("f16", "q8_0", "q4_k_m")
QUANT_BLOCK = 32  # Q8_0 block width: a matrix whose rows are not a multiple stays F16
GEMMA3_SWA_PATTERN = 6  # llama.cpp: every 6th Gemma 3 layer is global, the others local
GEMMA3_SWA_ROPE_BASE = 10_000.0  # llama.cpp's fixed rope base for Gemma 3's local layers


@dataclass(frozen=True)
class TokenizerInfo:
    """What the GGUF needs to know about the run's tokenizer beyond its vocabulary."""

    chat_template: str
    bos_id: int | None
    eos_id: int
    eot_id: int
    pad_id: int | None
    unk_id: int | None
    size: int  # len(tokenizer): vocabulary plus added tokens


def tokenizer_info(tok, eot_id: int) -> TokenizerInfo:
    """The run tokenizer's template and special ids (the end-of-turn id comes from the template)."""
    return TokenizerInfo(tok.chat_template, tok.bos_token_id, tok.eos_token_id, eot_id,
                         tok.pad_token_id, tok.unk_token_id, len(tok))


# ---- architecture -------------------------------------------------------------------------

def _rope(cfg: dict) -> dict:
    """rope parameters for the full-attention layers, across transformers 4.x and 5.x configs."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and "full_attention" in rp:
        return rp["full_attention"]
    if isinstance(rp, dict):
        return rp
    return {"rope_theta": cfg.get("rope_theta", 10_000.0), **(cfg.get("rope_scaling") or {})}


def _check_rope(rope: dict, where: str) -> None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in (None, "default"):
        raise TuneloopError(f"{where}: rope scaling {kind!r} is not supported by tuneloop's GGUF "
                            "writer; export --format safetensors and convert with llama.cpp")


def _llama_params(cfg: dict, where: str) -> dict[str, Any]:
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise TuneloopError(f"{where}: Llama with bias terms is not supported by the GGUF writer")
    if cfg.get("hidden_act", "silu") != "silu":
        raise TuneloopError(f"{where}: Llama with activation {cfg.get('hidden_act')!r} is not "
                            "supported by the GGUF writer")
    rope = _rope(cfg)
    _check_rope(rope, where)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    p = {"context_length": cfg.get("max_position_embeddings", 2048),
         "embedding_length": cfg["hidden_size"], "block_count": cfg["num_hidden_layers"],
         "feed_forward_length": cfg["intermediate_size"], "head_count": heads,
         "head_count_kv": cfg.get("num_key_value_heads", heads),
         "rope_freq_base": float(rope.get("rope_theta", 10_000.0)),
         "layer_norm_rms_eps": float(cfg.get("rms_norm_eps", 1e-6)),
         "vocab_size": cfg["vocab_size"], "rope_dimension_count": head_dim}
    if head_dim != cfg["hidden_size"] // heads:
        p |= {"key_length": head_dim, "value_length": head_dim}
    return p


def _gemma3_params(cfg: dict, where: str) -> dict[str, Any]:
    heads = cfg.get("num_attention_heads", 8)
    head_dim = cfg.get("head_dim", 256)
    rp = cfg.get("rope_parameters") or {}
    local = rp.get("sliding_attention", {}) if isinstance(rp, dict) else {}
    full = _rope(cfg)
    _check_rope(full, where)
    _check_rope(local, where)
    local_base = float(local.get("rope_theta", cfg.get("rope_local_base_freq", GEMMA3_SWA_ROPE_BASE)))
    layers = cfg["num_hidden_layers"]
    want = ["full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
            for i in range(layers)]
    problems = []
    if cfg.get("layer_types") not in (None, want):
        problems.append("a sliding-window pattern other than 5 local : 1 global layers")
    if local_base != GEMMA3_SWA_ROPE_BASE:
        problems.append(f"local rope base {local_base} (llama.cpp fixes it at 10000)")
    if cfg.get("query_pre_attn_scalar", head_dim) != head_dim:
        problems.append("query_pre_attn_scalar != head_dim")
    if cfg.get("attn_logit_softcapping") is not None:
        problems.append("attention logit soft-capping")
    if cfg.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        problems.append(f"activation {cfg.get('hidden_activation')!r}")
    if problems:
        raise TuneloopError(f"{where}: this Gemma 3 variant has {'; '.join(problems)}, which "
                            "llama.cpp's gemma3 architecture does not express; export --format "
                            "safetensors instead")
    p = {"context_length": cfg.get("max_position_embeddings", 131072),
         "embedding_length": cfg["hidden_size"], "block_count": layers,
         "feed_forward_length": cfg["intermediate_size"], "head_count": heads,
         "layer_norm_rms_eps": float(cfg.get("rms_norm_eps", 1e-6)),
         "key_length": head_dim, "value_length": head_dim,
         "rope_freq_base": float(full.get("rope_theta", 1_000_000.0)),
         "sliding_window": cfg["sliding_window"],
         "head_count_kv": cfg.get("num_key_value_heads", 4)}
    if cfg.get("final_logit_softcapping"):
        p["final_logit_softcapping"] = float(cfg["final_logit_softcapping"])
    return p


# model_type -> (gguf arch name, hyper-parameter function)
ARCHS = {"llama": ("llama", _llama_params), "gemma3_text": ("gemma3", _gemma3_params),
         "gemma3": ("gemma3", _gemma3_params)}


def architecture(cfg: dict, where: str) -> str:
    """The GGUF architecture name of a config, or a TuneloopError naming what is supported."""
    mt = cfg.get("model_type")
    if mt == "gemma3" and "text_config" in cfg:
        raise TuneloopError(f"{where}: a multimodal Gemma 3 checkpoint; GGUF export handles the "
                            "text-only Gemma3ForCausalLM")
    if mt not in ARCHS:
        raise TuneloopError(f"{where}: architecture {mt!r} cannot be exported to GGUF by tuneloop "
                            "(supported: Llama, Gemma 3); use --format safetensors and llama.cpp's "
                            "convert_hf_to_gguf.py")
    return ARCHS[mt][0]


def _permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), per head, on the rows."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _gguf_tensors(model_dir: Path, cfg: dict, arch: str):
    """(GGUF name, float32 array) for every tensor, with llama.cpp's per-architecture changes."""
    import gguf
    from safetensors import safe_open

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_enum, cfg["num_hidden_layers"])
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    tied = cfg.get("tie_word_embeddings", True)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise TuneloopError(f"{model_dir}: no .safetensors weights to convert")
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if tied and key == "lm_head.weight":
                    continue
                base, _, suffix = key.rpartition(".")
                new = names.get_name(base)
                if new is None:
                    raise TuneloopError(f"{f}: tensor {key!r} has no GGUF name for {arch}; the "
                                        f"checkpoint is not a plain {arch} model")
                data = st.get_tensor(key).float().numpy()
                if arch == "llama" and key.endswith("self_attn.q_proj.weight"):
                    data = _permute_rope(data, heads)
                elif arch == "llama" and key.endswith("self_attn.k_proj.weight"):
                    data = _permute_rope(data, kv_heads)
                elif arch == "gemma3" and key.endswith("norm.weight"):
                    data = data + 1.0
                yield f"{new}.{suffix}", data


# ---- tokenizer ----------------------------------------------------------------------------

# Set from the run's tokenizer (see _write_tokenizer), never copied from the base GGUF.
_OVERRIDDEN = {f"tokenizer.ggml.{k}" for k in ("bos_token_id", "eos_token_id", "eot_token_id",
                                               "padding_token_id", "unknown_token_id",
                                               "add_bos_token", "add_eos_token")}


def _copy_tokenizer_fields(writer, source: Path, info: TokenizerInfo) -> dict:
    """Copy llama.cpp's own tokenizer metadata from the base model's GGUF (catalog models)."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(source)
    copied = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml.") or key in _OVERRIDDEN:
            continue
        main = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if main == GGUFValueType.ARRAY else None
        value = field.contents()
        copied[key] = value
        writer.add_key_value(key, value, main, sub)
    n = len(copied.get("tokenizer.ggml.tokens", []))
    if n != info.size:
        raise TuneloopError(f"the run's tokenizer has {info.size} tokens but the base model's GGUF "
                            f"{source.name} has {n}; a tokenizer with added tokens cannot reuse the "
                            "base GGUF's vocabulary")
    return copied


# tokenizers' pre-tokenizer layouts -> the llama.cpp pre-tokenizer that splits text the same way
def _pre_name(pre: dict | None) -> str | None:
    if not pre:
        return None
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if kind == "Sequence":
        parts = pre.get("pretokenizers", [])
        types = [p.get("type") for p in parts]
        if (types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
                and parts[1].get("use_regex", True)):
            return "smollm"
    return None


def _bpe_tokenizer_fields(writer, tok_dir: Path) -> dict:
    """gpt2-style (byte-level BPE) vocabulary from tokenizer.json, as llama.cpp writes it."""
    path = tok_dir / "tokenizer.json"
    if not path.exists():
        raise TuneloopError(f"{tok_dir}: no tokenizer.json; GGUF export needs a fast tokenizer")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    pre = _pre_name(tj.get("pre_tokenizer"))
    if model.get("type") != "BPE" or pre is None:
        raise TuneloopError(
            f"{path}: a {model.get('type')} tokenizer with pre-tokenizer "
            f"{(tj.get('pre_tokenizer') or {}).get('type')!r} cannot be written to GGUF by "
            "tuneloop (it writes byte-level BPE vocabularies, and copies catalog models' own); "
            "export --format safetensors and convert with llama.cpp's convert_hf_to_gguf.py")
    vocab: dict[str, int] = dict(model["vocab"])
    special, user = set(), set()
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        (special if t.get("special") else user).add(t["id"])
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for s, i in vocab.items():
        tokens[i] = s
    # llama.cpp's token types: 1 normal, 3 control (special added), 4 user-defined, 5 unused
    types = [3 if i in special else 4 if i in user else 1 for i in range(size)]
    for i in set(range(size)) - set(vocab.values()):
        types[i] = 5
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokens": size}


def _write_tokenizer(writer, tok_dir: Path, info: TokenizerInfo, source: Path | None) -> dict:
    if source is not None:
        copied = _copy_tokenizer_fields(writer, source, info)
        meta = {"tokenizer.ggml.model": copied.get("tokenizer.ggml.model"),
                "tokenizer.ggml.pre": copied.get("tokenizer.ggml.pre"),
                "vocabulary_from": str(source)}
    else:
        meta = _bpe_tokenizer_fields(writer, tok_dir)
        meta["vocabulary_from"] = str(tok_dir / "tokenizer.json")
    # The run's own special ids and template win over whatever the source said. BOS is never
    # added by the runtime: tuneloop trains and measures on exactly the tokens the chat template
    # renders (a template that wants BOS writes it), so llama.cpp and Ollama must do the same.
    from gguf import Keys

    for key, value in ((Keys.Tokenizer.BOS_ID, info.bos_id), (Keys.Tokenizer.EOS_ID, info.eos_id),
                       (Keys.Tokenizer.EOT_ID, info.eot_id), (Keys.Tokenizer.PAD_ID, info.pad_id),
                       (Keys.Tokenizer.UNK_ID, info.unk_id)):
        if value is not None:
            writer.add_uint32(key, int(value))
    writer.add_bool(Keys.Tokenizer.ADD_BOS, False)
    writer.add_bool(Keys.Tokenizer.ADD_EOS, False)
    writer.add_chat_template(info.chat_template)
    return meta


# ---- writing ------------------------------------------------------------------------------

def _tensor_for(writer, name: str, data: np.ndarray, quant: str) -> str:
    import gguf

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
        return "F32"
    if quant == "q8_0" and data.shape[-1] % QUANT_BLOCK == 0:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        return "Q8_0"
    writer.add_tensor(name, data.astype(np.float16))
    return "F16"


def llama_cpp_quantizer():
    """llama-cpp-python's binding, or a TuneloopError saying how to get Q4_K_M."""
    try:
        import llama_cpp  # optional: the [export] extra
    except ImportError as e:
        raise TuneloopError(
            "--quant q4_k_m needs llama.cpp's quantiser: the `gguf` Python package can write "
            "F16 and Q8_0 but not K-quants. Install the [export] extra (`pip install "
            "'tuneloop[export]'`, which compiles llama-cpp-python), or export --quant f16 and run "
            "llama.cpp's `llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M`") from e
    return llama_cpp


def _quantize_k(src: Path, dst: Path) -> None:
    llama_cpp = llama_cpp_quantizer()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.exists():
        raise TuneloopError(f"llama.cpp could not quantise {src.name} to Q4_K_M (code {rc})")


def write_gguf(model_dir: str | Path, tok_dir: str | Path, out_file: str | Path, quant: str,
               info: TokenizerInfo, source_gguf: Path | None = None,
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert the merged model in `model_dir` (+ the run's tokenizer) into `out_file`.

    `source_gguf`: the base model's own GGUF (catalog models), whose llama.cpp-written
    tokenizer metadata is copied. `meta`: general.* strings (name, license, base model).
    Returns what was written: architecture, tensor types, tokenizer and file size.
    """
    import gguf

    if quant not in QUANTS:
        raise TuneloopError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    if quant == "q4_k_m":
        llama_cpp_quantizer()  # fail before the long work, not after it
    model_dir, tok_dir, out_file = Path(model_dir), Path(tok_dir), Path(out_file)
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    arch = architecture(cfg, str(cfg_path))
    params = ARCHS[cfg["model_type"]][1](cfg, str(cfg_path))
    first = out_file if quant != "q4_k_m" else out_file.with_name(out_file.stem + ".f16.tmp.gguf")
    writer = gguf.GGUFWriter(first, arch)
    meta = meta or {}
    writer.add_type("model")
    writer.add_name(meta.get("name") or model_dir.name)
    for key, fn in (("license", writer.add_license), ("finetune", writer.add_finetune),
                    ("description", writer.add_description)):
        if meta.get(key):
            fn(meta[key])
    if meta.get("base_model"):
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, meta["base_model"])
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_k_m": gguf.LlamaFileType.MOSTLY_F16}[quant]
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in params.items():
        getattr(writer, f"add_{key}")(value)
    tok_meta = _write_tokenizer(writer, tok_dir, info, source_gguf)
    types: dict[str, int] = {}
    n_params = 0
    for name, data in _gguf_tensors(model_dir, cfg, arch):
        t = _tensor_for(writer, name, data, "f16" if quant == "q4_k_m" else quant)
        types[t] = types.get(t, 0) + 1
        n_params += data.size
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    if quant == "q4_k_m":
        try:
            _quantize_k(first, out_file)
        finally:
            first.unlink(missing_ok=True)
        types = {"Q4_K_M mix (llama.cpp)": sum(types.values())}
    return {"file": str(out_file), "bytes": os.path.getsize(out_file), "architecture": arch,
            "quant": quant, "tensor_types": types, "parameters": int(n_params),
            "tokenizer": tok_meta, "eos_token_id": info.eos_id, "eot_token_id": info.eot_id}
