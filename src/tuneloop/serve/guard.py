"""What every request passes before a route sees it: API key, body-size limit, metrics.

A plain ASGI middleware (not BaseHTTPMiddleware) so streamed responses pass through untouched.
The body is read here, up to the limit, and replayed to the app: a chunked upload without a
Content-Length cannot slip past the limit, and an oversized one is refused with 413 before
any JSON parsing.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from tuneloop.errors import TuneloopError
from tuneloop.serve.schemas import error_body

OPEN_PATHS = {"/health"}  # liveness probes carry no credentials
ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/feedback", "/health", "/metrics"}
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)


class Metrics:
    """Prometheus series of one app (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tuneloop_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("tuneloop_request_latency_seconds", "Request latency (to the last byte)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.completions = Counter("tuneloop_completions", "Completions by requested model and version",
                                   ["model", "version"], registry=self.registry)
        self.tokens = Counter("tuneloop_tokens", "Tokens processed", ["kind"], registry=self.registry)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(key_env: str, environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(the API key in $key_env, a warning or None). Surrounding whitespace is stripped (clients
    send the key without it, so a trailing newline or space would lock every client out); a key
    of whitespace only counts as no key."""
    raw = (os.environ if environ is None else environ).get(key_env)
    if raw is None or raw == "":
        return None, None
    key = raw.strip()
    if not key:
        return None, f"${key_env} holds only whitespace: treated as no API key"
    if key != raw:
        return key, (f"${key_env} has leading or trailing whitespace; it was stripped (clients must "
                     "send the key without it)")
    return key, None


def check_bind(host: str, api_key: str | None, key_env: str) -> None:
    """Refuse to serve beyond loopback without an API key (a key of whitespace is none)."""
    if not (api_key and api_key.strip()) and not is_loopback(host):
        raise TuneloopError(f"--host {host} exposes the server beyond this machine; set an API key "
                            f"first: export {key_env}=$(openssl rand -hex 24) (serve.api_key_env), "
                            "or bind to 127.0.0.1")


async def _send_error(send, status: int, message: str, code: str, extra_headers=()) -> None:
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: bearer key check, body limit, request count and latency."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else ("/v1/models" if path.startswith("/v1/models/")
                                                    else "other")
        status = [500]
        start = time.perf_counter()

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_wrapper, path)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    async def _handle(self, scope, receive, send, path: str) -> None:
        headers = dict(scope.get("headers") or [])
        if self.key is not None and path not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.key):
                await _send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                  "invalid_api_key", [(b"www-authenticate", b"Bearer")])
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: wait for the disconnect, as the app expects

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        await _send_error(send, 413, f"request body exceeds {self.max_body} bytes (serve.max_body_bytes)",
                          "request_too_large")
