"""Fault injection for `tuneloop serve`: what a hostile client or a careless operator does, and
what must happen. Read the two tables; the tests below them only run each row.

HTTP_CASES: one request each against a live server (uvicorn on loopback, tiny model). Besides
the status and the message fragment, every case checks that the answer came within a few
seconds (no hang), that no server path is in the response, that a completion request is in
the traffic log with that status and error class (and that nothing else is), that the
registry on disk is byte-identical afterwards and that no temp file is left.

CLI_CASES: one `tuneloop serve` command line each, run through the CLI's real entry point.
Each must exit 2 with the message, before any model is loaded (unless loading is the fault),
without printing "serving" or a traceback, leaving the project's files byte-identical (an empty
traffic store may be new: it is checked before the model loads) and no temp file.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import write_classification_project
from test_registry import trained_run
from tuneloop.registry.registry import Registry
from tuneloop.serve.app import ServeSettings, create_app
from tuneloop.serve.engine import ModelPool
from tuneloop.serve.store import TrafficStore

CHAT, COMPLETIONS, FEEDBACK, HEALTH = "/v1/chat/completions", "/v1/completions", "/v1/feedback", "/health"
USER = [{"role": "user", "content": "where is my card"}]


def chat(**kw: Any) -> dict:
    return {"model": "champion", "messages": USER, "max_tokens": 4} | kw


@dataclass
class Case:
    name: str
    path: str
    body: Any                  # dict: sent as JSON; str: sent as is; None: GET
    status: int
    fragment: str              # in the error message (or the /health body)
    logged: str | None = None  # error class the traffic log records (prefix); None: no row
    fault: str | None = None   # what is broken while the request runs (see FAULTS)


# The server under test: limits made small so each case is cheap (see `server` below).
LIMITS = dict(max_tokens=16, max_stop_strings=16, max_stop_chars=64, max_messages=8,
              max_message_chars=2000, max_prompt_tokens=200, request_timeout_s=30.0,
              labels=["card_arrival", "exchange_rate"])

HTTP_CASES = [
    # Item 1: one request must not hold the server: every limit is a 400 naming its config key.
    Case("10,000 stop strings (held the server 17 min)", CHAT, chat(stop=["a"] * 10_000), 400,
         "serve.max_stop_strings", "too_many_stop_strings"),
    Case("17 stop strings", CHAT, chat(stop=[f"s{i}" for i in range(17)]), 400,
         "serve.max_stop_strings", "too_many_stop_strings"),
    Case("a 65-character stop string", CHAT, chat(stop=["x" * 65]), 400,
         "serve.max_stop_chars", "stop_string_too_long"),
    Case("9 messages", CHAT, chat(messages=USER * 9), 400, "serve.max_messages", "too_many_messages"),
    Case("a 2,001-character message", CHAT, chat(messages=[{"role": "user", "content": "x" * 2001}]),
         400, "serve.max_message_chars", "message_too_long"),
    Case("a 2,001-character completions prompt", COMPLETIONS,
         {"model": "champion", "prompt": "x" * 2001, "max_tokens": 4}, 400,
         "serve.max_message_chars", "message_too_long"),
    Case("a prompt over 200 tokens", CHAT, chat(messages=[{"role": "user", "content": "card " * 300}]),
         400, "serve.max_prompt_tokens", "prompt_too_long"),
    Case("max_tokens above the limit", CHAT, chat(max_tokens=17), 400, "serve.max_tokens",
         "max_tokens_exceeded"),
    Case("n=2", CHAT, chat(n=2), 400, "only n=1", "ApiError"),
    Case("a body that is not JSON", CHAT, '{"model": "champion", "messages": [', 400,
         "not valid JSON", "invalid_request"),
    Case("no messages", CHAT, chat(messages=[]), 400, "messages", "invalid_request"),
    # Item 2: the deadline. Generation stops; the client gets 504; the row says so.
    Case("sampled generation past the deadline", CHAT, chat(max_tokens=16, temperature=1.0), 504,
         "serve.request_timeout_s", "DeadlineExceeded", fault="slow_model"),
    Case("batched greedy generation past the deadline", CHAT, chat(max_tokens=16), 504,
         "serve.request_timeout_s", "DeadlineExceeded", fault="slow_model"),
    Case("model busy past the deadline", CHAT, chat(temperature=1.0), 504, "serve.request_timeout_s",
         "DeadlineExceeded", fault="model_busy"),
    # Items 3 and 4: failures are logged with their class; no server path in any answer.
    Case("unknown version", CHAT, chat(model="v99"), 404, "not found", "UnknownModel"),
    Case("a path as model name", CHAT, chat(model="/etc/passwd"), 404, "invalid model name",
         "UnknownModel"),
    Case("an alias nobody holds", CHAT, chat(model="challenger"), 404, "no challenger", "UnknownModel"),
    Case("a version whose adapter is truncated", CHAT, chat(model="v2"), 500, "cannot be loaded",
         "ModelLoadFailed"),
    Case("a corrupt registry.json", CHAT, chat(), 503, "registry.json", "RegistryUnavailable",
         fault="corrupt_registry"),
    Case("/v1/models with a corrupt registry.json", "/v1/models", None, 503, "registry.json",
         fault="corrupt_registry"),
    Case("/health with a corrupt registry.json", HEALTH, None, 503, "RegistryUnavailable",
         fault="corrupt_registry"),
    Case("/health with the champion's adapter truncated", HEALTH, None, 503, "cannot be loaded",
         fault="broken_champion"),
    # Item 7 (feedback): out-of-range values are refused, naming the field.
    Case("feedback rating 1e9", FEEDBACK, {"request_id": "x", "rating": 1e9}, 400, "rating"),
    Case("feedback rating NaN", FEEDBACK, '{"request_id": "x", "rating": NaN}', 400, "rating"),
    Case("feedback rating -2", FEEDBACK, {"request_id": "x", "rating": -2}, 400, "rating"),
    Case("feedback label outside the task's labels", FEEDBACK, {"request_id": "x", "label": "pizza"},
         400, "task.labels"),
]


@dataclass
class CliCase:
    name: str
    args: list[str]              # after `tuneloop serve PROJECT`; {busy}, {tmp} are filled in
    fragment: str                # in the error message
    env: dict[str, str] = field(default_factory=dict)
    fault: str | None = None     # "corrupt_registry" or "truncated_champion" (done to the project)
    loads_model: bool = False    # loading the model is the fault itself
    hidden: str | None = None    # must not appear in the output (a password)


CLI_CASES = [
    CliCase("--port 0", ["--port", "0"], "1 to 65535"),
    CliCase("--port 70000", ["--port", "70000"], "1 to 65535"),
    CliCase("--port http", ["--port", "http"], "1 to 65535"),
    CliCase("a port in use (printed 'serving', then exit 3)", ["--port", "{busy}"], "already in use"),
    CliCase("--host that is not this machine's", ["--host", "192.0.2.1", "--port", "{free}"],
            "not an address of this machine", env={"TUNELOOP_API_KEY": "k"}),
    CliCase("an API key of spaces off loopback", ["--host", "0.0.0.0"], "API key",
            env={"TUNELOOP_API_KEY": "   "}),
    CliCase("--store that is a folder", ["--store", "sqlite:///{tmp}"], "is a folder"),
    CliCase("--store under a file", ["--store", "sqlite:///{tmp}/tuneloop.yaml/traffic.db"],
            "cannot create folder"),
    CliCase("--store opened read-only", ["--store", "sqlite:///file:{tmp}/ro.db?mode=ro&uri=true"],
            "cannot open or write"),
    CliCase("a PostgreSQL --store nobody answers", ["--store", "postgresql://u:s3cret@127.0.0.1:1/db"],
            "cannot open or write", hidden="s3cret"),
    CliCase("a corrupt registry.json", [], "registry.json", fault="corrupt_registry"),
    CliCase("the champion's adapter truncated", [], "cannot be loaded", fault="truncated_champion",
            loads_model=True),
]


# ---- the server and the faults ----------------------------------------------------------------

def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:100])  # a torn copy: the header promises more than is there


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes (SQLite's own -wal/-shm files aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name or p.name.endswith((".tmp", "~"))]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """v1 (champion) and v2 whose adapter was truncated on disk after it was registered."""
    run = trained_run(tmp_path_factory, tiny_model)
    root = tmp_path_factory.mktemp("faults")
    reg = Registry(root / "registry")
    reg.register(run)
    reg.register(run)
    _truncate(reg.get("v2").weights_dir / "adapter_model.safetensors")
    store = TrafficStore(f"sqlite:///{root / 'store' / 'traffic.db'}")
    pool = ModelPool(reg, str(tiny_model))
    pool.handle("v1")
    settings = ServeSettings(**LIMITS)
    app = create_app(pool, store, settings)
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    yield {"base": f"http://127.0.0.1:{port}", "root": root, "reg": reg, "pool": pool,
           "store": store, "settings": settings}
    srv.should_exit = True
    thread.join(timeout=10)


@contextmanager
def _fault(name: str | None, srv: dict) -> Iterator[None]:
    reg, pool, settings = srv["reg"], srv["pool"], srv["settings"]
    if name is None:
        yield
    elif name == "corrupt_registry":
        good = reg.state_path.read_bytes()
        reg.state_path.write_bytes(good[: len(good) // 2])
        try:
            yield
        finally:
            reg.state_path.write_bytes(good)
    elif name == "broken_champion":
        good = reg.state_path.read_bytes()
        state = json.loads(good)
        state["aliases"]["champion"] = "v2"
        reg.state_path.write_text(json.dumps(state))
        try:
            yield
        finally:
            reg.state_path.write_bytes(good)
    elif name == "slow_model":  # every forward pass takes 0.1 s; the deadline is 0.5 s
        decoder = pool.handle("v1").loaded.model.get_base_model().model  # called by every forward
        hook = decoder.register_forward_pre_hook(lambda *_: time.sleep(0.1))
        settings.request_timeout_s = 0.5
        try:
            yield
        finally:
            hook.remove()
            settings.request_timeout_s = LIMITS["request_timeout_s"]
    elif name == "model_busy":  # another request holds the model for longer than the deadline
        settings.request_timeout_s = 0.5
        with pool.lock:
            try:
                yield
            finally:
                settings.request_timeout_s = LIMITS["request_timeout_s"]
    else:
        raise AssertionError(name)


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.name for c in HTTP_CASES])
def test_http_fault(server, case: Case):
    store, root = server["store"], server["root"]
    before = store.count_requests()
    with _fault(case.fault, server):
        disk = _snapshot(server["reg"].root)
        t = time.perf_counter()
        if case.body is None:
            r = httpx.get(server["base"] + case.path, timeout=30)
        elif isinstance(case.body, str):
            r = httpx.post(server["base"] + case.path, content=case.body, timeout=30,
                           headers={"content-type": "application/json"})
        else:
            r = httpx.post(server["base"] + case.path, json=case.body, timeout=30)
        elapsed = time.perf_counter() - t
        assert _snapshot(server["reg"].root) == disk  # the server changed nothing on disk
    assert r.status_code == case.status, r.text
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert case.fragment in r.text, r.text
    assert str(root) not in r.text and str(Path.home()) + "/" not in r.text  # no server path
    if case.path != HEALTH:
        assert r.json()["error"]["message"]
    if case.logged is None:
        assert store.count_requests() == before
    else:
        rows = [x for x in store.requests() if x["request_id"] == r.headers["x-request-id"]]
        assert len(rows) == 1 and store.count_requests() == before + 1
        assert rows[0]["status"] == case.status and rows[0]["error"].startswith(case.logged), rows[0]
        if case.fault == "slow_model":  # stopped early, not run to max_tokens
            assert rows[0]["completion_tokens"] < 16 and rows[0]["latency_ms"] < 3000
    assert _temp_files(root) == []


# ---- the command line --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model) -> Path:
    """A project whose registry has v1 (the champion)."""
    run = trained_run(tmp_path_factory, tiny_model)
    cfg = write_classification_project(tmp_path_factory.mktemp("cli") / "proj", tiny_model)
    Registry(cfg.parent / "registry").register(run)
    return cfg


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_cli_fault(project, case: CliCase, tmp_path, monkeypatch, capsys):
    import uvicorn

    from tuneloop import console
    from tuneloop.cli import main

    monkeypatch.setattr(console.err, "width", 10_000)  # one message, one line

    proj = tmp_path / "proj"
    shutil.copytree(project.parent, proj)
    TrafficStore(f"sqlite:///{proj / 'ro.db'}").close()
    if case.fault == "corrupt_registry":
        (proj / "registry" / "registry.json").write_text('{"aliases": {"champ')
    elif case.fault == "truncated_champion":
        _truncate(proj / "registry" / "versions" / "v1" / "adapter" / "adapter_model.safetensors")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    fill = {"{busy}": str(busy.getsockname()[1]), "{free}": str(free), "{tmp}": str(proj)}
    args = [_fill(a, fill) for a in case.args]
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    if not case.env:
        monkeypatch.delenv("TUNELOOP_API_KEY", raising=False)
    loads: list[str] = []
    real_handle = ModelPool.handle
    monkeypatch.setattr(ModelPool, "handle", lambda self, v, *a: loads.append(v) or real_handle(self, v, *a))
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("the server started"))
    disk = _snapshot(proj)
    monkeypatch.setattr(sys, "argv", ["tuneloop", "serve", str(proj / "tuneloop.yaml"), *args])
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        busy.close()
    out = capsys.readouterr()
    text = out.err + out.out
    assert e.value.code == 2, text
    assert case.fragment in text, text
    assert "serving" not in text and "Traceback" not in text
    assert bool(loads) == case.loads_model, loads
    if case.hidden:
        assert case.hidden not in text
    after = _snapshot(proj)
    assert {k: after[k] for k in disk} == disk  # inputs byte-identical
    new = set(after) - set(disk)  # at most the (empty) traffic store, checked before the model loads
    assert new <= {"registry/traffic.db"}, new
    if new:
        assert TrafficStore(f"sqlite:///{proj / 'registry' / 'traffic.db'}").count_requests() == 0
    assert _temp_files(proj) == []


def _fill(arg: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        arg = arg.replace(k, v)
    return arg
