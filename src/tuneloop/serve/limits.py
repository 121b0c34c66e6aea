"""The limits of one server, and the checks a request passes before any model work.

Everything here is cheap and runs before tokenising or generating, so a request that asks for
too much (10,000 stop strings, a thousand messages) is refused with a 400 that names the
limit and its config key, instead of holding the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.config import Config
from tuneloop.serve.errors import ApiError
from tuneloop.serve.schemas import ChatRequest, CompletionRequest


@dataclass
class ServeSettings:
    """The limits and credentials of one server (from the `serve` config section)."""

    api_key: str | None = None
    max_tokens: int = 512
    max_body_bytes: int = 1_000_000
    default_model: str = "champion"
    max_stop_strings: int = 16
    max_stop_chars: int = 64
    max_messages: int = 256
    max_message_chars: int = 100_000
    max_prompt_tokens: int = 8192
    request_timeout_s: float = 120.0
    labels: list[str] | None = None  # the task's labels: a feedback label must be one of them

    @classmethod
    def from_config(cls, cfg: Config, api_key: str | None, default_model: str) -> ServeSettings:
        """Settings of a project's `serve` section (labels from `task`, for feedback)."""
        s = cfg.serve
        return cls(api_key=api_key, max_tokens=s.max_tokens, max_body_bytes=s.max_body_bytes,
                   default_model=default_model, max_stop_strings=s.max_stop_strings,
                   max_stop_chars=s.max_stop_chars, max_messages=s.max_messages,
                   max_message_chars=s.max_message_chars, max_prompt_tokens=s.max_prompt_tokens,
                   request_timeout_s=s.request_timeout_s,
                   labels=list(cfg.task.labels) if cfg.task.labels else None)


def _over(what: str, n: int, limit: int, unit: str, key: str, param: str, code: str) -> ApiError:
    return ApiError(400, f"{what}: {n} {unit}, more than this server's limit of {limit} (serve.{key})",
                    param, code)


def check_request(req: ChatRequest | CompletionRequest, s: ServeSettings) -> None:
    """Refuse (ApiError 400) a request over a stop-string, message or length limit."""
    stops = [] if req.stop is None else [req.stop] if isinstance(req.stop, str) else req.stop
    if len(stops) > s.max_stop_strings:
        raise _over("stop", len(stops), s.max_stop_strings, "stop strings", "max_stop_strings", "stop",
                    "too_many_stop_strings")
    for i, stop in enumerate(stops):
        if len(stop) > s.max_stop_chars:
            raise _over(f"stop[{i}]", len(stop), s.max_stop_chars, "characters", "max_stop_chars", "stop",
                        "stop_string_too_long")
    if isinstance(req, ChatRequest):
        if len(req.messages) > s.max_messages:
            raise _over("messages", len(req.messages), s.max_messages, "messages", "max_messages",
                        "messages", "too_many_messages")
        for i, m in enumerate(req.messages):
            if len(m.text()) > s.max_message_chars:
                raise _over(f"messages[{i}].content", len(m.text()), s.max_message_chars, "characters",
                            "max_message_chars", f"messages[{i}].content", "message_too_long")
    else:
        for p in [req.prompt] if isinstance(req.prompt, str) else req.prompt:
            if len(p) > s.max_message_chars:
                raise _over("prompt", len(p), s.max_message_chars, "characters", "max_message_chars",
                            "prompt", "message_too_long")


def check_prompt_tokens(n: int, s: ServeSettings, param: str) -> None:
    """Refuse (ApiError 400) a prompt of more tokens than serve.max_prompt_tokens."""
    if n > s.max_prompt_tokens:
        raise _over("prompt", n, s.max_prompt_tokens, "tokens (after the chat template)", "max_prompt_tokens",
                    param, "prompt_too_long")
