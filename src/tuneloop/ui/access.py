"""Who may look and who may change: the web app's access rules, as one ASGI middleware.

- Binding: loopback by default; beyond loopback the app refuses to start without the API key
  (the key of `tuneloop serve`, from `serve.api_key_env`): `check_bind`, the server's own rule.
- Keys: with the API key set, every page needs it (sign in once per browser session, or send
  `Authorization: Bearer KEY`). Rater keys (`--rater-keys-env`, "name:key,name:key") sign a
  rater in under their own name; a rater sees and uses the Review page only, anything else
  answers 403. Without any key (loopback only) the local user may do everything.
- Changes (POST: promote, rollback, ratings, playground) from a browser must carry the page's
  CSRF token (an HMAC of the session cookie) and an Origin (or Referer) of this very host; the
  session cookie is HttpOnly and SameSite=Strict. A request authenticated by a bearer header
  is not a browser's ambient credential and needs no token.
- Without a key, the Host header must be a loopback name, so a DNS-rebinding page cannot read
  the app through the victim's browser. Every response carries a strict Content-Security-Policy
  (scripts only from /static), no framing, no sniffing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from html import escape
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from tuneloop.errors import TuneloopError

COOKIE = "tuneloop_ui"
OPEN_PREFIXES = ("/static/", "/login", "/favicon.ico")
RATER_PREFIXES = ("/review", "/api/review", "/logout", "/login", "/static/", "/favicon.ico")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'; object-src 'none'"
)


def parse_rater_keys(spec: str | None) -> dict[str, str]:
    """'alice:KEY1,bob:KEY2' -> {KEY1: 'alice', KEY2: 'bob'}."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, key = part.partition(":")
        if not sep or not name.strip() or len(key.strip()) < 8:
            raise TuneloopError(
                "rater keys: expected 'name:key,name:key' with keys of at least 8 "
                "characters (e.g. alice:$(openssl rand -hex 16))"
            )
        out[key.strip()] = name.strip()
    return out


@dataclass
class Identity:
    """Who is asking: `role` admin (may change anything) or rater (may only rate)."""

    role: str
    name: str | None
    via: str  # bearer, session, local
    sid: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "via": self.via}


@dataclass
class AccessPolicy:
    """Keys, sessions and the CSRF secret of one running app."""

    admin_key: str | None = None
    rater_keys: dict[str, str] = field(default_factory=dict)
    allowed_hosts: set[str] = field(default_factory=set)
    max_body: int = 1_000_000
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def keyed(self) -> bool:
        return self.admin_key is not None

    def check_key(self, key: str) -> Identity | None:
        """The identity a key grants, or None."""
        k = key.strip().encode()
        if self.admin_key and hmac.compare_digest(k, self.admin_key.encode()):
            return Identity("admin", None, "session")
        for rk, name in self.rater_keys.items():
            if hmac.compare_digest(k, rk.encode()):
                return Identity("rater", name, "session")
        return None

    def login(self, ident: Identity) -> str:
        """A new session id for a signed-in identity (a fresh id: no session fixation)."""
        sid = secrets.token_urlsafe(24)
        self.sessions[sid] = {"role": ident.role, "name": ident.name, "time": time.time()}
        if len(self.sessions) > 10_000:  # bounded: drop the oldest
            for old in sorted(self.sessions, key=lambda s: self.sessions[s]["time"])[:1000]:
                self.sessions.pop(old, None)
        return sid

    def csrf(self, sid: str) -> str:
        return hmac.new(self.secret, sid.encode(), hashlib.sha256).hexdigest()

    def identify(self, headers: dict[bytes, bytes], sid: str) -> Identity | None:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            ident = self.check_key(auth[7:])
            if ident is not None:
                ident.via = "bearer"
            return ident
        s = self.sessions.get(sid)
        if s is not None:
            return Identity(s["role"], s["name"], "session", sid)
        if not self.keyed:
            return Identity("admin", None, "local", sid)
        return None


def _cookie_sid(headers: dict[bytes, bytes]) -> str:
    c = SimpleCookie()
    try:
        c.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:
        return ""
    m = c.get(COOKIE)
    return m.value if m is not None else ""


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Access:
    """ASGI middleware enforcing AccessPolicy (see the module docstring)."""

    def __init__(self, app: Any, policy: AccessPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        p = self.policy
        headers = dict(scope.get("headers") or [])
        path, method = scope["path"], scope["method"]
        host = headers.get(b"host", b"").decode("latin-1")
        sid = _cookie_sid(headers)
        new_sid = None
        if not sid or (sid not in p.sessions and len(sid) != 32):
            sid = new_sid = secrets.token_urlsafe(24)
        send = self._decorated(send, new_sid, path)
        html = b"text/html" in headers.get(b"accept", b"")
        if not p.keyed and _host_name(host) not in LOOPBACK_NAMES | p.allowed_hosts:
            await _deny(
                send,
                403,
                f"host {host!r} is not this machine: the app answers loopback "
                "names only while it has no API key (DNS rebinding protection)",
            )
            return
        ident = p.identify(headers, sid)
        is_open = path.startswith(OPEN_PREFIXES)
        api = path.startswith("/api/") or b"application/json" in headers.get(b"accept", b"")
        if ident is None and not is_open:
            if method == "GET" and not api:
                await _redirect(send, f"/login?next={quote(path)}")
            else:
                await _deny(
                    send,
                    401,
                    "sign in: send 'Authorization: Bearer KEY' or use /login",
                    [(b"www-authenticate", b"Bearer")],
                )
            return
        if ident is not None and ident.role == "rater" and not path.startswith(RATER_PREFIXES):
            await _deny(
                send,
                403,
                f"rater {ident.name!r} may only rate (the Review page); this needs the API key",
                html=html,
            )
            return
        scope.setdefault("state", {})
        scope["state"]["identity"] = ident
        scope["state"]["csrf"] = p.csrf(sid)
        scope["state"]["sid"] = sid
        if method not in UNSAFE:
            await self.app(scope, receive, send)
            return
        body, ok = b"", True
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > p.max_body:
                ok = False
                break
        if not ok:
            await _deny(send, 413, f"request body over {p.max_body} bytes")
            return
        if ident is None or ident.via != "bearer":
            why = _cross_site(headers, host) or (
                None
                if hmac.compare_digest(_token(headers, body), p.csrf(sid))
                else "missing or wrong CSRF token (reload the page)"
            )
            if why:
                await _deny(send, 403, why)
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _decorated(self, send, new_sid: str | None, path: str):
        async def wrapped(message) -> None:
            if message["type"] == "http.response.start":
                h = list(message.get("headers") or [])
                names = {k.lower() for k, _ in h}
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if not path.startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                h += [(k, v) for k, v in extra if k not in names]
                if new_sid and not any(k.lower() == b"set-cookie" for k, _ in h):
                    h.append((b"set-cookie", cookie_header(new_sid).encode()))
                message = dict(message, headers=h)
            await send(message)

        return wrapped


def cookie_header(sid: str) -> str:
    return f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict"


def _cross_site(headers: dict[bytes, bytes], host: str) -> str | None:
    """Why a state-changing browser request is refused as cross-site, or None."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin or origin == "null":
        origin = headers.get(b"referer", b"").decode("latin-1")
    if not origin:
        return "a change needs an Origin or Referer header (cross-site request protection)"
    if urlsplit(origin).netloc != host:
        return f"cross-site request refused: origin {origin!r} is not {host!r}"
    return None


def _token(headers: dict[bytes, bytes], body: bytes) -> str:
    t = headers.get(b"x-csrf-token", b"").decode("latin-1")
    if t:
        return t
    ctype = headers.get(b"content-type", b"")
    try:
        if ctype.startswith(b"application/json"):
            v = json.loads(body or b"{}")
            return str(v.get("csrf", "")) if isinstance(v, dict) else ""
        if ctype.startswith(b"application/x-www-form-urlencoded"):
            return (parse_qs(body.decode("utf-8", "replace")).get("csrf") or [""])[0]
    except (ValueError, UnicodeDecodeError):
        return ""
    return ""


async def _deny(send, status: int, message: str, extra=(), html: bool = False) -> None:
    if html:
        body = (
            f"<!doctype html><meta charset=utf-8><title>{status}</title><h1>{status}</h1>"
            f"<p>{escape(message)}</p><p><a href='/review'>Review</a> · <a href='/login'>sign in"
            "</a></p>"
        ).encode()
    else:
        body = json.dumps({"error": {"message": message, "status": status}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8" if html else b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})
