"""`tuneloop export`, top to bottom: resolve -> merge -> write format -> parity -> extras -> rename.

Everything is written into a temporary folder beside OUT and renamed to OUT only when every
check passed, so a failed parity check, a full disk or an interrupt leaves no half-written
export behind. Merging always happens into fp32 base weights (also for a QLoRA run, whose
base is loaded unquantised here), never into quantised ones.

    OUT/ (safetensors)   model.safetensors, config.json, tokenizer files, README.md
    OUT/ (gguf)          model-QUANT.gguf, README.md, parity.json, Modelfile (--ollama)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.export.gguf import (
    QUANTS,
    architecture,
    llama_cpp_quantizer,
    tokenizer_info,
    write_gguf,
)
from tuneloop.export.merge import export_merged
from tuneloop.export.modelfile import build_modelfile
from tuneloop.export.parity import ParityError, check_parity, parity_examples
from tuneloop.models.catalog import CATALOG, gguf_path
from tuneloop.models.generate import stop_ids
from tuneloop.models.load import chat_tokenizer, resolve_model, tuneloop_home
from tuneloop.models.tokens import end_of_turn_id
from tuneloop.registry.card import BASE_IDS, model_card
from tuneloop.runs import read_run_config

FORMATS = ("safetensors", "gguf")


def resolve_source(run: str | Path, config: Path | None) -> Path:
    """A run folder, a registry version folder, or a registry reference (champion, v3)."""
    p = Path(run)
    if p.is_dir():
        if not (p / "config.yaml").exists():
            raise TuneloopError(f"{p}: not a run folder (no config.yaml)")
        return p
    if os.sep in str(run) or str(run).startswith("."):
        raise TuneloopError(f"{run}: no such run folder")
    from tuneloop.registry.registry import Registry  # why: only a reference needs the registry

    cfg_path = Path(".") if config is None else config
    if not (cfg_path.is_file() or (cfg_path / "tuneloop.yaml").exists()):
        raise TuneloopError(f"{run}: no such run folder; to export a registry version pass "
                            "--config tuneloop.yaml (whose registry.dir holds it)")
    return Registry.from_config(load_config(cfg_path)).get(str(run)).path


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TuneloopError(f"{out}: already exists and is not empty; choose a new folder")


def _check_architecture(src: Path) -> None:
    """Refuse an architecture the GGUF writer does not handle before the (long) merge."""
    if (src / "model" / "config.json").exists():
        path = src / "model" / "config.json"
    else:
        path = Path(resolve_model(read_run_config(src).model.name)) / "config.json"
    if path.exists():
        architecture(json.loads(path.read_text(encoding="utf-8")), str(path))


def _source_gguf(base: str) -> Path | None:
    """The catalog base model's own GGUF, whose llama.cpp tokenizer metadata is reused."""
    return gguf_path(CATALOG[base], tuneloop_home()) if base in CATALOG else None


def _gguf(src: Path, merged: Path, tmp: Path, quant: str, ollama: bool, parity_n: int,
          quiet: bool) -> dict[str, Any]:
    cfg = read_run_config(src)
    tok = chat_tokenizer(str(merged))
    info = tokenizer_info(tok, end_of_turn_id(tok))
    name = f"model-{quant}.gguf"
    base = cfg.model.name
    t0 = time.perf_counter()
    res = write_gguf(merged, merged, tmp / name, quant, info, _source_gguf(base),
                     {"name": f"{src.name} ({base} + {cfg.method.name})",
                      "base_model": base, "finetune": src.name,
                      "license": BASE_IDS[base][1] if base in BASE_IDS else None})
    res["write_s"] = round(time.perf_counter() - t0, 2)
    res["file"] = name
    shutil.rmtree(merged)  # the GGUF has everything; the merged copy was only its input
    result: dict[str, Any] = {"gguf": res}
    if parity_n > 0:
        try:
            result["parity"] = check_parity(src, tmp / name, cfg, quant, parity_n, quiet=quiet)
        except ParityError as e:
            e.result["gguf"] = res  # what was measured, for --json and benchmarks
            raise
        (tmp / "parity.json").write_text(json.dumps(result["parity"], indent=2) + "\n")
    if ollama:
        prompts = [e.prompt_messages for e in parity_examples(cfg, max(parity_n, 1))[0]] \
            if parity_n > 0 else []
        text, report = build_modelfile(tok, name, stop_ids(tok), cfg.task.system_prompt, prompts)
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
        result["modelfile"] = report
    return result


def _usage(fmt: str, out: Path, result: dict) -> list[str]:
    """Commands for the card, relative to the exported folder (a card must not name our paths)."""
    if fmt == "safetensors":
        return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("{out.name}")',
                f'tok = AutoTokenizer.from_pretrained("{out.name}")', "```"]
    name = result["gguf"]["file"]
    lines = ["In this folder:", "", "```",
             f"llama-cli -m {name} -cnv        # llama.cpp: the chat template comes from the file"]
    if "modelfile" in result:
        lines.append(f"ollama create {out.name} -f Modelfile && ollama run {out.name}")
    return lines + ["```"]


def _notes(result: dict) -> list[str]:
    notes = []
    par = result.get("parity")
    if par:
        tr = par["transformers"]
        notes.append(f"Export parity ({par['quant']}, {tr['prompts']} {par['split']} prompts, "
                     f"transformers' GGUF reader): {tr['agreement']:.0%} identical greedy answers; "
                     f"{tr['metric']} {tr['file_metric']['value']} vs {tr['run_metric']['value']} "
                     f"for the run (difference {tr['metric_diff']['diff']:+.3f}, 95% CI "
                     f"{tr['metric_diff']['ci']}).")
    mf = (result.get("modelfile") or {}).get("note")
    if mf:
        notes.append(f"Ollama: {mf}.")
    return notes


def export_run(run: str | Path, out: str | Path, fmt: str = "safetensors", quant: str = "f16",
               ollama: bool = False, parity_n: int = 50, config: Path | None = None,
               quiet: bool = True) -> dict[str, Any]:
    """Export RUN to OUT as merged safetensors or one GGUF file (see the module docstring)."""
    if fmt not in FORMATS:
        raise TuneloopError(f"--format {fmt!r}: choose safetensors or gguf")
    if quant not in QUANTS:
        raise TuneloopError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    if fmt != "gguf" and (ollama or quant != "f16"):
        raise TuneloopError("--ollama and --quant apply to --format gguf")
    if quant == "q4_k_m":
        llama_cpp_quantizer()  # say it now, not after merging
    out = Path(out).expanduser().absolute()
    _check_out(out)
    src = resolve_source(run, config)
    if fmt == "gguf":
        _check_architecture(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        # The logit check of merge.py runs first: adapter vs merged weights.
        result: dict[str, Any] = export_merged(src, tmp if fmt == "safetensors" else tmp / "merged")
        if fmt == "gguf":
            result |= _gguf(src, tmp / "merged", tmp, quant, ollama, parity_n, quiet)
        library = "transformers"
        tags = ["gguf", quant] if fmt == "gguf" else ["merged"]
        (tmp / "README.md").write_text(
            model_card(src, library=library, extra_tags=tags, usage=_usage(fmt, out, result),
                       notes=_notes(result)), encoding="utf-8")
        _check_out(out)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TuneloopError(f"{out.parent}: the disk is full ({e.strerror}); nothing was "
                                f"written to {out}") from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result |= {"out": str(out), "format": fmt, "source": str(src),
               "files": sorted(p.name for p in out.iterdir())}
    return result
