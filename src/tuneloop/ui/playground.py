"""The Playground: one conversation answered by several models side by side.

Models load on first use through the server's own ModelPool (a registered version is its base
plus its adapter; `base` is the base model alone), so the playground answers exactly as
`tuneloop serve` would. Its answers are not logged as traffic: they are not production inputs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tuneloop.config import DEFAULT_CLASSIFY_TEMPLATE, Config
from tuneloop.data.formats import fill_template
from tuneloop.errors import TuneloopError
from tuneloop.registry.registry import Registry

MAX_MODELS = 3
MAX_TOKENS = 256
MAX_CHARS = 8000


class Playground:
    """A lazily created model pool over a project's registry and base model."""

    def __init__(self, cfg: Config, registry: Registry):
        self.cfg, self.registry = cfg, registry
        self._pool = None
        self._lock = threading.Lock()

    def choices(self) -> list[dict[str, str]]:
        """Names a user can pick: aliases, versions, then the base model."""
        aliases = self.registry.aliases()
        out = [{"name": a, "label": f"{a} ({v})"} for a, v in aliases.items()]
        for v in self.registry.versions():
            names = [a for a, x in aliases.items() if x == v.id]
            out.append(
                {
                    "name": v.id,
                    "label": v.id
                    + (f" ({', '.join(names)})" if names else "")
                    + (f": {v.note[:40]}" if v.note else ""),
                }
            )
        out.append({"name": "base", "label": f"base: {self.cfg.model.name}"})
        return out

    def pool(self):
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    from tuneloop.serve.engine import ModelPool

                    has = bool(self.registry.versions())
                    self._pool = ModelPool(self.registry if has else None, self.cfg.model.name)
        return self._pool

    def render(self, text: str) -> str:
        """A classification input in the task's prompt template (as the model was trained)."""
        task = self.cfg.task
        if task.type != "classification":
            return text
        return fill_template(task.prompt_template or DEFAULT_CLASSIFY_TEMPLATE, text, task.labels)

    def chat(
        self,
        models: list[str],
        messages: list[dict[str, str]],
        max_tokens: int = 64,
        template: bool = False,
        system: str | None = None,
    ) -> list[dict[str, Any]]:
        """Each model's answer to the same conversation (greedy), with its time and version."""
        from tuneloop.serve.engine import Params

        if not models or len(models) > MAX_MODELS:
            raise TuneloopError(f"pick 1 to {MAX_MODELS} models")
        if not messages or messages[-1].get("role") != "user" or not messages[-1].get("content", "").strip():
            raise TuneloopError("the conversation must end with a user message")
        if sum(len(m.get("content", "")) for m in messages) > MAX_CHARS:
            raise TuneloopError(f"the conversation is longer than {MAX_CHARS} characters")
        msgs = [(m["role"], m["content"]) for m in messages if m.get("role") in ("user", "assistant")]
        if template:
            msgs[-1] = ("user", self.render(msgs[-1][1]))
        sys_prompt = self.cfg.task.system_prompt if system is None else system
        if sys_prompt:
            msgs.insert(0, ("system", sys_prompt))
        params = Params(max_tokens=max(1, min(int(max_tokens), MAX_TOKENS)))
        pool, out = self.pool(), []
        for name in models:
            t0 = time.perf_counter()
            try:
                h = pool.handle(pool.resolve(name))
                gen = pool.generate(h, pool.chat_prompt(h, msgs), params)
                out.append(
                    {
                        "model": name,
                        "version": gen.version,
                        "text": gen.text,
                        "tokens": gen.completion_tokens,
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                )
            except TuneloopError as e:
                out.append({"model": name, "error": str(e)})
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
