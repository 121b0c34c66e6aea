"""CLI for the model registry: `tuneloop registry add|list|show|promote|rollback`.

Imports of the stage's logic sit inside the commands so `tuneloop --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.config import load_config
from tuneloop.console import out, print_json
from tuneloop.errors import TuneloopError
from tuneloop.options import ConfigOpt, JsonOpt, config_path
from tuneloop.registry.registry import Registry, Version

RegistryOpt = Annotated[Path | None, typer.Option(
    "--registry", help="The registry folder itself (overrides --config).")]

registry_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="markdown",
    help="Model versions (a run's adapter + its provenance) and the **champion** / **challenger** "
         "aliases the server and the retrain gate use.\n\n"
         "The first version you add becomes the champion. Example:\n\n"
         "`tuneloop registry add runs/lora-20250101-120000` then `tuneloop registry list`.")


def open_registry(config: Path | None, registry: Path | None) -> Registry:
    """The registry named by --registry, else by the config's registry.dir."""
    if registry is not None:
        return Registry(registry)
    path = config_path(config)
    if not (path.exists() and (path.is_file() or (path / "tuneloop.yaml").exists())):
        raise TuneloopError(f"{path}: no tuneloop.yaml found; pass --config tuneloop.yaml or "
                            "--registry DIR")
    return Registry.from_config(load_config(path))


def _row(v: Version, aliases: dict[str, str]) -> dict:
    names = [a for a, vid in aliases.items() if vid == v.id]
    m = v.metrics
    return {"id": v.id, "aliases": names, "created": v.created, "parent": v.parent,
            "method": (v.config.get("method") or {}).get("name"), "base_model": v.base_model,
            "data_hash": v.data_hash[:12], "val_loss": m.get("best_val_loss", m.get("val_loss")),
            "note": v.note}


@registry_app.command("add")
def add_cmd(run: Annotated[Path, typer.Argument(help="A finished run folder from `tuneloop train`.")],
            parent: Annotated[str | None, typer.Option(
                help="Version it was trained from (default: found from method.init_adapter).")] = None,
            note: Annotated[str, typer.Option(help="Free text kept in the provenance.")] = "",
            challenger: Annotated[bool, typer.Option(
                "--challenger", help="Also point the challenger alias at it.")] = False,
            config: ConfigOpt = None, registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """Register RUN as a new version vN: copies its adapter, tokenizer, config and metrics and
    records the data hash and parent. Only safetensors weights are accepted."""
    reg = open_registry(config, registry)
    v = reg.register(run, parent=parent, note=note, alias="challenger" if challenger else None)
    if json_:
        print_json(_row(v, reg.aliases()) | {"path": str(v.path)})
        return
    names = [a for a, vid in reg.aliases().items() if vid == v.id]
    out.print(f"registered {v.id} from {run}" + (f" ({', '.join(names)})" if names else ""))


@registry_app.command("list")
def list_cmd(config: ConfigOpt = None, registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """Every version with its aliases, parent, method and validation loss."""
    reg = open_registry(config, registry)
    aliases = reg.aliases()
    rows = [_row(v, aliases) for v in reg.versions()]
    if json_:
        print_json({"registry": str(reg.root), "aliases": aliases, "versions": rows})
        return
    if not rows:
        out.print(f"registry {reg.root} is empty; add a run with `tuneloop registry add RUN`")
        return
    from rich.table import Table

    t = Table(title=f"registry {reg.root}")
    for col in ("id", "aliases", "created", "parent", "method", "val loss", "data", "note"):
        t.add_column(col)
    for r in rows:
        vl = r["val_loss"]
        t.add_row(r["id"], ", ".join(r["aliases"]), r["created"][:16].replace("T", " "), r["parent"] or "",
                  r["method"] or "",
                  f"{vl:.4f}" if isinstance(vl, int | float) else "", r["data_hash"], r["note"])
    out.print(t)


@registry_app.command("show")
def show_cmd(ref: Annotated[str, typer.Argument(help="Version id (v3) or alias (champion).")] = "champion",
             config: ConfigOpt = None, registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """Provenance of one version: base model, data hash, parent, metrics, config."""
    reg = open_registry(config, registry)
    v = reg.get(ref)
    d = v.as_dict() | {"aliases": [a for a, vid in reg.aliases().items() if vid == v.id]}
    if json_:
        print_json(d)
        return
    for k in ("id", "aliases", "kind", "path", "base_model", "data_hash", "parent", "created", "note"):
        out.print(f"[bold]{k}[/bold]: {d[k]}", highlight=False)
    keep = {k: v.metrics[k] for k in ("steps", "train_loss", "val_loss", "best_val_loss", "examples",
                                      "method", "train_seconds") if k in v.metrics}
    out.print(f"[bold]metrics[/bold]: {json.dumps(keep)}", highlight=False)


@registry_app.command("promote")
def promote_cmd(ref: Annotated[str, typer.Argument(help="Version id or alias to make champion.")],
                reason: Annotated[str, typer.Option(help="Why; kept in the history.")] = "manual",
                config: ConfigOpt = None, registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """Make REF the champion (atomic). `tuneloop registry rollback` undoes it."""
    reg = open_registry(config, registry)
    _print_change(reg.aliases().get("champion"), reg.promote(ref, {"reason": reason}), json_)


@registry_app.command("rollback")
def rollback_cmd(config: ConfigOpt = None, registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """Make the previous champion the champion again."""
    reg = open_registry(config, registry)
    _print_change(reg.aliases().get("champion"), reg.rollback(), json_, " (rolled back)")


def _print_change(old: str | None, new: Version, json_: bool, note: str = "") -> None:
    if json_:
        print_json({"champion": new.id, "previous": old})
    else:
        out.print(f"champion: {old} -> {new.id}{note}")


@registry_app.command("history")
def history_cmd(config: ConfigOpt = None, registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """Every promotion, rollback and alias change, with its evidence."""
    reg = open_registry(config, registry)
    hist = reg.history()
    if json_:
        print_json({"history": hist})
        return
    for e in hist:
        ev = json.dumps(e.get("evidence") or {})
        out.print(f"{e['time']}  {e['action']:<8} {e.get('alias', '')}: {e.get('from')} -> "
                  f"{e.get('to')}  {ev[:100]}", highlight=False)


def register(app: typer.Typer) -> None:
    """Mount the `registry` sub-app."""
    app.add_typer(registry_app, name="registry")
