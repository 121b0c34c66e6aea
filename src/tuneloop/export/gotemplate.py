"""A small renderer of Go's text/template, the language of Ollama's Modelfile TEMPLATE.

Why here: no maintained Python package implements Go templates, and Ollama itself (Go) is
not something tuneloop can call. tuneloop renders every Modelfile it writes with this module
and compares the text with the tokenizer's own chat template before it keeps the file, so the
subset below is exactly what modelfile.py emits, implemented with Go's semantics:

- text and actions `{{ ... }}`; `{{- ` trims the whitespace before, ` -}}` the whitespace after;
- `if` / `else if` / `else` / `end`, `range PIPE` and `range $i, $v := PIPE` (dot is the element);
- variables: `$x := v` declares in the current block, `$x = v` assigns the nearest one (Go >=
  1.11), `$` is the data passed in; fields `.A.B`, `$x.A`, `$.A`; literals "str", 12, true;
- functions eq (a == any of the rest), ne, not, and, or (short-circuit, return an operand),
  len, index, slice; parenthesised calls. Truth is Go's: false, 0, "", empty list, nil.

Anything else raises GoTemplateError instead of rendering something Ollama would not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any


class GoTemplateError(ValueError):
    """A template outside the supported subset, or a runtime error Go would raise too."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_WS = " \t\r\n"


def _lex(src: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with Go's trim markers applied to neighbouring text."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip(_WS)
        if m.group(1):
            text = text.rstrip(_WS)
        if text:
            out.append(("text", text))
        body = m.group(2).strip()
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise GoTemplateError(f"unclosed comment: {m.group(0)!r}")
        else:
            out.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    if trim_next:
        text = text.lstrip(_WS)
    if text:
        out.append(("text", text))
    return out


_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(\()|(\))|(:=|=)|(,)|([^\s()=,:]+))')


def _tokens(expr: str) -> list[str]:
    toks, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot parse {expr!r} at {expr[pos:]!r}")
        toks.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
        while pos < len(expr) and expr[pos] in _WS:
            pos += 1
    return toks


def _parse_block(items: list[tuple[str, str]], i: int, stop: tuple[str, ...]) -> tuple[list, int]:
    """Nodes until one of the `stop` keywords; returns (nodes, index of that keyword)."""
    nodes: list = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in stop:
            return nodes, i
        if word == "if":
            node, i = _parse_if(items, i)
            nodes.append(node)
        elif word == "range":
            node, i = _parse_range(items, i)
            nodes.append(node)
        elif word in ("else", "end"):
            raise GoTemplateError(f"unexpected {{{{{body}}}}}")
        elif word in ("with", "define", "template", "block", "break", "continue"):
            raise GoTemplateError(f"{{{{{word}}}}} is outside the supported subset")
        else:
            nodes.append(("action", _tokens(body)))
            i += 1
    if stop:
        raise GoTemplateError(f"missing {{{{end}}}} (expected one of {stop})")
    return nodes, i


def _parse_if(items, i):
    branches = []
    cond = _tokens(items[i][1][2:])
    i += 1
    while True:
        body, i = _parse_block(items, i, ("else", "end"))
        branches.append((cond, body))
        word = items[i][1]
        if word == "end":
            return ("if", branches, None), i + 1
        rest = word[4:].strip()
        if rest.startswith("if "):
            cond = _tokens(rest[3:])
            i += 1
            continue
        if rest:
            raise GoTemplateError(f"unsupported {{{{{word}}}}}")
        other, i = _parse_block(items, i + 1, ("end",))
        return ("if", branches, other), i + 1


def _parse_range(items, i):
    toks = _tokens(items[i][1][5:])
    names: list[str] = []
    if ":=" in toks:
        k = toks.index(":=")
        names = [t for t in toks[:k] if t != ","]
        toks = toks[k + 1:]
    body, i = _parse_block(items, i + 1, ("else", "end"))
    if items[i][1] != "end":
        raise GoTemplateError("{{range}} ... {{else}} is outside the supported subset")
    return ("range", names, toks, body), i + 1


def _truth(v: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    if v is None or isinstance(v, bool):
        return bool(v)
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def _show(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class _Env:
    def __init__(self, data: Any):
        self.root = data
        self.scopes: list[dict[str, Any]] = [{"$": data}]

    def lookup(self, name: str) -> Any:
        for s in reversed(self.scopes):
            if name in s:
                return s[name]
        raise GoTemplateError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for s in reversed(self.scopes):
            if name in s:
                s[name] = value
                return
        raise GoTemplateError(f"undefined variable {name}")


def _field(obj: Any, path: list[str]) -> Any:
    for p in path:
        if isinstance(obj, dict):
            if p not in obj:
                return None  # a missing map key is "no value" in Go
            obj = obj[p]
        else:
            raise GoTemplateError(f"can't evaluate field {p} in {type(obj).__name__}")
    return obj


def _operand(tok: str, env: _Env, dot: Any) -> Any:
    if tok.startswith('"'):
        return json.loads(tok)  # the escapes a Modelfile needs (newline, tab, quote) are JSON's
    if tok in ("true", "false"):
        return tok == "true"
    if tok == "nil":
        return None
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if tok == ".":
        return dot
    if tok.startswith("."):
        return _field(dot, tok[1:].split("."))
    if tok.startswith("$"):
        name, *path = tok.split(".")
        return _field(env.lookup(name), path)
    raise GoTemplateError(f"unknown operand {tok!r}")


def _args(toks: list[str]) -> Iterator[list[str]]:
    """Split a command's tokens into arguments (a parenthesised group is one argument)."""
    i = 0
    while i < len(toks):
        if toks[i] == "(":
            depth, j = 0, i
            while j < len(toks):
                depth += {"(": 1, ")": -1}.get(toks[j], 0)
                if depth == 0:
                    break
                j += 1
            if depth:
                raise GoTemplateError("unbalanced parentheses")
            yield toks[i + 1:j]
            i = j + 1
        else:
            yield [toks[i]]
            i += 1


def _eval(toks: list[str], env: _Env, dot: Any) -> Any:
    if not toks:
        raise GoTemplateError("empty command")
    args = list(_args(toks))
    head = args[0]
    if len(head) == 1 and head[0] in _FUNCS:
        return _FUNCS[head[0]](args[1:], env, dot)
    if len(args) != 1:
        raise GoTemplateError(f"{toks[0]!r} is not a function")
    return _eval(head, env, dot) if len(head) > 1 else _operand(head[0], env, dot)


def _values(args, env, dot) -> list[Any]:
    return [_eval(a, env, dot) for a in args]


def _eq(args, env, dot):
    first, *rest = _values(args, env, dot)
    if not rest:
        raise GoTemplateError("eq needs at least two arguments")
    return any(first == r for r in rest)


def _and(args, env, dot):
    v = None
    for a in args:
        v = _eval(a, env, dot)
        if not _truth(v):
            return v
    return v


def _or(args, env, dot):
    v = None
    for a in args:
        v = _eval(a, env, dot)
        if _truth(v):
            return v
    return v


def _index(args, env, dot):
    obj, *keys = _values(args, env, dot)
    for k in keys:
        try:
            obj = obj[k]
        except (IndexError, KeyError, TypeError) as e:
            raise GoTemplateError(f"index {k}: {e}") from e
    return obj


def _slice(args, env, dot):
    obj, *bounds = _values(args, env, dot)
    if len(bounds) > 2 or any(not 0 <= b <= len(obj) for b in bounds):
        raise GoTemplateError(f"slice bounds {bounds} out of range")
    return obj[slice(*bounds)] if len(bounds) == 2 else obj[bounds[0]:] if bounds else obj


_FUNCS = {
    "eq": _eq,
    "ne": lambda a, e, d: not _eq(a, e, d),
    "not": lambda a, e, d: not _truth(_eval(a[0], e, d)),
    "and": _and,
    "or": _or,
    "len": lambda a, e, d: len(_eval(a[0], e, d)),
    "index": _index,
    "slice": _slice,
}


def _run(nodes: list, env: _Env, dot: Any, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "action":
            toks = node[1]
            if len(toks) >= 3 and toks[0].startswith("$") and toks[1] in (":=", "="):
                value = _eval(toks[2:], env, dot)
                if toks[1] == ":=":
                    env.scopes[-1][toks[0]] = value
                else:
                    env.assign(toks[0], value)
            else:
                out.append(_show(_eval(toks, env, dot)))
        elif kind == "if":
            _, branches, other = node
            for cond, body in branches:
                if _truth(_eval(cond, env, dot)):
                    _scoped(body, env, dot, out)
                    break
            else:
                if other is not None:
                    _scoped(other, env, dot, out)
        elif kind == "range":
            _, names, expr, body = node
            seq = _eval(expr, env, dot)
            for i, item in enumerate(seq or []):
                env.scopes.append({})
                if len(names) == 1:
                    env.scopes[-1][names[0]] = item
                elif len(names) == 2:
                    env.scopes[-1][names[0]], env.scopes[-1][names[1]] = i, item
                _run(body, env, item, out)
                env.scopes.pop()


def _scoped(body, env, dot, out) -> None:
    env.scopes.append({})
    try:
        _run(body, env, dot, out)
    finally:
        env.scopes.pop()


def render(template: str, data: Any) -> str:
    """Execute `template` on `data` (dicts and lists) as Go's text/template would."""
    nodes, _ = _parse_block(_lex(template), 0, ())
    out: list[str] = []
    _run(nodes, _Env(data), data, out)
    return "".join(out)
