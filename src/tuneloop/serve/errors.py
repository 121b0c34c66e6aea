"""How a failure reaches a client and the traffic log: HTTP status, error class, a message
without the server's paths.

One table (`classify`) maps every exception a route can raise to its status and the class
name the traffic log records, so the response and the logged row always agree.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tuneloop.errors import TuneloopError
from tuneloop.serve.engine import DeadlineExceeded, ModelLoadFailed, RegistryUnavailable, UnknownModel


class ApiError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


# (exception type, HTTP status, OpenAI error code); the first match wins, so subclasses first.
_TABLE: list[tuple[type[Exception], int, str | None]] = [
    (UnknownModel, 404, "model_not_found"),
    (RegistryUnavailable, 503, "registry_unavailable"),
    (ModelLoadFailed, 500, "model_load_failed"),
    (DeadlineExceeded, 504, "request_timeout"),
    (TuneloopError, 400, None),
]


def classify(e: BaseException) -> tuple[int, str | None, str]:
    """(HTTP status, error code, error class for the traffic log) of an exception."""
    if isinstance(e, ApiError):
        return e.status, e.code, e.code or "ApiError"
    if isinstance(e, asyncio.CancelledError):  # shutdown cancelled it after its grace period
        return 503, "server_shutdown", "Cancelled"
    for kind, status, code in _TABLE:
        if isinstance(e, kind):
            name = type(e).__name__
            return status, code, f"{name}:{e.cause}" if isinstance(e, ModelLoadFailed) else name
    return 500, None, type(e).__name__


# An absolute path of at least two parts; API routes (/v1/...) are not server paths.
_ABS_PATH = re.compile(r"(?<![\w.~<>-])/(?!v1/)(?:[^\s'\"():,;/]+/)+[^\s'\"():,;]*")


class Scrubber:
    """Replaces the server's own paths in messages sent to clients: known folders by a name
    (<registry>), any other absolute path by its last part."""

    def __init__(self, named: dict[str, Path | str | None]):
        paths = {name: Path(p).expanduser() for name, p in named.items() if p}
        pairs = {(str(p), name) for name, p in paths.items() if p.is_absolute() and len(p.parts) > 1}
        pairs |= {(str(p.resolve()), name) for name, p in paths.items()
                  if p.is_absolute() and len(p.parts) > 1}
        self._pairs = sorted(pairs, key=lambda x: -len(x[0]))  # longest first: nested folders

    def __call__(self, text: str) -> str:
        for path, name in self._pairs:
            text = text.replace(path, name)
        return _ABS_PATH.sub(lambda m: "…/" + (m.group(0).rstrip("/").rsplit("/", 1)[-1]), text)
