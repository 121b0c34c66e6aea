"""`tuneloop serve | generate | chat`: answer with a registered or trained model.

Heavy imports (torch, uvicorn, the [serve] extra) sit inside the commands: a fast `--help`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import err, out, print_json
from tuneloop.options import ConfigArg, JsonOpt


def build(config: Path, model: str = "champion", store: str | None = None, preload: bool = True,
          max_batch: int = 16, precision: str = "fp32"):
    """(app, settings) for a project: registry + base model + traffic store from its config."""
    from tuneloop.config import load_config
    from tuneloop.errors import TuneloopError
    from tuneloop.models.load import choose_placement
    from tuneloop.registry.registry import Registry
    from tuneloop.serve.app import ServeSettings, create_app
    from tuneloop.serve.engine import BASE, ModelPool
    from tuneloop.serve.store import TrafficStore, store_url

    cfg = load_config(config)
    registry = Registry.from_config(cfg)
    has_versions = bool(registry.versions())
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise TuneloopError(f"--precision {precision!r}: use fp32, bf16, fp16 or auto")
    placement = choose_placement(cfg.model.device, cfg.model.dtype if precision == "auto" else precision)
    pool = ModelPool(registry, cfg.model.name, placement, max_batch=max_batch)
    if model != BASE and not has_versions:
        raise TuneloopError(f"registry {registry.root} has no versions to serve as {model!r}; register "
                            "a run (`tuneloop registry add RUN`) or serve the base model with --model base")
    if preload:  # load at start-up, so the first request is not the one that waits
        pool.handle(pool.resolve(model))
    settings = ServeSettings(api_key=os.environ.get(cfg.serve.api_key_env) or None,
                             max_tokens=cfg.serve.max_tokens, max_body_bytes=cfg.serve.max_body_bytes,
                             default_model=model)
    app = create_app(pool, TrafficStore(store or store_url(cfg)), settings)
    return app, settings, cfg


def serve(
    config: ConfigArg = Path("."),
    model: Annotated[str, typer.Option(
        help="Model to load at start-up and to answer `model: \"default\"`: an alias (champion, "
             "challenger), a version id (v3) or `base`. Clients may name any registered version.")]
        = "champion",
    host: Annotated[str, typer.Option(help="Interface to bind. Beyond loopback an API key is required.")]
        = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    store: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL of the traffic log (default: serve.store_url, else REGISTRY/traffic.db).")]
        = None,
    max_batch: Annotated[int, typer.Option(
        min=1, help="Most greedy requests generated together (requests that queue up while a batch "
                    "runs form the next one).")] = 16,
    precision: Annotated[str, typer.Option(
        help="fp32 (the numerics `tuneloop eval` measured), bf16 (autocast; faster on CPUs with AMX, "
             "answers may differ slightly) or auto (model.dtype of the config).")] = "fp32",
    threads: Annotated[int | None, typer.Option(
        min=1, help="Torch CPU threads (default: torch's choice). On a busy shared CPU, 1 can be "
                    "much faster than oversubscribed cores.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve registered models with an OpenAI-compatible API and log every request.

    Endpoints: `/v1/chat/completions` (also `stream: true`), `/v1/completions`, `/v1/models`,
    `/v1/feedback` (rating, corrected answer or label for a completion `id`), `/health`,
    `/metrics` (Prometheus). The `model` field picks the version: `champion`, `challenger`,
    `v3` or `base`; aliases are re-read per request, so `tuneloop registry promote` takes effect
    without a restart.

    Example: `tuneloop serve examples/support-intents --model champion --port 8000`, then
    `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")`.
    """
    import uvicorn

    from tuneloop.config import load_config
    from tuneloop.serve.guard import check_bind

    cfg = load_config(config)
    check_bind(host, os.environ.get(cfg.serve.api_key_env) or None, cfg.serve.api_key_env)
    if threads:
        import torch

        torch.set_num_threads(threads)
    app, settings, cfg = build(config, model, store, max_batch=max_batch, precision=precision)
    auth = f"bearer key from ${cfg.serve.api_key_env}" if settings.api_key else "no API key (loopback only)"
    err.print(f"serving {model} on http://{host}:{port}/v1 ({auth}); traffic log: "
              f"{app.state.store.url}", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def generate(
    run: Annotated[Path, typer.Argument(help="A run folder from `tuneloop train`.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply.")] = 128,
    system: Annotated[str | None, typer.Option(help="Optional system message.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Reply to one message with the fine-tuned model (base + adapter)."""
    from tuneloop.models.generate import generate as gen
    from tuneloop.records import Message
    from tuneloop.runs import load_run_model

    model, tok, cfg = load_run_model(run)
    msgs = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    if cfg.task.system_prompt and not system:
        msgs.insert(0, Message("system", cfg.task.system_prompt))
    reply = gen(model, tok, [msgs], max_new_tokens)[0]
    print_json({"reply": reply}) if json_ else out.print(reply, markup=False, highlight=False)


def chat(run: Annotated[Path, typer.Argument(help="A run folder from `tuneloop train`.")],
         max_new_tokens: Annotated[int, typer.Option(help="Longest reply.")] = 256) -> None:
    """Talk to the fine-tuned model in the terminal (empty line or Ctrl-D to quit)."""
    from tuneloop.models.generate import generate as gen
    from tuneloop.records import Message
    from tuneloop.runs import load_run_model

    model, tok, cfg = load_run_model(run)
    history = [Message("system", cfg.task.system_prompt)] if cfg.task.system_prompt else []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append(Message("user", line))
        reply = gen(model, tok, [history], max_new_tokens)[0]
        history.append(Message("assistant", reply))
        out.print(f"model> {reply}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Mount `serve`, `generate` and `chat`."""
    app.command("serve")(serve)
    app.command()(generate)
    app.command()(chat)
