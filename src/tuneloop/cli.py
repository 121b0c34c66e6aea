"""The `tuneloop` command: mounts each stage's commands and maps errors to exit codes.

Each stage owns its commands in its own `commands.py` (data/, train/, evaluate/, ...); this
file only mounts them, sets process-wide settings in `main()`, and turns TuneloopError into a
clean message and exit code 2.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from tuneloop import config_commands
from tuneloop.console import err
from tuneloop.data import commands as data
from tuneloop.errors import TuneloopError
from tuneloop.evaluate import commands as evaluate
from tuneloop.export import commands as export
from tuneloop.monitor import commands as monitor
from tuneloop.recipes import commands as recipes
from tuneloop.registry import commands as registry
from tuneloop.retrain import commands as retrain
from tuneloop.select import commands as select
from tuneloop.serve import commands as serve
from tuneloop.train import commands as train
from tuneloop.ui import commands as ui

app = typer.Typer(
    name="tuneloop", no_args_is_help=True, rich_markup_mode="markdown", add_completion=False,
    help="Data-efficient fine-tuning: audit data, pick a base model by measurement, train with "
         "PEFT, evaluate against prompting baselines, serve, monitor and re-tune.\n\n"
         "Start with `tuneloop quickstart`.")


# The loop's stages in order; each module's `register(app)` mounts its commands. The modules
# import nothing heavy at the top (torch loads inside a command), so `--help` stays fast.
for stage in (recipes, data, train, evaluate, select, registry, export, serve, monitor, retrain,
              config_commands, ui):
    stage.register(app)


def _click_classes(name: str) -> tuple[type, ...]:
    """click's exception class, and the copy typer >= 0.29 vendors (its parser raises that one)."""
    classes = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored  # why: absent before typer 0.29
        classes += [c for c in (getattr(vendored, name, None),) if c is not None]
    except ImportError:
        pass
    return tuple(classes)


_CLICK_ERRORS = _click_classes("ClickException")
_CLICK_ABORTS = _click_classes("Abort")


def main() -> None:
    """The `tuneloop` entry point: process settings first, then the command."""
    # Before torch loads OpenMP: idle threads sleep instead of spinning. On a busy or shared CPU
    # spinning threads starve the working ones (label scoring measured 9x slower, 90 s vs 11 s);
    # on a quiet machine the cost is small. An explicit setting by the user wins. Set here, not
    # at import, so importing tuneloop as a library changes nothing process-wide.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        rv = app(standalone_mode=False)
    except TuneloopError as e:
        err.print(f"error: {e}", style="red", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # click's usage errors arrive here in non-standalone mode
        if isinstance(e, _CLICK_ERRORS):
            e.show()
            sys.exit(2 if e.exit_code == 1 else e.exit_code)  # a bad option value is a usage error
        if isinstance(e, _CLICK_ABORTS):
            sys.exit(1)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
