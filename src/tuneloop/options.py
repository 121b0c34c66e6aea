"""The CLI options every stage shares, defined once: CONFIG, --set, --json, --quiet.

CONFIG has one meaning and one default everywhere: a tuneloop.yaml or the folder holding it,
the current folder when left out. It is the positional argument of the commands that act on a
project (train, eval, select, monitor, ...) and `--config/-c` of those whose argument is
something else (a data file, a registry version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CONFIG_HELP = "tuneloop.yaml or the folder holding it (default: the current folder)."
DEFAULT_CONFIG = Path(".")

ConfigArg = Annotated[Path, typer.Argument(help=CONFIG_HELP, metavar="CONFIG", show_default=False)]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help=CONFIG_HELP, show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config key, e.g. --set train.learning_rate=1e-4 (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def config_path(config: Path | None) -> Path:
    """The config a command reads: the one given, else the current folder's tuneloop.yaml."""
    return DEFAULT_CONFIG if config is None else config
