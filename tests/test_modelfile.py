"""The Ollama Modelfile: its TEMPLATE, executed with Go text/template semantics, renders exactly
what the tokenizer's chat template renders; plus the Go-template renderer itself."""

from __future__ import annotations

import re

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.export.gotemplate import GoTemplateError, render
from tuneloop.export.modelfile import build_modelfile, jinja, render_go
from tuneloop.models.load import chat_tokenizer
from tuneloop.models.tokens import FALLBACK_TEMPLATE
from tuneloop.records import Message

# ---- Go text/template semantics (cases whose output Go's documentation fixes) ------------------


def test_trim_markers_as_in_go_docs():
    assert render("{{23 -}} < {{- 45}}", {}) == "23<45"
    assert render("a  {{- 1 }}  b", {}) == "a1  b"
    assert render("a\n{{ 1 -}}\n\n b", {}) == "a\n1b"


def test_conditionals_functions_and_truth():
    data = {"A": "x", "E": "", "N": 0, "L": [1, 2, 3], "M": {"k": "v"}}
    assert render('{{ if .E }}1{{ else if .N }}2{{ else if .A }}3{{ else }}4{{ end }}', data) == "3"
    assert render('{{ or .E .N "d" }}|{{ and .A .E }}|{{ and .A "z" }}', data) == "d||z"
    assert render("{{ not .L }} {{ not .E }} {{ len .L }} {{ index .L 1 }} {{ index .M \"k\" }}",
                  data) == "false true 3 2 v"
    assert render('{{ eq .A "y" "x" }} {{ ne .N 0 }} {{ len (slice .L 1) }}', data) == "true false 2"
    assert render("{{ .Missing }}", data) == "<no value>"  # a missing map key, as in Go
    assert render('{{ "a\\nb\\t\\"q\\"" }}', {}) == 'a\nb\t"q"'


def test_range_variables_and_assignment():
    data = {"Messages": [{"Role": "user"}, {"Role": "assistant"}, {"Role": "user"}]}
    t = ('{{ $prev := "-" }}{{ range $i, $m := .Messages }}{{ $i }}{{ $prev }}>{{ .Role }}'
         '{{ $last := eq (len (slice $.Messages $i)) 1 }}{{ if $last }}!{{ end }} '
         "{{ $prev = $m.Role }}{{ end }}{{ $prev }}")
    assert render(t, data) == "0->user 1user>assistant 2assistant>user! user"
    assert render("{{ range .Messages }}{{ .Role }},{{ end }}", data) == "user,assistant,user,"


def test_outside_the_subset_is_an_error():
    for t in ("{{ with .A }}x{{ end }}", "{{ if .A }}x", "{{ .A | printf }}", "{{ end }}",
              "{{ index .L 9 }}"):
        with pytest.raises(GoTemplateError):
            render(t, {"A": 1, "L": [1]})


# ---- Modelfile TEMPLATE vs the tokenizer's template --------------------------------------------

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")
# Gemma 3's layout: BOS in the template, the system prompt folded into the first user turn,
# assistant turns as "model", contents trimmed, strict alternation.
GEMMA3 = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
    "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
    "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")


def _tok(tiny_model, template: str | None):
    tok = chat_tokenizer(str(tiny_model))
    if template:
        tok.chat_template = template
    return tok


def _template_of(modelfile: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1)


def _conversations(system: str) -> list[list[Message]]:
    u = [Message("user", "Where is my card? {{ .Role }} stays text\nsecond line, naïve ☃")]
    a = [Message("assistant", "It is on its way.")]
    s = [Message("system", system)]
    more = [Message("user", "Thanks, and the PIN?")]
    return [u, s + u, u + a, u + a + more, s + u + a + more, s + u + a + more + a + more, s + u + a]


@pytest.mark.parametrize("name,template", [("chatml", None), ("smollm2", SMOLLM2),
                                           ("gemma3", GEMMA3), ("llama2", LLAMA2),
                                           ("fallback", FALLBACK_TEMPLATE)])
def test_modelfile_template_renders_the_chat_template(tiny_model, name, template):
    tok = _tok(tiny_model, template)
    system = "Label the banking message."
    text, report = build_modelfile(tok, "model-f16.gguf", [tok.eos_token_id], system)
    go = _template_of(text)
    checked = 0
    for msgs in _conversations(system):
        try:
            want = jinja(tok, msgs)
        except Exception:  # noqa: BLE001 (this template rejects the role pattern, as Gemma's does)
            continue
        assert render_go(go, msgs) == want, (name, [m.role for m in msgs])
        checked += 1
    assert checked >= 4
    # As Ollama does with a Modelfile SYSTEM: a request without a system message gets it first.
    user_only = _conversations(system)[0]
    assert render_go(go, [Message("system", system), *user_only]) == jinja(
        tok, [Message("system", system), *user_only])


def test_modelfile_lines(tiny_model):
    tok = _tok(tiny_model, None)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    text, report = build_modelfile(tok, "model-q8_0.gguf", [eot, tok.pad_token_id], "Be brief.")
    lines = text.splitlines()
    assert "FROM ./model-q8_0.gguf" in lines and 'SYSTEM """Be brief."""' in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    assert report["stop"] == ["<|im_end|>", "<|endoftext|>"]
    text, _ = build_modelfile(tok, "m.gguf", [eot], None)
    assert "SYSTEM" not in text
    with pytest.raises(TuneloopError, match='"""'):
        build_modelfile(tok, "m.gguf", [eot], 'say """hi"""')


def test_template_gemma_trims_is_reported(tiny_model):
    _, report = build_modelfile(_tok(tiny_model, GEMMA3), "m.gguf", [2], None)
    assert report["turn_format"]["trims_content"] and "strips whitespace" in report["note"]
    assert report["turn_format"]["user_pre_after_system"] == ""  # system folded into user turn


def test_a_template_go_cannot_follow_is_refused(tiny_model):
    last_differs = ("{% for m in messages %}{% if loop.last %}LAST {{ m['content'] }}{% else %}"
                    "{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}")
    with pytest.raises(TuneloopError, match="prefix-stable|cannot"):
        build_modelfile(_tok(tiny_model, last_differs), "m.gguf", [2], None)
