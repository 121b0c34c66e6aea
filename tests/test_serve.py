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
from tuneloop.errors import TuneloopError
from tuneloop.registry.registry import Registry
from tuneloop.serve.app import ServeSettings, create_app
from tuneloop.serve.engine import ModelPool, Params
from tuneloop.serve.guard import check_bind
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
    with pytest.raises(openai.BadRequestError, match="pickle"):
        served["client"].chat.completions.create(model=v.id, messages=MSG, max_tokens=2)


def test_metrics_and_health(served):
    served["client"].chat.completions.create(model="champion", messages=MSG, max_tokens=2)
    text = httpx.get(f"{served['base']}/metrics").text
    assert 'tuneloop_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "tuneloop_request_latency_seconds_bucket" in text and "tuneloop_completions_total" in text
    health = httpx.get(f"{served['base']}/health").json()
    assert health["status"] == "ok" and "v1" in health["loaded"]


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
