"""`tuneloop serve | generate | chat`: answer with a registered or trained model.

Heavy imports (torch, uvicorn, the [serve] extra) sit inside the commands: a fast `--help`.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import err, out, print_json
from tuneloop.options import ConfigArg, JsonOpt


def build(config: Path, model: str = "champion", store: str | None = None, preload: bool = True,
          max_batch: int = 16, precision: str = "fp32"):
    """(app, settings, cfg) for a project: registry + base model + traffic store from its config.

    Everything a user can get wrong (precision, a store that cannot be written, an empty or
    unreadable registry) is checked before the model loads; a version that does not load is a
    TuneloopError naming it.
    """
    from tuneloop.config import load_config
    from tuneloop.errors import TuneloopError
    from tuneloop.models.load import choose_placement
    from tuneloop.registry.registry import Registry
    from tuneloop.serve.app import ServeSettings, create_app
    from tuneloop.serve.engine import BASE, ModelPool
    from tuneloop.serve.guard import read_api_key
    from tuneloop.serve.store import TrafficStore, store_url

    cfg = load_config(config)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise TuneloopError(f"--precision {precision!r}: use fp32, bf16, fp16 or auto")
    registry = Registry.from_config(cfg)
    try:
        has_versions = bool(registry.versions())
        registry.aliases()  # a corrupt registry.json is named now, not at the first request
    except (OSError, ValueError) as e:  # e.g. a provenance.json that is not JSON
        raise TuneloopError(f"registry {registry.root} cannot be read ({type(e).__name__}: {e}); "
                            "restore the file or remove the broken version folder") from e
    if model != BASE and not has_versions:
        raise TuneloopError(f"registry {registry.root} has no versions to serve as {model!r}; "
                            "register a run (`tuneloop registry add RUN`) or serve the base model "
                            "with --model base")
    traffic = TrafficStore(store or store_url(cfg), check_writable=True)
    try:
        placement = choose_placement(cfg.model.device, cfg.model.dtype if precision == "auto" else precision)
        pool = ModelPool(registry, cfg.model.name, placement, max_batch=max_batch)
        if preload:  # load at start-up, so the first request is not the one that waits
            pool.handle(pool.resolve(model))
    except BaseException:
        traffic.close()
        raise
    settings = ServeSettings.from_config(cfg, read_api_key(cfg.serve.api_key_env)[0], model)
    app = create_app(pool, traffic, settings)
    return app, settings, cfg


def parse_port(port: str) -> int:
    """--port as a number 1-65535, else a TuneloopError (checked before anything loads)."""
    from tuneloop.errors import TuneloopError

    if not port.strip().isdigit() or not 1 <= int(port) <= 65535:
        raise TuneloopError(f"--port {port!r}: use a TCP port number from 1 to 65535, e.g. --port 8000")
    return int(port)


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so a port in use or a wrong host fails before any model
    loads (uvicorn then serves on this very socket: nothing can take the port in between)."""
    from tuneloop.errors import TuneloopError

    try:
        family, kind, proto, _name, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise TuneloopError(f"--host {host}: not an address of this machine ({e.strerror}); use e.g. "
                            "127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        why = {errno.EADDRINUSE: "is already in use (another server?): stop it or pick another --port",
               errno.EACCES: "needs privileges (ports below 1024): pick --port 1024 or higher",
               errno.EADDRNOTAVAIL: f"cannot be bound: {host} is not an address of this machine"}
        raise TuneloopError(f"--port {port} on {host} {why.get(e.errno, f'cannot be bound ({e.strerror})')}"
                            ) from None
    sock.set_inheritable(True)
    return sock


def serve(
    config: ConfigArg = Path("."),
    model: Annotated[str, typer.Option(
        help="Model to load at start-up and to answer `model: \"default\"`: an alias (champion, "
             "challenger), a version id (v3) or `base`. Clients may name any registered version.")]
        = "champion",
    host: Annotated[str, typer.Option(help="Interface to bind. Beyond loopback an API key is required.")]
        = "127.0.0.1",
    port: Annotated[str, typer.Option(metavar="PORT", help="TCP port (1-65535).")] = "8000",
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

    Limits (serve.* in the config): requests over max_stop_strings, max_stop_chars,
    max_messages, max_message_chars or max_prompt_tokens get 400 naming the limit; one past
    request_timeout_s gets 504. SIGINT/SIGTERM stop accepting, let requests in flight finish for
    up to shutdown_timeout_s, then stop what still runs. Every completion request is logged,
    with its status and error class.
    """
    # Before torch (and its OpenMP) loads: waiting threads spin 2,000 rounds before they sleep.
    # The CLI's passive waiting wakes every thread for each of the thousands of small kernels
    # a decoding step runs; measured (2 cores, fp32, 8 prompts x 8 tokens) 1.05 s per batch
    # spinning briefly against 1.45 s passive, and at 8 clients p50 1.26 s against 1.9 s. On a
    # CPU that other work keeps busy it costs: 2.4 s against 1.8 s. A user's setting wins.
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")
    import uvicorn

    from tuneloop.config import load_config
    from tuneloop.serve.guard import check_bind, read_api_key
    from tuneloop.serve.store import display_url

    cfg = load_config(config)
    key, warning = read_api_key(cfg.serve.api_key_env)
    if warning:
        err.print(f"warning: {warning}", style="yellow", highlight=False, markup=False)
    check_bind(host, key, cfg.serve.api_key_env)
    sock = bind_socket(host, parse_port(port))  # before the model loads: a port in use fails at once
    app = None
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        app, settings, cfg = build(config, model, store, max_batch=max_batch, precision=precision)
        auth = (f"bearer key from ${cfg.serve.api_key_env}" if settings.api_key
                else "no API key (loopback only)")
        err.print(f"serving {model} on http://{host}:{port}/v1 ({auth}); traffic log: "
                  f"{display_url(app.state.store.url)}", highlight=False, markup=False)
        server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level=log_level,
            timeout_graceful_shutdown=cfg.serve.shutdown_timeout_s))
        server.run(sockets=[sock])
    finally:
        sock.close()
        if app is not None:  # a forced exit skips the app's shutdown: stop generation here too
            app.state.pool.close()


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
