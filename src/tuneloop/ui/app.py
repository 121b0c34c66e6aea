"""The web app: server-rendered pages over a project, each also served as JSON under /api.

    /                 overview            /registry[/vN]   versions, aliases, promote, rollback
    /runs[/NAME]      runs, live curves   /monitor         traffic and drift over time, gate
    /evaluation       systems, per class  /review          rate logged outputs, one at a time
    /data             data card           /playground      chat with versions side by side

Pages are Jinja2 templates (ui/templates) with a small vendored script and style (ui/static);
charts are SVG drawn on the server. Page data is built in a worker thread, so a slow disk or
database never stalls the event loop. Access rules live in ui/access.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from tuneloop.errors import TuneloopError
from tuneloop.ui import charts, pages
from tuneloop.ui import review as rv
from tuneloop.ui.access import Access, AccessPolicy, Identity, cookie_header
from tuneloop.ui.jobs import Jobs
from tuneloop.ui.monitor import monitor_window
from tuneloop.ui.playground import Playground
from tuneloop.ui.project import Project

HERE = Path(__file__).parent
NAV = [
    ("/", "Overview"),
    ("/runs", "Runs"),
    ("/evaluation", "Evaluation"),
    ("/data", "Data"),
    ("/registry", "Registry"),
    ("/monitor", "Monitor"),
    ("/review", "Review"),
    ("/playground", "Playground"),
]


def _metric(m: Any) -> str:
    """{'value', 'ci'} as `0.912 [0.871, 0.950]`."""
    if not isinstance(m, dict) or m.get("value") is None:
        return "–"
    ci = m.get("ci") or [None, None]
    if ci and ci[0] is not None and ci[1] is not None:
        return f"{charts.fmt(m['value'])} [{charts.fmt(ci[0])}, {charts.fmt(ci[1])}]"
    return charts.fmt(m["value"])


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _when(v: Any) -> str:
    """A stored time (datetime or ISO string) as `2026-11-30 20:06` (UTC)."""
    if v is None or v == "":
        return "–"
    s = v.isoformat() if hasattr(v, "isoformat") else str(v)
    return s[:16].replace("T", " ")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.ChainableUndefined,
    )
    env.filters |= {
        "num": charts.fmt,
        "when": _when,
        "metric": _metric,
        "duration": _duration,
        "heat": charts.heat,
        "tojson_pretty": lambda v: json.dumps(v, indent=2, default=str, ensure_ascii=False),
        "bytes": lambda n: f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B",
    }
    return env


def _drop_charts(d: Any) -> Any:
    return {k: v for k, v in d.items() if k != "charts"} if isinstance(d, dict) else d


class UI:
    """The app's state: project, access policy, jobs, playground, flash messages."""

    def __init__(self, project: Project, policy: AccessPolicy):
        self.project, self.policy = project, policy
        self.jobs = Jobs()
        self.playground = Playground(project.cfg, project.registry)
        self.env = _environment()
        self.flash: dict[str, list[dict]] = {}
        self.names: dict[str, str] = {}  # session -> rater name typed on the Review page
        self.store_error: str | None = None
        try:
            rv.ensure_tables(project.store)
        except Exception as e:  # no [serve] extra, or an unreachable database: pages say so
            self.store_error = f"traffic store unavailable: {type(e).__name__}: {e}"

    @property
    def store_ok(self) -> bool:
        return self.store_error is None

    # ---- rendering ---------------------------------------------------------------------
    def render(self, request: Request, template: str, data: dict, status: int = 200) -> HTMLResponse:
        st = request.state
        ident: Identity | None = getattr(st, "identity", None)
        ctx = {
            "d": data,
            "charts": data.get("charts", {}) if isinstance(data, dict) else {},
            "me": ident,
            "csrf": getattr(st, "csrf", ""),
            "nav": NAV,
            "path": request.url.path,
            "project": self.project.root.name,
            "flash": self.flash.pop(getattr(st, "sid", ""), []),
            "store_error": self.store_error,
            "keyed": self.policy.keyed,
            "rater_name": self.rater_name(request),
        }
        return HTMLResponse(self.env.get_template(template).render(**ctx), status_code=status)

    def rater_name(self, request: Request) -> str | None:
        ident = getattr(request.state, "identity", None)
        if ident is not None and ident.role == "rater":
            return ident.name
        return self.names.get(getattr(request.state, "sid", ""))

    def say(self, request: Request, text: str, kind: str = "ok", **extra) -> None:
        self.flash.setdefault(request.state.sid, []).append({"text": text, "kind": kind, **extra})


async def form(request: Request) -> dict[str, Any]:
    """The body of a change: a urlencoded form or a JSON object."""
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        v = json.loads(body or b"{}")
        if not isinstance(v, dict):
            raise TuneloopError("expected a JSON object")
        return v
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def wants_json(request: Request) -> bool:
    return (
        request.url.path.startswith("/api/")
        or "application/json" in request.headers.get("accept", "")
        or request.headers.get("content-type", "").startswith("application/json")
    )


def create_app(project: Project, policy: AccessPolicy | None = None) -> FastAPI:
    """The FastAPI app over `project`, guarded by `policy` (loopback, no key, by default)."""
    policy = policy or AccessPolicy()
    ui = UI(project, policy)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # why: the first Evaluation or Review view would otherwise pay for importing the eval
        # stack (matplotlib, sklearn), about a second; done once in the background at start.
        threading.Thread(target=_warm_imports, daemon=True).start()
        yield
        ui.jobs.close()
        ui.playground.close()

    app = FastAPI(title="tuneloop ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.ui = ui
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(Access, policy=policy)

    @app.exception_handler(TuneloopError)
    async def _user_error(request: Request, e: TuneloopError):
        status = 404 if str(e).startswith("no run") or "no version" in str(e) else 400
        if wants_json(request):
            return JSONResponse({"error": {"message": str(e), "status": status}}, status_code=status)
        return ui.render(request, "error.html", {"message": str(e), "status": status}, status)

    def page(path: str, template: str):
        """Register GET `path` (HTML) and GET /api`path` (JSON) around one data function."""

        def deco(fn: Callable[[Request], dict]):
            async def as_html(request: Request):
                data = await run_in_threadpool(fn, request)
                if isinstance(data, Response):
                    return data
                return ui.render(request, template, data)

            async def as_json(request: Request):
                data = await run_in_threadpool(fn, request)
                return JSONResponse(jsonable_encoder(_drop_charts(data)))

            app.add_api_route(path, as_html, methods=["GET"], include_in_schema=False)
            app.add_api_route(
                "/api" + (path if path != "/" else "/overview"),
                as_json,
                methods=["GET"],
                include_in_schema=False,
            )
            return fn

        return deco

    # ---- pages -------------------------------------------------------------------------
    @page("/", "overview.html")
    def overview(request: Request) -> dict:
        return pages.overview(project, ui.store_ok)

    @page("/runs", "runs.html")
    def runs(request: Request) -> dict:
        return pages.runs(project)

    @app.get("/runs/{name:path}/live", include_in_schema=False)
    async def run_live(request: Request, name: str):
        d = await run_in_threadpool(pages.run, project, name)
        return ui.render(request, "_run_live.html", d)

    @page("/runs/{name:path}", "run.html")
    def run(request: Request) -> dict:
        return pages.run(project, request.path_params["name"])

    @page("/evaluation", "evaluation.html")
    def evaluation(request: Request) -> dict:
        q = request.query_params
        return pages.evaluation_page(
            project, q.get("run"), q.get("filter", "all"), _int(q.get("page"), 0), q.get("q", "")[:200]
        )

    @page("/data", "data.html")
    def data(request: Request) -> dict:
        q = request.query_params
        path = project.data_file(q.get("file"))
        emb = q.get("embeddings", "1") != "0"
        key = ("audit", str(path), path.stat().st_mtime_ns, emb)

        def audit() -> dict:
            from tuneloop.data.audit import run_audit

            return pages.audit_result(run_audit(path, project.cfg, embeddings=emb))

        job = ui.jobs.start(key, audit)
        # One snapshot: the job may finish between two reads, and the page must not say
        # "done" without its card.
        state = job.as_dict()
        result = job.result if state["status"] == "done" else None
        return {
            "file": str(path),
            "files": project.data_files(),
            "embeddings": emb,
            "job": state,
            "card": result,
            "charts": pages.data_charts(result) if result else {},
        }

    @page("/registry", "registry.html")
    def registry(request: Request) -> dict:
        return pages.registry_page(project)

    @page("/registry/{ref}", "version.html")
    def version(request: Request) -> dict:
        return pages.version_page(project, request.path_params["ref"])

    @page("/monitor", "monitor.html")
    def monitor(request: Request) -> dict:
        job = ui.jobs.latest("monitor")
        note = job.key[-1] if job is not None else ""
        return pages.monitor_page(project, job, note, ui.store_ok)

    @page("/review", "review.html")
    def review(request: Request) -> dict:
        return review_data(ui, request)

    @page("/playground", "playground.html")
    def playground(request: Request) -> dict:
        return {
            "choices": ui.playground.choices(),
            "task": project.cfg.task.type,
            "system_prompt": project.cfg.task.system_prompt or "",
            "template": project.cfg.task.type == "classification",
        }

    # ---- sign in -------------------------------------------------------------------------
    @app.get("/login", include_in_schema=False)
    async def login_page(request: Request):
        return ui.render(request, "login.html", {"next": _safe_next(request.query_params.get("next"))})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        f = await form(request)
        ident = policy.check_key(str(f.get("key", "")))
        nxt = _safe_next(f.get("next"))
        if ident is None:
            return ui.render(request, "login.html", {"next": nxt, "error": "wrong key"}, 401)
        sid = policy.login(ident)
        resp = RedirectResponse(nxt if ident.role == "admin" or nxt.startswith("/review") else "/review", 303)
        resp.headers["set-cookie"] = cookie_header(sid)
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request):
        policy.sessions.pop(request.state.sid, None)
        return RedirectResponse("/login" if policy.keyed else "/", 303)

    # ---- changes -------------------------------------------------------------------------
    @app.post("/registry/promote", include_in_schema=False)
    async def promote(request: Request):
        f = await form(request)
        vid = project.registry.get(str(f.get("version", ""))).id
        reason = _reason(f)
        if str(f.get("confirm", "")).strip() != vid:
            raise TuneloopError(f"type the version id {vid} in the confirmation box to promote it")
        old = project.registry.aliases().get("champion")
        await run_in_threadpool(project.registry.promote, vid, _evidence(ui, request, reason))
        return _done(
            ui, request, f"{vid} is the champion (was {old})", "/registry", {"champion": vid, "previous": old}
        )

    @app.post("/registry/rollback", include_in_schema=False)
    async def rollback(request: Request):
        f = await form(request)
        reason = _reason(f)
        stack = project.registry.champion_stack()
        if len(stack) < 2:
            raise TuneloopError("no previous champion to roll back to")
        if str(f.get("confirm", "")).strip() != stack[-2]:
            raise TuneloopError(f"type {stack[-2]} (the version to roll back to) in the confirmation box")
        v = await run_in_threadpool(project.registry.rollback, _evidence(ui, request, reason))
        return _done(
            ui,
            request,
            f"rolled back: {v.id} is the champion again (was {stack[-1]})",
            "/registry",
            {"champion": v.id, "previous": stack[-1]},
        )

    @app.post("/review/rate", include_in_schema=False)
    async def rate(request: Request):
        f = await form(request)
        if not ui.store_ok:
            raise TuneloopError(ui.store_error or "no traffic store")
        ident: Identity = request.state.identity
        rater = ident.name if ident.role == "rater" else str(f.get("rater") or ui.rater_name(request) or "")
        rater = rv.clean_rater(rater)
        if ident.role != "rater":
            ui.names[request.state.sid] = rater
        source, item = str(f.get("source", "traffic")), str(f.get("item_id", ""))
        label = str(f.get("label") or f.get("label_text") or "").strip() or None
        labels = project.cfg.task.labels or []
        if label is not None and labels and label not in labels:
            raise TuneloopError(f"label {label!r} is not one of the task's labels ({', '.join(labels[:20])})")
        res = await run_in_threadpool(
            lambda: rv.rate(
                project.store,
                source=source,
                item_id=item,
                rater=rater,
                rating=f.get("rating"),
                label=label,
                corrected=f.get("corrected") or None,
            )
        )
        others = await run_in_threadpool(rv.others_on, project.store, source, item, rater)
        back = {k: f[k] for k in ("source", "version", "system", "queue") if f.get(k)}
        ui.say(
            request,
            f"saved your rating of {item} ({rv.summary(res)})",
            "ok",
            others=[o | {"summary": rv.summary(o)} for o in others],
            agreement=rv.agree_text(res, others),
        )
        return _done(
            ui, request, None, "/review" + ("?" + urlencode(back) if back else ""), res | {"others": others}
        )

    @app.post("/review/name", include_in_schema=False)
    async def set_name(request: Request):
        f = await form(request)
        ui.names[request.state.sid] = rv.clean_rater(str(f.get("rater", "")))
        back = {k: f[k] for k in ("source", "version", "system", "queue") if f.get(k)}
        return RedirectResponse("/review" + ("?" + urlencode(back) if back else ""), 303)

    @app.post("/monitor/run", include_in_schema=False)
    async def monitor_run(request: Request):
        f = await form(request)
        spec = str(f.get("window") or project.cfg.monitor.window).strip()
        if not re.fullmatch(r"\d+(\.\d+)?[mhdw]", spec):
            raise TuneloopError(f"window {spec!r}: a number and a unit m/h/d/w, e.g. 24h or 7d")
        ppl = str(f.get("perplexity", "")) in ("1", "on", "true")
        now, note = await run_in_threadpool(monitor_window, project.store, spec)
        if now is None:
            raise TuneloopError(note)

        def run_it() -> dict:
            from tuneloop.monitor.check import run_monitor

            return run_monitor(project.cfg, spec, now=now, perplexity=ppl)

        ui.jobs.start(("monitor", spec, ppl, time.time(), note), run_it)
        return _done(
            ui, request, f"monitor started: {note}", "/monitor", {"status": "started", "window": note}
        )

    @app.post("/playground/chat", include_in_schema=False)
    async def chat(request: Request):
        f = await form(request)
        msgs = f.get("messages")
        if not isinstance(msgs, list):
            msgs = [{"role": "user", "content": str(f.get("message", ""))}]
        models = f.get("models") or []
        models = models if isinstance(models, list) else [m for m in str(models).split(",") if m]
        out = await run_in_threadpool(
            ui.playground.chat,
            [str(m) for m in models],
            msgs,
            _int(f.get("max_tokens"), 64),
            bool(f.get("template")),
            f.get("system"),
        )
        return JSONResponse({"answers": out})

    return app


def _warm_imports() -> None:
    import tuneloop.evaluate.metrics  # noqa: F401
    import tuneloop.evaluate.report  # noqa: F401


def review_data(ui: UI, request: Request) -> dict[str, Any]:
    """The Review page: the next item for this rater, the label set, agreement so far."""
    from tuneloop.evaluate.metrics import parse_label

    project, q = ui.project, request.query_params
    if not ui.store_ok:
        return {"error": ui.store_error, "item": None, "sources": []}
    evals = [e["name"] for e in project.evals()]
    sources = ["traffic"] + [f"eval:{n}" for n in evals]
    source = q.get("source") or "traffic"
    if source not in sources:
        raise TuneloopError(f"unknown review source {source!r}; one of: {', '.join(sources)}")
    rater = ui.rater_name(request)
    labels = list(project.cfg.task.labels or []) if project.cfg.task.type == "classification" else []
    skip, version, system = _int(q.get("skip"), 0), q.get("version") or None, q.get("system") or "finetuned"
    queue = "overlap" if q.get("queue") == "overlap" else "new"
    item, left = None, 0
    if rater and source == "traffic":
        row, left = rv.next_request(project.store, rater, skip, version, queue)
        if row is not None:
            item = {
                "item_id": row["request_id"],
                "output": row["output_text"],
                "input": row["input_text"],
                "messages": row["messages"],
                "model": row["model"],
                "version": row["version"],
                "created": row["created"],
                "feedback": row["feedback"],
                "latency_ms": row["latency_ms"],
            }
    elif rater:
        from tuneloop.evaluate.report import read_eval

        run = project.run_path(source[5:])
        _, preds, _ = read_eval(run)
        done = rv.rated_ids(project.store, source, rater)
        todo = [p for p in preds if p["system"] == system and f"{p['id']}|{system}" not in done]
        left = len(todo)
        if todo:
            p = todo[min(skip, len(todo) - 1)]
            item = {
                "item_id": f"{p['id']}|{system}",
                "output": p.get("generated") or p.get("prediction") or "",
                "input": p.get("input", ""),
                "messages": [{"role": "user", "content": p.get("input", "")}],
                "reference": p.get("reference"),
                "model": system,
                "version": source[5:],
                "feedback": [],
            }
    if item is not None and labels:
        item["model_label"] = parse_label(item["output"] or "", labels)
    return {
        "rater": rater,
        "source": source,
        "sources": sources,
        "item": item,
        "left": left,
        "skip": skip,
        "queue": queue,
        "version": version,
        "system": system,
        "labels": labels,
        "task": project.cfg.task.type,
        "agreement": rv.agreement(project.store),
        "recent": rv.recent(project.store, 10),
    }


def _reason(f: dict) -> str:
    reason = " ".join(str(f.get("reason", "")).split())[:500]
    if not reason:
        raise TuneloopError("give a reason: it is kept in the registry history")
    return reason


def _evidence(ui: UI, request: Request, reason: str) -> dict:
    ident: Identity = request.state.identity
    return {
        "reason": reason,
        "by": ui.rater_name(request) or ident.name or f"{ident.via} user",
        "via": "tuneloop ui",
    }


def _done(ui: UI, request: Request, message: str | None, back: str, data: dict):
    """JSON for a script; for a form, a flash message and a redirect (POST-redirect-GET)."""
    if wants_json(request):
        return JSONResponse(jsonable_encoder(data | ({"message": message} if message else {})))
    if message:
        ui.say(request, message)
    return RedirectResponse(back, 303)


def _int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _safe_next(v: Any) -> str:
    """A same-site path to return to after sign-in (no `//host` or scheme: no open redirect)."""
    v = str(v or "/")
    return v if v.startswith("/") and not v.startswith("//") and "\\" not in v else "/"
