"""`tuneloop export`: parse, call one exporter, print (heavy imports inside: a fast --help)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import out, print_json
from tuneloop.options import JsonOpt


def export(run: Annotated[Path, typer.Argument(help="A run folder from `tuneloop train`.")],
           merge: Annotated[Path, typer.Option(
               "--merge", help="Output folder for merged safetensors + tokenizer.")],
           json_: JsonOpt = False) -> None:
    """Merge the adapter into the base weights; plain transformers loads the result.

    Checks parity: the largest logit difference between adapter and merged model must stay
    under the stated tolerance, else the export is reported as failed (exit 2).
    """
    from tuneloop.export.merge import export_merged

    res = export_merged(run, merge)
    if json_:
        print_json(res)
    else:
        out.print(f"wrote {res['out']}; max logit difference {res['max_logit_diff']:.2e} "
                  f"(tolerance {res['tolerance']:.0e})")


def register(app: typer.Typer) -> None:
    """Mount `tuneloop export`."""
    app.command()(export)
