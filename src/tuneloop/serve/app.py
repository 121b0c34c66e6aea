"""The OpenAI-compatible app: chat and text completions (plain or SSE-streamed), models,
feedback, health and Prometheus metrics.

Every request that reaches a completion route is logged to the traffic store, whatever its
status (400 for a limit, 404, 500 for a version that does not load, 504 past the deadline),
with the class of the error; responses never carry the server's paths.

Model work runs in the threadpool (`run_in_threadpool`), so the event loop keeps accepting
and answering (health, metrics, queued requests) while a completion is generated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneloop.errors import TuneloopError
from tuneloop.models.load import tuneloop_home
from tuneloop.serve.engine import (
    DeadlineExceeded,
    Generation,
    Handle,
    ModelLoadFailed,
    ModelPool,
    Params,
    RegistryUnavailable,
    UnknownModel,
)
from tuneloop.serve.errors import ApiError, Scrubber, classify
from tuneloop.serve.guard import Guard, Metrics
from tuneloop.serve.limits import ServeSettings, check_prompt_tokens, check_request
from tuneloop.serve.schemas import ChatRequest, CompletionRequest, FeedbackRequest, error_body
from tuneloop.serve.store import TrafficStore

__all__ = ["ApiError", "ServeSettings", "create_app"]
log = logging.getLogger("tuneloop.serve")
KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
# A generation stopped by the deadline or by shutdown: (status, error class) of its row.
STOPPED = {"timeout": (504, "DeadlineExceeded"), "cancelled": (503, "ServerShutdown")}


@dataclass
class _Trace:
    """What the traffic log needs about one request, filled in as it proceeds."""

    rid: str
    kind: str
    model: str
    raw: str
    start: float
    input_text: str = ""
    version: str = ""
    prompt_tokens: int = 0


def _new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def create_app(pool: ModelPool, store: TrafficStore, settings: ServeSettings) -> FastAPI:
    """Build the FastAPI app around a model pool and a traffic store."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        pool.close()  # shutdown: generations still running stop at their next token

    app = FastAPI(title="tuneloop", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    metrics = Metrics()
    scrub = Scrubber({"<registry>": pool.registry.root if pool.registry else None,
                      "<base model>": pool.base_name, "<cache>": tuneloop_home()})
    app.state.pool, app.state.store, app.state.settings, app.state.metrics = pool, store, settings, metrics
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       metrics=metrics)

    def write(t: _Trace, status: int, error: str | None = None, gen: Generation | None = None) -> None:
        """One traffic-log row (called in a worker thread, or directly from a cancelled task)."""
        store.log_request(
            request_id=t.rid, model=t.model, version=gen.version if gen else t.version, endpoint=t.kind,
            input_text=t.input_text, request_json=t.raw, output_text=gen.text if gen else "",
            latency_ms=(time.perf_counter() - t.start) * 1000,
            prompt_tokens=gen.prompt_tokens if gen else t.prompt_tokens,
            completion_tokens=gen.completion_tokens if gen else 0, status=status, error=error)
        if gen is not None and status == 200:
            metrics.completions.labels(t.model, gen.version).inc()
            metrics.tokens.labels("prompt").inc(gen.prompt_tokens)
            metrics.tokens.labels("completion").inc(gen.completion_tokens)

    def write_failure(t: _Trace, e: BaseException) -> None:
        """The row of a failed request; a store that fails too is reported, not raised over `e`."""
        status, _code, error = classify(e)
        try:
            write(t, status, error)
        except Exception:
            log.exception("traffic store: could not log failed request %s", t.rid)

    _add_error_handlers(app, scrub, write_failure)

    @app.get("/health")
    async def health():
        body: dict[str, Any] = {"status": "ok", "default_model": settings.default_model,
                                "loaded": pool.loaded_versions(),
                                "batching": dict(pool.stats, prefix_reused=pool.prefixes.hits)}
        try:  # the default model as it resolves now (a promotion may have changed it), loaded
            body["default_version"] = await run_in_threadpool(pool.resolve, settings.default_model)
            await run_in_threadpool(pool.handle, body["default_version"], time.monotonic() + 2.0)
        except DeadlineExceeded:  # the model is busy generating; loading waits for the next check
            pass
        except (RegistryUnavailable, ModelLoadFailed, UnknownModel) as e:
            body |= {"status": "error", "error": {"class": type(e).__name__, "message": scrub(str(e))}}
        failed = {v: scrub(m) for v, m in pool.failures().items()}
        if failed:
            body["failed"] = failed
            body["status"] = "degraded" if body["status"] == "ok" else body["status"]
        return JSONResponse(body, status_code=503 if body["status"] == "error" else 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> dict:
        names = await run_in_threadpool(pool.names)
        return {"object": "list", "data": [_model_card(n) for n in names]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict:
        await run_in_threadpool(pool.resolve, name)
        return _model_card(name)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        return await _complete(request, req, "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await _complete(request, req, "completions")

    @app.post("/v1/feedback")
    async def feedback(req: FeedbackRequest) -> dict:
        if req.label is not None and settings.labels and req.label not in settings.labels:
            shown = ", ".join(settings.labels[:20]) + (" ..." if len(settings.labels) > 20 else "")
            raise ApiError(400, f"label {req.label[:80]!r} is not one of the task's labels ({shown}; "
                                "task.labels in the config)", "label", "invalid_label")
        if not await run_in_threadpool(store.has_request, req.request_id):
            raise ApiError(404, f"unknown request id {req.request_id!r}: use the `id` of a completion "
                                "response from this server", "request_id", "request_not_found")
        await run_in_threadpool(lambda: store.add_feedback(
            request_id=req.request_id, rating=req.rating, corrected=req.corrected, label=req.label))
        return {"object": "feedback", "request_id": req.request_id, "status": "recorded"}

    async def _complete(request: Request, req: ChatRequest | CompletionRequest, kind: str) -> Any:
        t = _Trace(_new_id(kind), kind, req.model, (await request.body()).decode("utf-8", "replace"),
                   time.perf_counter())
        try:
            return await _answer(t, req)
        except asyncio.CancelledError:  # server shutdown past its grace period: log, then go
            write_failure(t, asyncio.CancelledError())
            raise
        except Exception as e:  # logged here; the error handlers answer
            await run_in_threadpool(write_failure, t, e)
            e.request_id = t.rid  # type: ignore[attr-defined]
            raise

    async def _answer(t: _Trace, req: ChatRequest | CompletionRequest) -> Any:
        deadline = time.monotonic() + settings.request_timeout_s
        if isinstance(req, ChatRequest):
            messages = [("system" if m.role == "developer" else m.role, m.text()) for m in req.messages
                        if m.role in ("system", "developer", "user", "assistant")]
            user = [c for r, c in messages if r == "user"]
            t.input_text = user[-1] if user else ""
        else:
            prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            t.input_text = prompts[0] if prompts else ""
        check_request(req, settings)
        limit = req.token_limit()
        if limit is not None and limit > settings.max_tokens:
            raise ApiError(400, f"max_tokens {limit} exceeds this server's limit of {settings.max_tokens} "
                                "(serve.max_tokens)", "max_tokens", "max_tokens_exceeded")
        if req.n != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        if isinstance(req, ChatRequest):
            if not user:
                raise ApiError(400, "messages must contain at least one user message", "messages")
            param = "messages"

            def make_prompt(h: Handle) -> list[int]:
                return pool.chat_prompt(h, messages)
        else:
            if len(prompts) != 1:
                raise ApiError(400, "send one prompt per request (batched prompts are not supported)",
                               "prompt")
            param = "prompt"

            def make_prompt(h: Handle) -> list[int]:
                return pool.text_prompt(h, prompts[0])

        name = settings.default_model if req.model == "default" else req.model
        t.version = await run_in_threadpool(pool.resolve, name)
        h: Handle = await run_in_threadpool(pool.handle, t.version, deadline)
        ids = await run_in_threadpool(make_prompt, h)
        t.prompt_tokens = len(ids)
        check_prompt_tokens(len(ids), settings, param)
        params = Params(max_tokens=limit or settings.max_tokens, temperature=req.temperature,
                        top_p=req.top_p, seed=req.seed, stop=req.stops(), deadline=deadline)
        window = pool.context_length(h)
        if window and len(ids) + params.max_tokens > window:
            raise ApiError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) "
                                f"exceeds the model's context of {window} tokens", param,
                           "context_length_exceeded")
        headers = {"X-Request-Id": t.rid, "X-Tuneloop-Version": h.version}
        if req.stream:
            include_usage = bool((getattr(req, "stream_options", None) or {}).get("include_usage"))
            return StreamingResponse(_sse(pool, h, ids, params, t, include_usage, write, scrub),
                                     media_type="text/event-stream",
                                     headers=headers | {"Cache-Control": "no-cache"})
        if pool.batchable(params):  # waits on the batcher without holding a worker thread
            try:
                gen = await asyncio.wait_for(asyncio.wrap_future(pool.submit(h, ids, params)),
                                             max(0.0, deadline - time.monotonic()) + 1.0)
            except TimeoutError:  # still queued behind a long batch: the batcher skips it
                gen = Generation("", len(ids), 0, "timeout", h.version)
        else:
            gen = await run_in_threadpool(pool.generate, h, ids, params)
        if gen.finish_reason in STOPPED:
            status, error = STOPPED[gen.finish_reason]
            await run_in_threadpool(write, t, status, error, gen)
            return _stopped_response(status, settings.request_timeout_s, headers)
        await run_in_threadpool(write, t, 200, None, gen)
        return JSONResponse(_body(t.kind, t.rid, t.model, gen), headers=headers)

    return app


def _stopped_response(status: int, timeout_s: float, headers: dict) -> JSONResponse:
    if status == 504:
        body = error_body(f"the request took longer than this server's deadline of {timeout_s:g} s "
                          "(serve.request_timeout_s); ask for fewer tokens or try again later",
                          "server_error", None, "request_timeout")
    else:
        body = error_body("the server is shutting down; retry", "server_error", None, "server_shutdown")
    return JSONResponse(body, status_code=status, headers=headers)


def _model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "tuneloop"}


def _usage(gen: Generation) -> dict:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


def _body(kind: str, rid: str, model: str, gen: Generation) -> dict:
    created = int(time.time())
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": gen.text},
                  "finish_reason": gen.finish_reason, "logprobs": None}
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": gen.version, "choices": [choice], "usage": _usage(gen)}
    choice = {"index": 0, "text": gen.text, "finish_reason": gen.finish_reason, "logprobs": None}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": gen.version, "choices": [choice], "usage": _usage(gen)}


def _chunk(kind: str, rid: str, model: str, version: str, piece: str | None, finish: str | None,
           first: bool = False) -> str:
    if kind == "chat":
        delta: dict[str, Any] = {} if piece is None else {"content": piece}
        if first:
            delta["role"] = "assistant"
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "system_fingerprint": version, "choices": [choice]}
    return f"data: {json.dumps(body)}\n\n"


async def _sse(pool: ModelPool, h: Handle, ids: list[int], params: Params, t: _Trace,
               include_usage: bool, write, scrub: Scrubber) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    kind, rid, model = t.kind, t.rid, t.model
    job = pool.stream(h, ids, params)
    it = iter(job)
    done = object()
    logged = False
    try:
        yield _chunk(kind, rid, model, h.version, "" if kind == "chat" else None, None, first=True)
        while (piece := await run_in_threadpool(next, it, done)) is not done:
            yield _chunk(kind, rid, model, h.version, piece, None)
        gen = job.result
        assert gen is not None
        status, error = STOPPED.get(gen.finish_reason, (200, None))
        await run_in_threadpool(write, t, status, error, gen)  # before [DONE]: a client that saw it
        logged = True                                          # finds the row
        if status != 200:
            body = error_body(f"generation stopped: {error}", "server_error", None,
                              "request_timeout" if status == 504 else "server_shutdown")
            yield f"data: {json.dumps(body)}\n\n"
        else:
            yield _chunk(kind, rid, model, h.version, None, gen.finish_reason)
            if include_usage:
                obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
                usage = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
                         "choices": [], "usage": _usage(gen)}
                yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as e:
        if not logged:
            logged = True
            status, _code, error = classify(e)
            await run_in_threadpool(lambda: write(t, status, error))
        log.exception("stream %s failed", rid)
        body = error_body(scrub(f"generation failed: {type(e).__name__}: {e}"), "server_error")
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        if not logged:  # the client went away: log it (as 499) when generation has stopped
            job.close()

            def late(j) -> None:
                if j.result is not None:
                    write(t, 499, "ClientDisconnected", j.result)
                else:
                    write(t, 499, f"ClientDisconnected:{type(j.error).__name__}")

            job.when_done(late)


def _add_error_handlers(app: FastAPI, scrub: Scrubber, write_failure) -> None:
    def answer(e: BaseException, message: str, param: str | None = None, headers=None) -> JSONResponse:
        status, code, _error = classify(e)
        rid = getattr(e, "request_id", None)
        body = error_body(scrub(message), "server_error" if status >= 500 else "invalid_request_error",
                          param, code)
        return JSONResponse(body, status_code=status,
                            headers=(headers or {}) | ({"X-Request-Id": rid} if rid else {}))

    @app.exception_handler(ApiError)
    async def _api(_r: Request, e: ApiError) -> JSONResponse:
        return answer(e, e.message, e.param)

    @app.exception_handler(TuneloopError)  # UnknownModel, RegistryUnavailable, ModelLoadFailed, ...
    async def _user(_r: Request, e: TuneloopError) -> JSONResponse:
        return answer(e, str(e), "model" if isinstance(e, UnknownModel) else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        msg = "; ".join("body: not valid JSON" if d.get("type") == "json_invalid" else
                        f"{'.'.join(str(x) for x in d.get('loc', []) if x != 'body') or 'body'}: "
                        f"{d.get('msg')}" for d in e.errors()[:5])
        param = None if first.get("type") == "json_invalid" else ".".join(loc) or None
        err = ApiError(400, f"invalid request: {msg}", param, "invalid_request")
        kind = KINDS.get(request.url.path)
        if kind is not None:  # a completion request that did not parse is traffic too
            body = e.body if isinstance(e.body, dict) else {}
            raw = e.body.decode("utf-8", "replace") if isinstance(e.body, bytes) else json.dumps(e.body)
            model = body.get("model")
            t = _Trace(_new_id(kind), kind, model if isinstance(model, str) else "", raw, time.perf_counter())
            await run_in_threadpool(write_failure, t, err)
            err.request_id = t.rid  # type: ignore[attr-defined]
        return answer(err, err.message, err.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        return answer(ApiError(e.status_code, str(e.detail)), str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(_r: Request, e: Exception) -> JSONResponse:
        log.error("internal error", exc_info=e)
        return answer(e, f"internal error: {type(e).__name__}: {e}")
