"""The `tuneloop` command: thin wrappers that parse, call one function and print.

Each stage owns its commands in its own module (data/commands.py, evaluate/commands.py, ...);
this file only mounts them and turns TuneloopError into a clean message and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from tuneloop.errors import TuneloopError

app = typer.Typer(
    name="tuneloop", no_args_is_help=True, rich_markup_mode="markdown", add_completion=False,
    help="Data-efficient fine-tuning: audit data, pick a base model by measurement, train with "
         "PEFT, evaluate against prompting baselines, serve, monitor and re-tune.\n\n"
         "Start with `tuneloop quickstart`.")


def _mount() -> None:
    # Imported here so `tuneloop --help` stays fast and a broken optional stage cannot hide
    # the others; each module exposes `register(app)`.
    from tuneloop import commands_core

    commands_core.register(app)
    for mod in ("tuneloop.data.commands", "tuneloop.evaluate.commands",
                "tuneloop.select.commands", "tuneloop.registry.commands", "tuneloop.serve.commands",
                "tuneloop.monitor.commands"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                continue  # stage not built yet
            raise
        module.register(app)


_mount()


def main() -> None:
    try:
        rv = app(standalone_mode=False)
    except TuneloopError as e:
        from tuneloop.console import err

        err.print(f"error: {e}", style="red", highlight=False, markup=False)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
