"""The OpenAI-compatible app: chat and text completions (plain or SSE-streamed), models,
feedback, health and Prometheus metrics. Every completion is logged to the traffic store.

Model work runs in the threadpool (`run_in_threadpool`), so the event loop keeps accepting
and answering (health, metrics, queued requests) while a completion is generated.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneloop.errors import TuneloopError
from tuneloop.serve.engine import Generation, Handle, ModelPool, Params, UnknownModel
from tuneloop.serve.guard import Guard, Metrics
from tuneloop.serve.schemas import ChatRequest, CompletionRequest, FeedbackRequest, error_body
from tuneloop.serve.store import TrafficStore


@dataclass
class ServeSettings:
    """The limits and credentials of one server (from the `serve` config section)."""

    api_key: str | None = None
    max_tokens: int = 512
    max_body_bytes: int = 1_000_000
    default_model: str = "champion"


class ApiError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _err(status: int, message: str, param: str | None = None, code: str | None = None,
         type_: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def create_app(pool: ModelPool, store: TrafficStore, settings: ServeSettings) -> FastAPI:
    """Build the FastAPI app around a model pool and a traffic store."""
    app = FastAPI(title="tuneloop", version="1", docs_url="/docs", redoc_url=None)
    metrics = Metrics()
    app.state.pool, app.state.store, app.state.settings, app.state.metrics = pool, store, settings, metrics
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       metrics=metrics)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "default_model": settings.default_model,
                "loaded": pool.loaded_versions(), "batching": dict(pool.stats)}

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
        messages = [("system" if m.role == "developer" else m.role, m.text())
                    for m in req.messages if m.role in ("system", "developer", "user", "assistant")]
        user = [c for r, c in messages if r == "user"]
        if not user:
            raise ApiError(400, "messages must contain at least one user message", "messages")
        return await _complete(request, req, "chat", user[-1], lambda h: pool.chat_prompt(h, messages))

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send one prompt per request (batched prompts are not supported)", "prompt")
        return await _complete(request, req, "completions", prompts[0],
                               lambda h: pool.text_prompt(h, prompts[0]))

    @app.post("/v1/feedback")
    async def feedback(req: FeedbackRequest) -> dict:
        if not await run_in_threadpool(store.has_request, req.request_id):
            raise ApiError(404, f"unknown request id {req.request_id!r}: use the `id` of a completion "
                                "response from this server", "request_id", "request_not_found")
        await run_in_threadpool(lambda: store.add_feedback(
            request_id=req.request_id, rating=req.rating, corrected=req.corrected, label=req.label))
        return {"object": "feedback", "request_id": req.request_id, "status": "recorded"}

    async def _complete(request: Request, req: ChatRequest | CompletionRequest, kind: str,
                        input_text: str, make_prompt) -> Any:
        start = time.perf_counter()
        limit = req.token_limit()
        if limit is not None and limit > settings.max_tokens:
            raise ApiError(400, f"max_tokens {limit} exceeds this server's limit of {settings.max_tokens} "
                                "(serve.max_tokens)", "max_tokens", "max_tokens_exceeded")
        if req.n != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        name = settings.default_model if req.model == "default" else req.model
        version = await run_in_threadpool(pool.resolve, name)
        h: Handle = await run_in_threadpool(pool.handle, version)
        ids = await run_in_threadpool(make_prompt, h)
        params = Params(max_tokens=limit or settings.max_tokens, temperature=req.temperature,
                        top_p=req.top_p, seed=req.seed, stop=req.stops())
        window = pool.context_length(h)
        if window and len(ids) + params.max_tokens > window:
            raise ApiError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) "
                                f"exceeds the model's context of {window} tokens", "messages",
                           "context_length_exceeded")
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        raw = (await request.body()).decode("utf-8", errors="replace")
        headers = {"X-Request-Id": rid, "X-Tuneloop-Version": h.version}

        def log(gen: Generation, status: int = 200) -> None:
            store.log_request(
                request_id=rid, model=req.model, version=gen.version, endpoint=kind,
                input_text=input_text, request_json=raw, output_text=gen.text,
                latency_ms=(time.perf_counter() - start) * 1000, prompt_tokens=gen.prompt_tokens,
                completion_tokens=gen.completion_tokens, status=status)
            metrics.completions.labels(req.model, gen.version).inc()
            metrics.tokens.labels("prompt").inc(gen.prompt_tokens)
            metrics.tokens.labels("completion").inc(gen.completion_tokens)

        if req.stream:
            include_usage = bool((getattr(req, "stream_options", None) or {}).get("include_usage"))
            return StreamingResponse(
                _sse(pool, h, ids, params, kind, rid, req.model, include_usage, log),
                media_type="text/event-stream", headers=headers | {"Cache-Control": "no-cache"})
        try:
            if pool.batchable(params):  # waits on the batcher without holding a worker thread
                gen = await asyncio.wrap_future(pool.submit(h, ids, params))
            else:
                gen = await run_in_threadpool(pool.generate, h, ids, params)
        except Exception:
            await run_in_threadpool(log, Generation("", len(ids), 0, "error", h.version), 500)
            raise
        await run_in_threadpool(log, gen)
        return JSONResponse(_body(kind, rid, req.model, gen), headers=headers)

    return app


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


async def _sse(pool: ModelPool, h: Handle, ids: list[int], params: Params, kind: str, rid: str,
               model: str, include_usage: bool, log) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    job = pool.stream(h, ids, params)
    it = iter(job)
    done = object()
    finished = False
    try:
        yield _chunk(kind, rid, model, h.version, "" if kind == "chat" else None, None, first=True)
        while (piece := await run_in_threadpool(next, it, done)) is not done:
            yield _chunk(kind, rid, model, h.version, piece, None)
        gen = job.result
        assert gen is not None
        await run_in_threadpool(log, gen)  # logged before [DONE]: a client that saw it finds the row
        finished = True
        yield _chunk(kind, rid, model, h.version, None, gen.finish_reason)
        if include_usage:
            usage = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                     "created": int(time.time()), "model": model, "choices": [], "usage": _usage(gen)}
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as e:
        body = error_body(f"generation failed: {e}", "server_error")
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        if not finished:  # the client went away (or the stream failed): log it as status 499
            job.close()
            job.when_done(lambda gen: log(gen, 499))


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_r: Request, e: ApiError) -> JSONResponse:
        return _err(e.status, e.message, e.param, e.code)

    @app.exception_handler(UnknownModel)
    async def _unknown(_r: Request, e: UnknownModel) -> JSONResponse:
        return _err(404, str(e), "model", "model_not_found")

    @app.exception_handler(TuneloopError)
    async def _user(_r: Request, e: TuneloopError) -> JSONResponse:
        return _err(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        msg = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []) if x != 'body') or 'body'}: "
                        f"{d.get('msg')}" for d in e.errors()[:5])
        return _err(400, f"invalid request: {msg}", ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        return _err(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(_r: Request, e: Exception) -> JSONResponse:
        return _err(500, f"internal error: {type(e).__name__}: {e}", type_="server_error")
