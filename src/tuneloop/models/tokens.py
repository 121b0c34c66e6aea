"""Render examples with the model's own chat template and build loss masks from it.

The mask is found by rendering, not by guessing token patterns: for each assistant turn we
render the conversation up to the generation prompt and up to the end of that turn; the
characters in between (the reply plus the template's end-of-turn marker) are the targets.
A lint then checks what other trainers get silently wrong: an empty mask, or an end-of-turn
token outside the mask (a model that never learns to stop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneloop.errors import TuneloopError
from tuneloop.records import Example, Message

IGNORE = -100
# Used only when a tokenizer has no chat template at all (base models): a plain turn format
# whose end-of-turn marker is the tokenizer's own EOS token.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + m['content'] + eos_token + '\n' }}"
    "{% else %}{{ m['role'] | capitalize + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def ensure_template(tok) -> None:
    """Give a template-less (base) tokenizer the fallback template and a pad token."""
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def _dicts(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def render(tok, messages: list[Message], add_generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    return tok.apply_chat_template(_dicts(messages), tokenize=False,
                                   add_generation_prompt=add_generation_prompt)


def assistant_spans(tok, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans of every assistant reply + end-of-turn."""
    full = render(tok, messages)
    spans = []
    for i, m in enumerate(messages):
        if m.role != "assistant":
            continue
        start_text = render(tok, messages[:i], add_generation_prompt=True)
        end_text = render(tok, messages[: i + 1])
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise TuneloopError(
                "the chat template does not render conversations incrementally (the prompt "
                "is not a prefix of the full conversation), so assistant tokens cannot be "
                "masked reliably; use a model whose template is prefix-stable or set "
                "train.loss_on: all")
        spans.append((len(start_text), len(end_text)))
    return full, spans


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    example_id: str = ""

    @property
    def n_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def encode(tok, ex: Example, max_len: int, loss_on: str = "assistant") -> Encoded:
    """Token ids and labels (IGNORE outside assistant turns), truncated to max_len."""
    text, spans = assistant_spans(tok, ex.messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if loss_on == "all":
        labels = list(ids)
    else:
        labels = [IGNORE] * len(ids)
        for j, (s, _) in enumerate(offsets):
            if any(a <= s < b for a, b in spans):
                labels[j] = ids[j]
    truncated = len(ids) > max_len
    return Encoded(ids[:max_len], labels[:max_len], truncated, ex.id)


def encode_prompt(tok, messages: list[Message]) -> list[int]:
    """Token ids of a conversation plus the generation prompt: what the model continues."""
    return tok(render(tok, messages, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"]


def end_of_turn_id(tok) -> int:
    """The token the template puts right after an assistant reply (its stop token)."""
    probe = [Message("user", "Hi"), Message("assistant", "Zq")]
    text, spans = assistant_spans(tok, probe)
    a, b = spans[-1]
    reply_end = text.index("Zq", a) + 2
    suffix = text[reply_end:b]
    ids = tok(suffix, add_special_tokens=False)["input_ids"] if suffix.strip() else []
    if not ids:
        raise TuneloopError(
            "the chat template adds no end-of-turn marker after an assistant reply, so a "
            "fine-tuned model would never learn to stop; use a template that closes turns")
    return ids[0]


@dataclass
class EncodeReport:
    """Token statistics of an encoded set, and what truncation cost."""

    n: int = 0
    truncated: int = 0
    dropped_empty: int = 0  # truncated so far that no target token was left
    lengths: list[int] = field(default_factory=list)
    target_tokens: int = 0

    def as_dict(self) -> dict:
        """JSON-ready statistics: counts, tokens, mean/p95/max length."""
        import numpy as np  # why: this module loads at CLI start (registry -> runs -> models.load)

        lens = np.array(self.lengths or [0])
        return {"examples": self.n, "truncated": self.truncated,
                "dropped_empty_after_truncation": self.dropped_empty,
                "tokens": int(lens.sum()), "target_tokens": self.target_tokens,
                "length_mean": round(float(lens.mean()), 1), "length_p95": int(np.percentile(lens, 95)),
                "length_max": int(lens.max())}


def encode_all(tok, examples: list[Example], max_len: int, loss_on: str = "assistant",
               ) -> tuple[list[Encoded], EncodeReport]:
    """Encode a split and lint every mask; drop (and count) examples truncated to no targets."""
    eot = end_of_turn_id(tok) if loss_on == "assistant" else None
    out, rep = [], EncodeReport()
    for ex in examples:
        e = encode(tok, ex, max_len, loss_on)
        rep.n += 1
        rep.truncated += e.truncated
        if e.n_targets == 0:
            if e.truncated:
                rep.dropped_empty += 1
                continue
            raise TuneloopError(f"record {ex.id}: the loss mask is empty (no assistant tokens "
                                "after rendering with the chat template); check the record")
        if eot is not None and not e.truncated and eot not in [x for x in e.labels if x != IGNORE]:
            raise TuneloopError(
                f"record {ex.id}: the end-of-turn token {tok.convert_ids_to_tokens(eot)!r} is "
                "outside the loss mask, so the model would not learn to stop; the chat "
                "template renders assistant turns inconsistently")
        rep.lengths.append(len(e.input_ids))
        rep.target_tokens += e.n_targets
        out.append(e)
    return out, rep
