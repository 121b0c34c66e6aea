"""`tuneloop export`: parse, call one exporter, print (heavy imports inside: a fast --help)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import err, out, print_json
from tuneloop.errors import TuneloopError
from tuneloop.options import ConfigOpt, JsonOpt, QuietOpt


def export(run: Annotated[str, typer.Argument(
               help="A run folder from `tuneloop train`, or a registry reference (champion, "
                    "challenger, v3) with --config.")],
           out_dir: Annotated[Path | None, typer.Option(
               "--out", help="Output folder (must not exist or be empty).")] = None,
           fmt: Annotated[str, typer.Option(
               "--format", help="safetensors (merged weights + tokenizer) or gguf (one file for "
                                "llama.cpp / Ollama).")] = "safetensors",
           quant: Annotated[str, typer.Option(
               help="GGUF tensor type: f16, q8_0, or q4_k_m (needs llama-cpp-python: the "
                    "[export] extra).")] = "f16",
           ollama: Annotated[bool, typer.Option(
               "--ollama", help="Also write OUT/Modelfile (template, stop tokens, system prompt).")
           ] = False,
           parity_n: Annotated[int, typer.Option(
               "--parity-n", min=0, help="GGUF: test prompts whose greedy answers must match "
                                         "the run's (0 skips the check).")] = 50,
           merge: Annotated[Path | None, typer.Option(
               "--merge", help="Alias of --out DIR --format safetensors.")] = None,
           config: ConfigOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Merge the adapter into full-precision base weights and write it where people run models.

    `--format safetensors`: plain transformers loads the folder; the largest logit difference
    between adapter and merged model must stay under the tolerance (else exit 2).
    `--format gguf`: one GGUF file with tokenizer, chat template, BOS/EOS/end-of-turn ids and
    architecture metadata (Llama, Gemma 3); transformers reads it back and its greedy answers
    on the config's first N test prompts must match the run's (F16: at least 95%, else exit 1
    and nothing is written). Every export gets a README.md model card.
    """
    from tuneloop.export.exporter import export_run
    from tuneloop.export.parity import ParityError

    if (out_dir is None) == (merge is None):
        raise TuneloopError("give the output folder once: --out DIR (or --merge DIR)")
    if merge is not None:
        if fmt not in ("safetensors",):
            raise TuneloopError("--merge DIR means --format safetensors; use --out DIR with "
                                f"--format {fmt}")
        out_dir = merge
    try:
        res = export_run(run, out_dir, fmt, quant, ollama, parity_n, config, quiet or json_)
    except ParityError as e:
        if json_:
            print_json({"ok": False, "error": str(e), "parity": e.result})
        else:
            err.print(f"error: {e}", style="red", highlight=False, markup=False)
        raise typer.Exit(1) from None
    if json_:
        print_json(res)
        return
    out.print(f"wrote {res['out']} ({', '.join(res['files'])}); max logit difference adapter vs "
              f"merged {res['max_logit_diff']:.2e} (tolerance {res['tolerance']:.0e})")
    if "gguf" in res:
        g = res["gguf"]
        out.print(f"GGUF {g['file']}: {g['architecture']}, {g['quant']}, {g['bytes'] / 1e6:.1f} MB, "
                  f"tensors {g['tensor_types']}")
    par = res.get("parity")
    for reader in ("transformers", "llama_cpp"):
        r = (par or {}).get(reader)
        if r:
            d = r["metric_diff"]
            out.print(f"parity ({reader}): {r['agreement']:.0%} of {r['prompts']} {par['split']} "
                      f"prompts answered as the run; {r['metric']} {r['file_metric']['value']} vs "
                      f"run {r['run_metric']['value']} (diff {d['diff']:+.3f}, 95% CI {d['ci']})")
    if par and par.get("llama_cpp") is None:
        out.print("parity (llama.cpp): not checked; install llama-cpp-python (the [export] extra)",
                  markup=False)
    if "modelfile" in res:
        m = res["modelfile"]
        out.print(f"Modelfile: TEMPLATE matches the tokenizer's chat template on "
                  f"{m['conversations_checked']} conversations; stop {m['stop']}")


def register(app: typer.Typer) -> None:
    """Mount `tuneloop export`."""
    app.command()(export)
