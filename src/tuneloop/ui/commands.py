"""`tuneloop ui`: the web app over a project folder (runs, evaluation, data, registry, traffic).

Heavy imports (FastAPI, uvicorn, the app) sit inside the command so `tuneloop --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import err
from tuneloop.options import ConfigArg

RATER_KEYS_ENV = "TUNELOOP_RATER_KEYS"


def build(config: Path, host: str = "127.0.0.1", rater_keys_env: str = RATER_KEYS_ENV):
    """(app, project, policy) for a project, after the bind check of `tuneloop serve`."""
    from tuneloop.serve.guard import check_bind, is_loopback
    from tuneloop.ui.access import AccessPolicy, parse_rater_keys
    from tuneloop.ui.app import create_app
    from tuneloop.ui.project import Project, find_config, work_folder_config

    project = Project(find_config(config))
    inner = work_folder_config(project.cfg)
    if inner is not None:  # e.g. `tuneloop ui examples/clinc150-drift` after its run_demo.py
        err.print(
            f"note: {project.config_file} has an empty registry; showing the newer project in "
            f"{inner.parent} (pass that folder to choose it explicitly)",
            highlight=False,
        )
        project = Project(inner)
    env = project.cfg.serve.api_key_env
    key = os.environ.get(env) or None
    check_bind(host, key, env)
    policy = AccessPolicy(
        admin_key=key,
        rater_keys=parse_rater_keys(os.environ.get(rater_keys_env)),
        allowed_hosts=set() if is_loopback(host) else {host},
    )
    return create_app(project, policy), project, policy


def ui(
    config: ConfigArg = Path("."),
    host: Annotated[
        str,
        typer.Option(help="Interface to bind. Beyond loopback the API key is required (serve.api_key_env)."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8800,
    rater_keys_env: Annotated[
        str,
        typer.Option(
            help="Env var with rater keys, 'name:key,name:key': each signs a rater in under their "
            "name, and may only rate."
        ),
    ] = RATER_KEYS_ENV,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """A local web app over the project: runs (live curves), evaluation (systems, per-class
    scores, predictions side by side), data card, registry (promote, roll back), monitor
    (traffic and drift over time, gate decisions), review (rate logged outputs; stored as
    feedback for `tuneloop retrain`) and a playground. Every page also answers as JSON under
    /api (e.g. /api/runs).

    Loopback only unless the API key is set (the same rule and key as `tuneloop serve`).
    Example: `tuneloop ui examples/support-intents`, then open http://127.0.0.1:8800.
    """
    import uvicorn

    app, project, policy = build(config, host, rater_keys_env)
    auth = (
        "API key required (sign in at /login)"
        if policy.keyed
        else "no API key: loopback only, the local user may change anything"
    )
    raters = f"; {len(policy.rater_keys)} rater keys" if policy.rater_keys else ""
    err.print(f"tuneloop ui for {project.root} on http://{host}:{port} ({auth}{raters})", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def register(app: typer.Typer) -> None:
    """Mount `tuneloop ui`."""
    app.command("ui")(ui)
