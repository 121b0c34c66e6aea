"""The server with the official openai client, over real HTTP (uvicorn in a thread)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from test_registry import trained_run
from test_store import needs_pg, store_url_for
from tuneloop.errors import TuneloopError
from tuneloop.registry.registry import Registry
from tuneloop.serve.app import ServeSettings, create_app
from tuneloop.serve.engine import ModelPool, Params
from tuneloop.serve.guard import check_bind
from tuneloop.serve.prefixes import PrefixStore, template_prefix
from tuneloop.serve.store import TrafficStore

MSG = [{"role": "system", "content": "Answer briefly."},
       {"role": "user", "content": "where is my card, it has not arrived"}]


def _perturbed(run: Path, dest: Path, seed: int) -> Path:
    """A copy of the run whose adapter weights differ clearly (a second, distinct version)."""
    shutil.copytree(run, dest)
    f = dest / "adapter" / "adapter_model.safetensors"
    g = torch.Generator().manual_seed(seed)
    w = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in load_file(str(f)).items()}
    save_file(w, str(f))
    return dest


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """A registry with v1 (champion) and v2 (challenger), served on a free loopback port."""
    run = trained_run(tmp_path_factory, tiny_model)
    root = tmp_path_factory.mktemp("serve")
    reg = Registry(root / "registry")
    reg.register(run)
    reg.register(_perturbed(run, root / "run2", 1), alias="challenger")
    store = TrafficStore(f"sqlite:///{root / 'traffic.db'}")
    pool = ModelPool(reg, str(tiny_model))
    app = create_app(pool, store, ServeSettings(max_tokens=16, max_body_bytes=4096))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    yield {"base": base, "client": client, "store": store, "reg": reg, "pool": pool, "app": app}
    server.should_exit = True
    thread.join(timeout=10)


def test_openai_chat_completion_is_logged(served):
    c, store = served["client"], served["store"]
    r = c.chat.completions.create(model="champion", messages=MSG, max_tokens=6)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "champion"
    assert r.system_fingerprint == "v1"
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 6
    assert r.choices[0].finish_reason in {"stop", "length"}
    row = next(x for x in store.requests() if x["request_id"] == r.id)
    assert (row["model"], row["version"], row["endpoint"], row["status"]) == ("champion", "v1", "chat", 200)
    assert row["input_text"] == MSG[-1]["content"] and row["output_text"] == r.choices[0].message.content
    assert json.loads(row["request_json"])["max_tokens"] == 6 and row["latency_ms"] > 0
    assert {m.id for m in c.models.list()} == {"champion", "challenger", "v1", "v2", "base"}
    assert c.models.retrieve("v2").id == "v2"


def test_stream_sends_openai_chunks_then_done(served):
    c = served["client"]
    full = c.chat.completions.create(model="v2", messages=MSG, max_tokens=8).choices[0].message.content
    chunks = list(c.chat.completions.create(model="v2", messages=MSG, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full  # greedy: streaming and non-streaming agree
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in {"stop", "length"}
    assert chunks[-1].usage.completion_tokens >= 1
    assert len({ch.id for ch in chunks}) == 1
    with httpx.stream("POST", f"{served['base']}/v1/completions",
                      json={"model": "v1", "prompt": "hello world", "max_tokens": 4, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    rid = json.loads(lines[0][6:])["id"]
    assert served["store"].requests()[-1]["request_id"] == rid  # logged before [DONE]


def _reference(reg: Registry, ref: str | None, tiny_model: Path, prompt: str, n: int) -> str:
    """Greedy text from a separately loaded model: what the server must answer for `ref`."""
    from tuneloop.models.load import load_model, load_tokenizer

    if ref is None:
        model, tok = load_model(str(tiny_model)), load_tokenizer(str(tiny_model))
    else:
        model, tok = reg.load(ref)
    x = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                         do_sample=False, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)


def test_each_model_name_runs_its_own_adapter(served, tiny_model):
    c, reg = served["client"], served["reg"]
    got = {}
    for name, ref in (("v1", "v1"), ("challenger", "v2"), ("base", None)):
        r = c.completions.create(model=name, prompt="The card has not", max_tokens=6, temperature=0)
        got[name] = r.choices[0].text
        assert got[name] == _reference(reg, ref, tiny_model, "The card has not", 6), name
    assert len(set(got.values())) > 1  # the adapters really differ


def test_promotion_takes_effect_without_restart(served):
    c, reg = served["client"], served["reg"]

    def champion() -> str | None:
        return c.chat.completions.create(model="champion", messages=MSG, max_tokens=2).system_fingerprint

    reg.promote("v2", {"reason": "test"})
    try:
        assert champion() == "v2"
    finally:
        reg.rollback()
        reg.set_alias("challenger", "v2")  # promoting it had cleared the alias
    assert champion() == "v1"


def test_feedback_is_tied_to_a_request_id(served):
    c, base, store = served["client"], served["base"], served["store"]
    r = c.chat.completions.create(model="champion", messages=MSG, max_tokens=3)
    ok = httpx.post(f"{base}/v1/feedback", json={"request_id": r.id, "rating": 0, "label": "card_arrival",
                                                 "corrected": "card_arrival"})
    assert ok.status_code == 200 and ok.json()["status"] == "recorded"
    fb = [f for f in store.feedback() if f["request_id"] == r.id]
    assert len(fb) == 1 and fb[0]["label"] == "card_arrival" and fb[0]["rating"] == 0.0
    assert fb[0]["output_text"] == r.choices[0].message.content
    missing = httpx.post(f"{base}/v1/feedback", json={"request_id": "chatcmpl-nope", "rating": 1})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
    empty = httpx.post(f"{base}/v1/feedback", json={"request_id": r.id})
    assert empty.status_code == 400 and "at least one" in empty.json()["error"]["message"]


def test_limits_answer_in_openai_error_shape(served):
    c, base = served["client"], served["base"]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="champion", messages=MSG, max_tokens=17)
    assert e.value.code == "max_tokens_exceeded"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="champion", messages=MSG, n=2)
    with pytest.raises(openai.BadRequestError):  # schema violation: no messages
        c.chat.completions.create(model="champion", messages=[])
    with pytest.raises(openai.BadRequestError) as e:  # fits the body limit, not the 1024-token context
        c.chat.completions.create(model="champion", messages=[{"role": "user", "content": "x" * 3500}])
    assert e.value.code == "context_length_exceeded"
    big = {"model": "champion", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(f"{base}/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Chunked upload without Content-Length is cut off at the same limit.
    body = json.dumps(big).encode()
    r = httpx.post(f"{base}/v1/chat/completions", content=iter([body[:3000], body[3000:]]),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("name", ["../v1", "v1/../../etc", "..", "v1%2F..", "/etc/passwd", "v99", "x" * 200])
def test_bad_model_names_are_rejected(served, name):
    r = httpx.post(f"{served['base']}/v1/chat/completions",
                   json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code in (400, 404) and "error" in r.json()


def test_pickled_adapter_is_never_loaded(served, tmp_path):
    reg = served["reg"]
    v = reg.register(reg.get("v1").path)  # a registered version folder is itself a run folder
    (v.weights_dir / "adapter_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(openai.InternalServerError, match="pickle") as e:  # the server's problem
        served["client"].chat.completions.create(model=v.id, messages=MSG, max_tokens=2)
    assert str(reg.root) not in str(e.value) and e.value.code == "model_load_failed"
    health = httpx.get(f"{served['base']}/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"  # the champion is fine
    assert "pickle" in health.json()["failed"][v.id]


def test_metrics_and_health(served):
    served["client"].chat.completions.create(model="champion", messages=MSG, max_tokens=2)
    text = httpx.get(f"{served['base']}/metrics").text
    assert 'tuneloop_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "tuneloop_request_latency_seconds_bucket" in text and "tuneloop_completions_total" in text
    health = httpx.get(f"{served['base']}/health").json()
    # "degraded" once a version failed to load (test_pickled_adapter_is_never_loaded)
    assert health["status"] in {"ok", "degraded"} and "v1" in health["loaded"]
    assert health["default_version"] == "v1"


def test_api_key_is_required_when_configured(served):
    app = create_app(served["pool"], served["store"], ServeSettings(api_key="s3cret", max_tokens=8))
    http = TestClient(app)
    assert http.get("/health").status_code == 200  # liveness needs no key
    bad = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=http, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="champion", messages=MSG, max_tokens=2)
    assert http.get("/metrics").status_code == 401
    good = openai.OpenAI(base_url="http://testserver/v1", api_key="s3cret", http_client=http, max_retries=0)
    assert good.chat.completions.create(model="champion", messages=MSG, max_tokens=2).choices


def test_binding_beyond_loopback_needs_a_key():
    check_bind("127.0.0.1", None, "K")
    check_bind("::1", None, "K")
    check_bind("0.0.0.0", "key", "K")
    with pytest.raises(TuneloopError, match="API key"):
        check_bind("0.0.0.0", None, "TUNELOOP_API_KEY")


def test_concurrent_greedy_requests_are_batched_with_the_same_answers(served):
    pool = served["pool"]
    h = pool.handle("v2")
    prompts = ["hello world", "The card has not arrived yet. Where", "What is the exchange rate", "positive"]
    rows = [pool.text_prompt(h, t) for t in prompts]
    params = [Params(max_tokens=n) for n in (8, 3, 8, 5)]
    alone = [pool.generate(h, r, p) for r, p in zip(rows, params, strict=True)]
    before = pool.stats["largest_batch"]
    with pool.lock:  # hold the model so that the requests queue up behind the first
        futures = [pool.submit(h, r, p) for r, p in zip(rows, params, strict=True)]
    together = [f.result(timeout=60) for f in futures]
    assert pool.stats["largest_batch"] >= 2 and pool.stats["largest_batch"] >= before
    assert [(g.text, g.completion_tokens, g.finish_reason) for g in together] == \
        [(g.text, g.completion_tokens, g.finish_reason) for g in alone]


def test_the_template_prefix_runs_once_per_server_and_answers_stay_the_same(served, monkeypatch):
    import tuneloop.serve.prefixes as prefixes

    pool = served["pool"]
    h = pool.handle("v1")
    rows = [pool.chat_prompt(h, [("user", m)]) for m in
            ("where is my card", "what is the exchange rate today, and tomorrow?", "hi")]
    # The reference: transformers' generate on each prompt alone, no kept cache.
    reference = [pool.generate_rows(h, [r], [Params(max_tokens=6)])[0].text for r in rows]
    made = []
    real = prefixes.prefix_cache
    monkeypatch.setattr(prefixes, "prefix_cache", lambda *a: made.append(len(a[1])) or real(*a))
    monkeypatch.setattr(prefixes, "MIN_TOKENS", 4)  # the tiny template's prefix is 5 tokens
    pool.prefixes = PrefixStore()
    alone = [pool.generate(h, r, Params(max_tokens=6)).text for r in rows]
    with pool.lock:  # queue all three behind the lock: they run as one batch
        futures = [pool.submit(h, r, Params(max_tokens=6)) for r in rows]
    together = [f.result(timeout=60).text for f in futures]
    assert alone == reference and together == reference
    template = template_prefix(h.loaded.tok)
    assert len(template) >= prefixes.MIN_TOKENS and all(r[:len(template)] == template for r in rows)
    assert made == [len(template)]  # computed for the first request, reused by the rest
    assert pool.prefixes.hits == 3


def test_a_template_that_cannot_render_a_lone_user_turn_has_no_template_prefix():
    class Strict:
        def apply_chat_template(self, *_a, **_k):
            raise ValueError("Conversation roles must alternate system/user/assistant")

    assert template_prefix(Strict()) == []


def test_prefix_store_keeps_the_longest_shared_prefix_per_version():
    store = PrefixStore(keep=2)
    tok = type("Tok", (), {})()
    store._templates = {"v1": [], "v2": []}  # no template prefix: batches teach the store
    made = []
    import tuneloop.serve.prefixes as prefixes

    real = prefixes.prefix_cache
    try:
        prefixes.prefix_cache = lambda _m, ids, _d: made.append(tuple(ids)) or f"cache{len(made)}"
        system = list(range(100, 120))
        a, b = system + [1, 2], system + [3, 4, 5]
        assert store.for_batch("v1", tok, None, [a, b], "cpu") == (20, "cache1")
        assert store.for_batch("v1", tok, None, [b], "cpu") == (20, "cache1")  # a lone row reuses it
        assert store.for_batch("v2", tok, None, [a, b], "cpu") == (20, "cache2")  # per version
        assert store.for_batch("v1", tok, None, [[1, 2, 3], [1, 2, 4]], "cpu") == (2, None)  # too short
        store.for_batch("v1", tok, None, [system + [9] * 10 + [1], system + [9] * 10 + [2]], "cpu")
        assert len(store._caches) == 2 and ("v1", tuple(system)) not in store._caches  # LRU out
    finally:
        prefixes.prefix_cache = real
    assert made == [tuple(system), tuple(system), tuple(system + [9] * 10)]


def test_serve_command_refuses_public_bind_without_key_and_empty_registry(tmp_path, tiny_model, monkeypatch):
    from typer.testing import CliRunner

    from conftest import write_classification_project
    from tuneloop.cli import app

    cfg = write_classification_project(tmp_path / "proj", tiny_model)
    monkeypatch.delenv("TUNELOOP_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["serve", str(cfg), "--host", "0.0.0.0"])
    assert isinstance(res.exception, TuneloopError) and "API key" in str(res.exception)
    res = CliRunner().invoke(app, ["serve", str(cfg), "--model", "champion"])
    assert isinstance(res.exception, TuneloopError) and "no versions" in str(res.exception)


@pytest.mark.integration
def test_real_model_answers_through_the_openai_client(tmp_path):
    """SmolLM2-135M-Instruct served as `base`: a factual question gets the right answer."""
    pool = ModelPool(None, "smollm2-135m-instruct")
    store = TrafficStore(f"sqlite:///{tmp_path / 'traffic.db'}")
    http = TestClient(create_app(pool, store, ServeSettings(max_tokens=16)))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model="base", max_tokens=12, messages=question)
    assert "Paris" in r.choices[0].message.content
    assert store.requests()[0]["output_text"] == r.choices[0].message.content


def test_abandoned_stream_is_logged_with_status_499(served):
    pool, store = served["pool"], served["store"]
    body = {"model": "v1", "messages": MSG, "max_tokens": 16, "stream": True}
    pool.handle("v1")  # loaded before the lock is taken
    with pool.lock:  # generation cannot start until the client has gone
        with httpx.stream("POST", f"{served['base']}/v1/chat/completions", json=body) as r:
            rid = json.loads(next(r.iter_lines())[6:])["id"]
        time.sleep(0.3)
    rows: list[dict] = []
    for _ in range(200):
        rows = [x for x in store.requests() if x["request_id"] == rid]
        if rows:
            break
        time.sleep(0.05)
    assert rows and rows[0]["status"] == 499


def test_concurrent_clients_lose_no_traffic_row(served):
    import asyncio

    store = served["store"]
    before = store.count_requests()

    async def one(http: httpx.AsyncClient, k: int) -> str:
        r = await http.post("/v1/chat/completions", json={
            "model": ("champion", "challenger", "base")[k % 3], "max_tokens": 4,
            "messages": [{"role": "user", "content": f"message number {k}"}]})
        assert r.status_code == 200, r.text
        return r.json()["id"]

    async def main() -> list[str]:
        async with httpx.AsyncClient(base_url=served["base"], timeout=120) as http:
            return await asyncio.gather(*[one(http, k) for k in range(24)])

    ids = asyncio.run(main())
    rows = {r["request_id"]: r for r in store.requests()}
    assert store.count_requests() == before + 24 and all(i in rows for i in ids)
    assert {rows[i]["version"] for i in ids} == {"v1", "v2", "base"}


# ---- issue 17: limits, deadline, shutdown, logging of failures, API key ------------------------

def test_stop_strings_cut_the_answer_where_the_first_one_starts(served):
    """The tail-only stop check cuts exactly where the full-text check did."""
    c = served["client"]
    kw = {"model": "v2", "prompt": "The card has not", "max_tokens": 16, "temperature": 1.0, "seed": 3}
    full = c.completions.create(**kw).choices[0].text
    assert len(full) > 6, full
    stop = full[3:6]
    r = c.completions.create(**kw, stop=["never-there", stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    chunks = list(c.completions.create(**kw, stop=[stop], stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == full[:full.index(stop)]


def test_batcher_waits_for_the_company_of_the_last_batch_only():
    """Requests answered together come back a few ms apart: the next batch waits (briefly)
    for as many as the last one had; a lone client never waits."""
    from tuneloop.serve.engine import GATHER_S, ModelPool

    pool = ModelPool(None, "unused")

    def arrive(n: int, after_s: float) -> None:
        def later():
            time.sleep(after_s)
            for _ in range(n):
                pool._queue.put("job")
        threading.Thread(target=later).start()

    arrive(1, 0.05)  # the lone client's next request, into an empty queue
    arrive(1, 0.07)
    assert len(pool._gather()) == 1  # last batch was 1: no waiting for the straggler
    pool._queue.get(timeout=1)
    pool._last_batch = 3
    pool._queue.put("job")
    arrive(2, GATHER_S / 5)
    assert len(pool._gather()) == 3  # the two stragglers joined the batch
    pool._queue.put("job")
    t0 = time.monotonic()
    assert len(pool._gather()) == 1  # nobody else came: gone after the window
    assert GATHER_S <= time.monotonic() - t0 < 1.0
    assert pool._last_batch == 1
    # Two alternating halves (4 queued while a batch of 4 ran) merge: the batch waits for the
    # 4 queued and the 4 that were just answered.
    pool._last_batch = 4
    for _ in range(4):
        pool._queue.put("job")
    arrive(4, GATHER_S / 5)
    assert len(pool._gather()) == 8


def test_stop_check_decodes_only_the_tail():
    """16 stop strings of 64 characters over a long answer: each check decodes a bounded tail,
    not the whole text (which made 10,000 stop strings take 17 minutes)."""
    from tuneloop.serve.engine import _Stopper

    class Tok:
        longest = 0

        def decode(self, ids, skip_special_tokens=True):
            Tok.longest = max(Tok.longest, len(ids))
            return "ab" * len(ids)

    stops = [f"{k:02d}" + "z" * 62 for k in range(16)]
    stopper = _Stopper(Tok(), 10, [Params(max_tokens=5000, stop=stops)], None, threading.Event())
    for n in range(11, 3000, 7):
        assert not bool(stopper(torch.zeros(1, n, dtype=torch.long), None)[0])
    assert Tok.longest == 4 * 64 + 4


def test_a_stream_past_the_deadline_ends_with_an_error_and_is_logged_504(served):
    pool, store = served["pool"], served["store"]
    app = create_app(pool, store, ServeSettings(max_tokens=16, request_timeout_s=0.3))
    http = TestClient(app)
    pool.handle("v1")
    with pool.lock:  # the model stays busy past the deadline
        r = http.post("/v1/chat/completions", json={"model": "v1", "messages": MSG, "stream": True})
    lines = [ln for ln in r.text.splitlines() if ln]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["error"]["code"] == "request_timeout"
    row = next(x for x in store.requests() if x["request_id"] == r.headers["x-request-id"])
    assert (row["status"], row["error"]) == (504, "DeadlineExceeded")


def test_a_stream_that_fails_is_logged_with_its_error_class(served, monkeypatch):
    pool, store = served["pool"], served["store"]

    def broken(*a, **k):
        raise RuntimeError("weights went away")

    monkeypatch.setattr(pool, "generate_rows", broken)
    r = TestClient(create_app(pool, store, ServeSettings(max_tokens=16))).post(
        "/v1/chat/completions", json={"model": "v1", "messages": MSG, "stream": True})
    assert "weights went away" in r.text
    row = next(x for x in store.requests() if x["request_id"] == r.headers["x-request-id"])
    assert (row["status"], row["error"]) == (500, "RuntimeError")


def _slow_base_pool(tiny_model, seconds: float) -> ModelPool:
    """A base-only pool whose every forward pass takes `seconds`."""
    pool = ModelPool(None, str(tiny_model))
    pool.handle("base").loaded.model.model.register_forward_pre_hook(lambda *_: time.sleep(seconds))
    return pool


def _thread_server(app, grace: float):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                           timeout_graceful_shutdown=grace))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("grace,status", [(10.0, 200), (0.3, 503)], ids=["drained", "cut-off"])
def test_shutdown_drains_in_flight_requests_within_the_grace_period(tiny_model, tmp_path, grace, status):
    """SIGINT/SIGTERM (should_exit, as uvicorn's handler sets it): a request in flight finishes
    if it can within serve.shutdown_timeout_s; else generation stops and the row says 503.
    Either way the server is gone soon after."""
    store = TrafficStore(f"sqlite:///{tmp_path / 'traffic.db'}")
    app = create_app(_slow_base_pool(tiny_model, 0.1), store, ServeSettings(max_tokens=16,
                                                                          default_model="base"))
    server, thread, base = _thread_server(app, grace)
    result: dict = {}

    def client() -> None:
        try:
            result["r"] = httpx.post(f"{base}/v1/completions", timeout=30, json={
                "model": "base", "prompt": "hello", "max_tokens": 16, "temperature": 1.0})
        except httpx.HTTPError as e:
            result["error"] = e

    c = threading.Thread(target=client)
    c.start()
    time.sleep(0.5)  # generation under way (16 forward passes of 0.1 s)
    t = time.perf_counter()
    server.should_exit = True
    thread.join(timeout=30)
    stopped = time.perf_counter() - t
    c.join(timeout=30)
    assert not thread.is_alive() and stopped < min(grace, 5) + 2
    rows = store.requests()
    assert len(rows) == 1 and rows[0]["status"] == status
    if status == 200:
        assert result["r"].status_code == 200 and result["r"].json()["usage"]["completion_tokens"] == 16
    else:
        assert rows[0]["error"] in {"Cancelled", "ServerShutdown"}


def test_api_key_is_stripped_and_a_blank_key_is_no_key():
    from tuneloop.serve.guard import read_api_key

    assert read_api_key("K", {"K": "s3cret"}) == ("s3cret", None)
    key, warning = read_api_key("K", {"K": "s3cret \n"})
    assert key == "s3cret" and "whitespace" in warning  # a trailing space locked every client out
    assert read_api_key("K", {"K": "   "})[0] is None
    assert read_api_key("K", {})[0] is None
    with pytest.raises(TuneloopError, match="API key"):  # spaces passed the off-loopback check
        check_bind("0.0.0.0", "   ", "K")
    check_bind("127.0.0.1", "   ", "K")


@needs_pg
def test_two_server_processes_share_one_postgres_store_under_32_clients(tmp_path, tiny_model):
    """Two `tuneloop serve` processes, one PostgreSQL store (TUNELOOP_TEST_POSTGRES_URL), 32
    concurrent clients: every answer is one row. Then SIGTERM and SIGINT each stop a server
    within bounded time. (~35 s: two processes start; hence only where PostgreSQL is.)"""
    import asyncio
    import os
    import signal
    import subprocess
    import sys

    from conftest import write_classification_project

    cfg = write_classification_project(tmp_path / "proj", tiny_model)
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TUNELOOP_API_KEY", None)
    with store_url_for("postgres", tmp_path) as url:
        ports, procs = [], []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tuneloop", "serve", str(cfg), "--model", "base", "--port",
                 str(ports[-1]), "--store", url, "--threads", "1"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        try:
            for port, proc in zip(ports, procs, strict=True):
                for _ in range(600):
                    assert proc.poll() is None, proc.stderr.read().decode()
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.2)

            async def one(http: httpx.AsyncClient, k: int) -> str:
                r = await http.post(f"http://127.0.0.1:{ports[k % 2]}/v1/chat/completions", json={
                    "model": "base", "max_tokens": 2, "messages": [{"role": "user", "content": f"hi {k}"}]})
                assert r.status_code == 200, r.text
                return r.json()["id"]

            async def clients() -> list[str]:
                limits = httpx.Limits(max_connections=32)
                async with httpx.AsyncClient(timeout=120, limits=limits) as http:
                    sem = asyncio.Semaphore(32)

                    async def bounded(k: int) -> str:
                        async with sem:
                            return await one(http, k)

                    return await asyncio.gather(*[bounded(k) for k in range(64)])

            ids = asyncio.run(clients())
        finally:
            t = time.perf_counter()
            procs[0].send_signal(signal.SIGTERM)
            procs[1].send_signal(signal.SIGINT)
            codes = [p.wait(timeout=60) for p in procs]
            stopped = time.perf_counter() - t
        assert codes[0] in (0, -signal.SIGTERM) and codes[1] in (0, 130), codes
        assert stopped < 30
        store = TrafficStore(url)
        rows = {r["request_id"] for r in store.requests()}
        assert len(set(ids)) == 64 and store.count_requests() == 64 and set(ids) == rows
        store.close()


def test_serve_command_binds_first_and_drains_for_shutdown_timeout_s(tmp_path, tiny_model, monkeypatch):
    """`tuneloop serve` hands uvicorn the socket it bound before loading the model, and the
    grace period of serve.shutdown_timeout_s (uvicorn's default waits forever)."""
    import uvicorn
    from typer.testing import CliRunner

    from conftest import write_classification_project
    from tuneloop.cli import app

    cfg = write_classification_project(tmp_path / "proj", tiny_model, serve={"shutdown_timeout_s": 3})
    seen: dict = {}

    def run(self, sockets=None):
        seen.update(grace=self.config.timeout_graceful_shutdown, sockets=sockets)
        seen["listening"] = sockets[0].getsockname()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setenv("TUNELOOP_API_KEY", " key ")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(app, ["serve", str(cfg), "--model", "base", "--port", str(port)])
    assert res.exit_code == 0, res.output
    assert seen["grace"] == 3 and seen["listening"] == ("127.0.0.1", port)
    assert seen["sockets"][0].fileno() == -1  # closed once the server returned
    assert "stripped" in res.output
