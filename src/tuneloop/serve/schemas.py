"""Request bodies of the OpenAI-compatible API, and OpenAI-style error bodies.

Unknown fields are accepted and ignored (clients send `user`, `logprobs: false`, ...), as the
OpenAI API does; fields that would change the answer and are not supported are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RATING_RANGE = (-1.0, 5.0)  # thumbs (-1/0/1) or a 1-5 scale (monitor.traffic.feedback_correct)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message text; content parts of type 'text' are joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Common):
    prompt: str | list[str]

    def token_limit(self) -> int | None:
        return self.max_tokens


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64, description="The `id` of a completion response.")
    rating: float | None = Field(
        None, ge=RATING_RANGE[0], le=RATING_RANGE[1], allow_inf_nan=False,
        description="Thumbs (-1 bad, 0, 1 good) or a 1-5 scale; `tuneloop monitor` maps both onto 0-1.")
    corrected: str | None = Field(None, max_length=100_000, description="The answer it should have given.")
    label: str | None = Field(None, max_length=256, description="The correct label (classification).")


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape, which the openai client turns into typed exceptions."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
