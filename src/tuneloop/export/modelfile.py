"""An Ollama Modelfile whose TEMPLATE renders exactly the chat template the model was trained with.

Ollama renders prompts with Go's text/template, not Jinja, so the tokenizer's template cannot
be copied. Instead of a hand-written zoo of templates, the turn format is read off the
tokenizer itself: conversations with marker contents are rendered by `apply_chat_template`,
and the text around each marker gives what comes before and after a system, user and
assistant message (including a default system block, a system prompt folded into the first
user turn as Gemma does, and the generation prompt). Those pieces become a Go template over
Ollama's `.Messages`; before the Modelfile is kept, the Go template is rendered (gotemplate.py)
on probe conversations and on the run's own test prompts and compared with the tokenizer's
rendering, character for character. A template that does not fit this turn model is refused.

As in Ollama's own templates, a conversation that ends with an assistant message is left open
for the model to continue (Jinja's `continue_final_message`), any other ends with the
generation prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tuneloop.errors import TuneloopError
from tuneloop.export.gotemplate import GoTemplateError, render
from tuneloop.records import Message

S, U1, A1, U2, A2, U3 = "Zs1 sys", "Zu1 first", "Za1 reply", "Zu2 next", "Za2 again", "Zu3 last"


@dataclass
class TurnFormat:
    """The literal text around each message, read off the tokenizer's template."""

    first_system_pre: str  # before a system message that opens the conversation
    system_pre: str  # before a later system message
    system_post: str
    first_user_pre: str  # before a user message that opens it (e.g. a default system block)
    user_pre: str
    user_pre_after_system: str  # e.g. "" when the template folds the system prompt into the user turn
    user_post: str
    assistant_pre: str
    assistant_post: str
    generation: str  # the generation prompt after the last non-assistant message
    trims_content: bool  # the template strips whitespace around messages (Go cannot)


def _dicts(msgs: Sequence[Message | dict]) -> list[dict]:
    return [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in msgs]


def jinja(tok, msgs: Sequence[Message | dict]) -> str:
    """The tokenizer's rendering as Ollama is asked for it: open for the model to answer (or to
    continue a final assistant message)."""
    msgs = _dicts(msgs)
    cont = bool(msgs) and msgs[-1]["role"] == "assistant"
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not cont,
                                   continue_final_message=cont)


def _closed(tok, msgs: list[dict]) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)


def _m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _around(text: str, marker: str, where: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise TuneloopError(f"the chat template does not render message contents verbatim "
                            f"({where}); an Ollama TEMPLATE cannot be derived from it")
    i = text.index(marker)
    return text[:i], text[i + len(marker):]


def _after(full: str, prefix: str, where: str) -> str:
    if not full.startswith(prefix):
        raise TuneloopError(f"the chat template is not prefix-stable ({where}: an earlier turn "
                            "renders differently once a message follows it); an Ollama TEMPLATE "
                            "cannot reproduce it")
    return full[len(prefix):]


def turn_format(tok) -> TurnFormat:
    """Read the turn format off the tokenizer's chat template (see the module docstring)."""
    r_u = _closed(tok, [_m("user", U1)])
    r_ua = _closed(tok, [_m("user", U1), _m("assistant", A1)])
    r_uau = _closed(tok, [_m("user", U1), _m("assistant", A1), _m("user", U2)])
    first_user_pre, user_post = _around(r_u, U1, "a user turn")
    assistant_pre, assistant_post = _around(_after(r_ua, r_u, "user, assistant"), A1,
                                            "an assistant turn")
    user_pre, post2 = _around(_after(r_uau, r_ua, "user, assistant, user"), U2, "a second user turn")
    if post2 != user_post:
        raise TuneloopError("the chat template closes user turns differently by position; an "
                            "Ollama TEMPLATE cannot reproduce it")
    generation = _after(tok.apply_chat_template([_m("user", U1)], tokenize=False,
                                                add_generation_prompt=True), r_u, "generation prompt")
    try:
        r_su = _closed(tok, [_m("system", S), _m("user", U1)])
    except Exception:  # noqa: BLE001 (a template may reject system messages; then none is sent)
        r_su = None
    if r_su is not None:
        first_system_pre, rest = _around(r_su, S, "a system turn")
        between, post = _around(rest, U1, "a user turn after a system turn")
        if post != user_post:
            raise TuneloopError("the chat template closes a user turn after a system message "
                                "differently; an Ollama TEMPLATE cannot reproduce it")
        if user_pre and between.endswith(user_pre):
            system_post, user_pre_after_system = between[:-len(user_pre)], user_pre
        else:
            system_post, user_pre_after_system = between, ""
    else:
        first_system_pre, system_post, user_pre_after_system = first_user_pre, "\n\n", ""
    system_pre = first_system_pre
    try:  # a system message after the first turn, where the template allows one
        r_uas = _closed(tok, [_m("user", U1), _m("assistant", A1), _m("system", U2)])
        system_pre, _ = _around(_after(r_uas, r_ua, "user, assistant, system"), U2, "a later system turn")
    except Exception:  # noqa: BLE001 (rejected or not prefix-stable: first_system_pre stands in)
        pass
    padded = _closed(tok, [_m("user", f"  {U1} ")])
    return TurnFormat(first_system_pre, system_pre, system_post, first_user_pre, user_pre,
                      user_pre_after_system, user_post, assistant_pre, assistant_post, generation,
                      trims_content=f"  {U1} " not in padded)


def _lit(text: str) -> str:
    if "{{" in text or "}}" in text:
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"
    return text


def _choose(cond: str, a: str, b: str) -> str:
    if a == b:
        return _lit(a)
    return "{{ if " + cond + " }}" + _lit(a) + "{{ else }}" + _lit(b) + "{{ end }}"


def go_template(f: TurnFormat) -> str:
    """Ollama's TEMPLATE (Go text/template over .Messages) for a turn format."""
    t = ['{{ $prev := "" }}{{ range $i, $_ := .Messages }}'
         '{{ $last := eq (len (slice $.Messages $i)) 1 }}']
    t.append('{{ if eq .Role "system" }}' + _choose("eq $i 0", f.first_system_pre, f.system_pre))
    t.append("{{ .Content }}" + _lit(f.system_post))
    t.append('{{ else if eq .Role "user" }}')
    if f.user_pre_after_system == f.user_pre:
        t.append(_choose("eq $i 0", f.first_user_pre, f.user_pre))
    else:
        t.append("{{ if eq $i 0 }}" + _lit(f.first_user_pre) + '{{ else if eq $prev "system" }}'
                 + _lit(f.user_pre_after_system) + "{{ else }}" + _lit(f.user_pre) + "{{ end }}")
    t.append("{{ .Content }}" + _lit(f.user_post))
    t.append('{{ else if eq .Role "assistant" }}' + _lit(f.assistant_pre) + "{{ .Content }}")
    if f.assistant_post:
        t.append("{{ if not $last }}" + _lit(f.assistant_post) + "{{ end }}")
    t.append("{{ end }}")
    if f.generation:
        t.append('{{ if and $last (ne .Role "assistant") }}' + _lit(f.generation) + "{{ end }}")
    t.append("{{ $prev = .Role }}{{ end }}")
    return "".join(t)


def render_go(template: str, msgs: Sequence[Message | dict]) -> str:
    """What Ollama sends to the model for `msgs`: the Go template over .Messages."""
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in _dicts(msgs)]}
    return render(template, data)


def probe_conversations(system: str | None) -> list[list[dict]]:
    """Role patterns every template must render the same way in both languages."""
    sys = [_m("system", system or S)]
    u, a = [_m("user", "Where is my card?\nIt was sent last week.")], [_m("assistant", "On its way.")]
    more = [_m("user", "Thanks!")]
    convs = [u, sys + u, u + a + more, sys + u + a + more, sys + u + a + more + a + more, u + a,
             sys + u + a]
    return convs


def check_template(tok, template: str, conversations: Sequence[Sequence[Message | dict]]) -> int:
    """Render every conversation with both templates; raise on the first difference."""
    checked = 0
    for msgs in conversations:
        try:
            want = jinja(tok, msgs)
        except Exception:  # noqa: BLE001 (the tokenizer's template rejects this role pattern)
            continue
        try:
            got = render_go(template, msgs)
        except GoTemplateError as e:
            raise TuneloopError(f"the Ollama TEMPLATE does not execute: {e}") from e
        if got != want:
            k = next((i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y),
                     min(len(got), len(want)))
            roles = [m["role"] for m in _dicts(msgs)]
            raise TuneloopError(
                f"the Ollama TEMPLATE renders {roles} differently from the tokenizer's chat "
                f"template at character {k}: {got[k:k + 40]!r} vs {want[k:k + 40]!r}; the "
                "template does not fit the turn model tuneloop can translate")
        checked += 1
    if not checked:
        raise TuneloopError("the chat template rejected every probe conversation")
    return checked


def stop_tokens(tok, stop_ids: Sequence[int]) -> list[str]:
    """The end-of-turn tokens as the strings Ollama matches (PARAMETER stop)."""
    return [tok.convert_ids_to_tokens(int(i)) for i in stop_ids]


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise TuneloopError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def build_modelfile(tok, gguf_name: str, stop_ids: Sequence[int], system: str | None,
                    prompts: Sequence[Sequence[Message]] = ()) -> tuple[str, dict]:
    """Modelfile text and a report (turn format, stops, conversations checked)."""
    fmt = turn_format(tok)
    template = go_template(fmt)
    if fmt.trims_content:  # compare what Go can render: messages without outer whitespace
        prompts = [[Message(m.role, m.content.strip()) for m in p] for p in prompts]
    checked = check_template(tok, template, [*probe_conversations(system), *prompts])
    stops = stop_tokens(tok, stop_ids)
    bad = [s for s in stops if '"' in s or "\n" in s]
    if bad:
        raise TuneloopError(f"stop tokens {bad} cannot be written as PARAMETER stop")
    lines = [f"# Written by `tuneloop export`. The TEMPLATE was checked against the tokenizer's "
             f"chat template on {checked} conversations.",
             f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(template, 'template')}"]
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    # tuneloop measured greedy answers; temperature 0 makes Ollama answer the same way.
    lines.append("PARAMETER temperature 0")
    report = {"stop": stops, "conversations_checked": checked, "turn_format": asdict(fmt),
              "system": system}
    if fmt.trims_content:
        report["note"] = ("the chat template strips whitespace around each message and Go "
                          "templates cannot; messages are rendered the same when they carry no "
                          "leading or trailing whitespace (tuneloop's records do not)")
    return "\n".join(lines) + "\n", report
