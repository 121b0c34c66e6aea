"""`tuneloop config schema | show`: the tuneloop.yaml schema, and a config resolved."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tuneloop.config import json_schema, load_config
from tuneloop.options import ConfigArg, SetOpt

config_app = typer.Typer(help="Inspect and validate tuneloop.yaml.", no_args_is_help=True)


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of tuneloop.yaml (every key, its type, default and meaning)."""
    sys.stdout.write(json_schema() + "\n")


@config_app.command("show")
def config_show(config: ConfigArg = Path("."), set_: SetOpt = None) -> None:
    """Validate CONFIG and print it resolved (defaults filled in, paths made absolute)."""
    sys.stdout.write(load_config(config, set_).to_yaml())


def register(app: typer.Typer) -> None:
    """Mount the `config` sub-app."""
    app.add_typer(config_app, name="config")
