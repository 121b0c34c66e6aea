"""`tuneloop ui` without a browser: every page and its JSON on a project built from real tiny
runs, the access rules (loopback, keys, rater keys, CSRF, Origin, Host), ratings stored as
feedback that `tuneloop retrain` reads, promote and rollback with reasons, live run rows."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import LABELS, phrase, write_classification_project, write_rows
from tuneloop.errors import TuneloopError

BASE = "http://127.0.0.1"
PAGES = ["/", "/runs", "/evaluation", "/data?embeddings=0", "/registry", "/monitor", "/review", "/playground"]
_CACHE: dict[str, Path] = {}


def build_ui_project(root: Path, model: Path) -> Path:
    """A project as a user has it after the loop ran once: two real LoRA runs of the tiny model
    (the first evaluated against zero- and few-shot baselines, with samples written during
    training), both registered (v1 champion, v2 challenger), and 30 served requests in the
    traffic store. Returns the config path."""
    from tuneloop.config import load_config
    from tuneloop.evaluate.suite import run_eval
    from tuneloop.registry.registry import Registry
    from tuneloop.serve.store import TrafficStore, store_url
    from tuneloop.train.recipe import train

    write_rows(root / "test.jsonl", range(100, 116))
    write_rows(root / "validation.jsonl", range(200, 206))
    cfg_path = write_classification_project(
        root,
        model,
        n=40,
        data={"test": "test.jsonl", "validation": "validation.jsonl"},
        eval={"few_shot_k": 2},
        train={
            "max_steps": 8,
            "eval_every": 4,
            "learning_rate": 1e-2,
            "sample_every": 4,
            "sample_prompts": 2,
        },
        monitor={"min_requests": 5},
    )
    cfg = load_config(cfg_path)
    run1, _ = train(
        cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": "first"})}), quiet=True
    )
    run_eval(run1, baselines="zero_shot,few_shot", limit=12, n_boot=100, quiet=True)
    run2, _ = train(
        cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": "second"}), "seed": 1}),
        quiet=True,
    )
    reg = Registry.from_config(cfg)
    reg.register(run1, note="first run")
    reg.register(run2, note="second run", alias="challenger")
    store = TrafficStore(store_url(cfg))
    t0 = datetime.now(UTC) - timedelta(hours=2)
    for i in range(30):
        lab = LABELS[i % 2]
        text = f"Classify the text into one of: {', '.join(LABELS)}.\n\n{phrase(lab, 300 + i)}"
        body = {
            "model": "champion",
            "messages": [
                {"role": "system", "content": "Answer with the label."},
                {"role": "user", "content": text},
            ],
        }
        store.log_request(
            request_id=f"chatcmpl-{i:03d}",
            model="champion",
            version="v1",
            endpoint="chat",
            input_text=text,
            request_json=json.dumps(body),
            output_text=LABELS[0] if i % 3 else LABELS[1],
            latency_ms=20 + i,
            prompt_tokens=30,
            completion_tokens=3,
            created=t0 + timedelta(minutes=3 * i),
        )
    store.close()
    return cfg_path


def ui_project(tmp_path_factory, model: Path) -> Path:
    """The project, built once per test session (shared with the browser tests)."""
    if "project" not in _CACHE:
        _CACHE["project"] = build_ui_project(tmp_path_factory.mktemp("uiproj"), model)
    return _CACHE["project"]


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory, learnable_model) -> Path:
    """A private copy of the project (these tests rate and promote)."""
    import shutil

    src = ui_project(tmp_path_factory, learnable_model).parent
    dst = tmp_path_factory.mktemp("uicopy") / "proj"
    shutil.copytree(src, dst, symlinks=True)
    return dst / "tuneloop.yaml"


def client(cfg: Path, **policy) -> TestClient:
    from tuneloop.ui.access import AccessPolicy
    from tuneloop.ui.app import create_app
    from tuneloop.ui.project import Project

    return TestClient(create_app(Project(cfg), AccessPolicy(**policy)), base_url=BASE)


def csrf(c: TestClient, path: str = "/registry") -> str:
    """The CSRF token of the client's session, as a page embeds it."""
    html = c.get(path).text
    return html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def post(c: TestClient, path: str, data: dict, token: str | None = None, origin: str | None = BASE):
    headers = {"Origin": origin} if origin else {}
    return c.post(
        path, data=data | ({"csrf": token} if token else {}), headers=headers, follow_redirects=False
    )


# ---- pages --------------------------------------------------------------------------------
def test_every_page_renders_and_serves_json(project_copy):
    c = client(project_copy)
    for path in PAGES + ["/runs/first", "/registry/v1", "/registry/champion"]:
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert "text/html" in r.headers["content-type"]
        assert "content-security-policy" in r.headers and r.headers["x-frame-options"] == "DENY"
    data = c.get("/api/runs").json()
    by = {r["name"]: r for r in data["runs"]}
    assert set(by) == {"first", "second"}
    assert (
        by["first"]["status"] == "finished" and by["first"]["steps"] == 8 and by["first"]["method"] == "lora"
    )
    assert by["first"]["data"] and by["first"]["val_loss"] is not None
    assert by["first"]["eval"]["metric"] == "accuracy"
    run = c.get("/api/runs/first").json()
    assert len(run["curves"]["loss"]) == 8 and len(run["curves"]["val_loss"]) == 2 and run["curves"]["lr"]
    assert run["samples"]["steps"] == [0, 4, 8] and len(run["samples"]["prompts"]) == 2
    assert any(f["path"] == "adapter/adapter_model.safetensors" for f in run["files"])
    assert "charts" not in run  # SVG is for the HTML page only
    html = c.get("/runs/first").text
    assert 'id="loss-chart"' in html and 'data-points="10"' in html  # 8 train + 2 val points


def test_evaluation_page_numbers_come_from_eval_json(project_copy):
    c = client(project_copy)
    d = c.get("/api/evaluation").json()
    res = json.loads((project_copy.parent / "runs" / "first" / "eval" / "eval.json").read_text())
    assert d["run"] == "first" and d["primary"] == "accuracy"
    rows = {r["system"]: r for r in d["systems"]["rows"]}
    assert set(rows) == set(res["systems"]) and list(rows)[0] == "finetuned"
    assert rows["finetuned"]["metrics"]["accuracy"] == res["systems"]["finetuned"]["metrics"]["accuracy"]
    costs = dict(d["systems"]["costs"])
    assert "latency_s_per_example" in costs
    assert all(isinstance(r["cost"]["latency_s_per_example"], float) for r in rows.values())
    assert d["comparisons"] == res["comparisons"]
    pc = {r["label"]: r for r in d["per_class"]["finetuned"]}
    for lab in LABELS:
        want = res["details"]["finetuned"]["per_class"][lab]
        assert pc[lab]["f1"]["value"] == want["f1"] and pc[lab]["support"] == want["support"]
        lo, hi = pc[lab]["f1"]["ci"]
        assert 0 <= lo <= want["f1"] + 1e-9 and want["f1"] - 1e-9 <= hi <= 1
    ex = d["examples"]
    assert ex["counts"]["total"] == 12 and ex["systems"][0] == "finetuned"
    assert set(ex["rows"][0]["systems"]) == set(res["systems"])
    dis = c.get("/api/evaluation?filter=disagree").json()["examples"]
    for e in dis["rows"]:
        assert len({v["prediction"] for v in e["systems"].values()}) > 1
    err = c.get("/api/evaluation?filter=errors").json()["examples"]
    assert all(e["systems"]["finetuned"]["right"] is False for e in err["rows"])
    assert c.get("/api/evaluation?run=nope").status_code == 400


def test_data_card_audits_in_the_background(project_copy):
    c = client(project_copy)
    for _ in range(300):
        d = c.get("/api/data?embeddings=0").json()
        if d["job"]["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert d["job"]["status"] == "done", d["job"]
    assert d["card"]["records"] == 40 and 0 <= d["card"]["score"] <= 100
    assert any(f["check"] == "labels.distribution" for f in d["card"]["findings"])
    assert c.get("/api/data?file=../../etc/passwd").status_code == 400  # only project files
    other = c.get("/api/data?file=test.jsonl&embeddings=0").json()
    assert other["file"].endswith("test.jsonl")


def test_monitor_aggregates_traffic_in_sql(project_copy):
    c = client(project_copy)
    t = c.get("/api/monitor").json()["traffic"]
    assert t["requests"] == 30 and t["errors"] == 0 and t["versions"] == [{"version": "v1", "requests": 30}]
    assert sum(p["requests"] for p in t["series"]) == 30 and t["bucket_s"] >= 60


# ---- review -------------------------------------------------------------------------------
def test_ratings_are_feedback_that_retrain_reads(project_copy):
    from tuneloop.config import load_config
    from tuneloop.retrain.retrain import feedback_examples
    from tuneloop.serve.store import TrafficStore, store_url

    c = client(project_copy)
    tok = csrf(c, "/review")
    assert post(c, "/review/name", {"rater": "alice"}, tok).status_code == 303
    first = c.get("/api/review").json()["item"]
    assert first["item_id"] == "chatcmpl-029"  # newest first
    assert first["messages"][0]["role"] == "system" and first["model_label"] in LABELS
    r = post(
        c,
        "/review/rate",
        {"source": "traffic", "item_id": first["item_id"], "label": LABELS[1], "rating": "1"},
        tok,
    )
    assert r.status_code == 303
    assert c.get("/api/review").json()["item"]["item_id"] == "chatcmpl-028"  # the queue moved on
    cfg = load_config(project_copy)
    store = TrafficStore(store_url(cfg))
    fb = [f for f in store.feedback() if f["request_id"] == "chatcmpl-029"]
    assert len(fb) == 1 and fb[0]["label"] == LABELS[1] and fb[0]["rating"] == 1.0
    ex = feedback_examples(store.feedback(), cfg)
    assert any(e.id == "fb-chatcmpl-029" and e.label == LABELS[1] for e in ex)
    # a second rater on the same item: agreement is measured
    c2 = client(project_copy)
    tok2 = csrf(c2, "/review")
    post(c2, "/review/name", {"rater": "bob"}, tok2)
    assert c2.get("/api/review").json()["item"]["item_id"] == "chatcmpl-028"  # coverage first
    assert c2.get("/api/review?queue=overlap").json()["item"]["item_id"] == "chatcmpl-029"
    r = c2.post(
        "/review/rate",
        json={"source": "traffic", "item_id": "chatcmpl-029", "label": LABELS[1], "rating": 2, "csrf": tok2},
        headers={"Origin": BASE},
    )
    assert r.status_code == 200 and r.json()["others"][0]["rater"] == "alice"
    a = c2.get("/api/review").json()["agreement"]
    assert a["pairs"] == 1 and a["label_agreement"] == 1.0 and a["verdict_agreement"] == 1.0
    bad = c2.post(
        "/review/rate",
        json={"source": "traffic", "item_id": "chatcmpl-000", "label": "nope", "csrf": tok2},
        headers={"Origin": BASE},
    )
    assert bad.status_code == 400


def test_eval_outputs_can_be_rated_but_never_become_training_data(project_copy):
    from tuneloop.config import load_config
    from tuneloop.serve.store import TrafficStore, store_url

    c = client(project_copy)
    tok = csrf(c, "/review")
    post(c, "/review/name", {"rater": "carol", "source": "eval:first"}, tok)
    item = c.get("/api/review?source=eval:first").json()["item"]
    assert item["item_id"].endswith("|finetuned") and item["reference"] in LABELS
    store = TrafficStore(store_url(load_config(project_copy)))
    before = len(store.feedback())
    r = post(c, "/review/rate", {"source": "eval:first", "item_id": item["item_id"], "rating": "5"}, tok)
    assert r.status_code == 303 and len(store.feedback()) == before
    assert c.get("/api/review?source=eval:first").json()["item"]["item_id"] != item["item_id"]


# ---- registry -----------------------------------------------------------------------------
def test_promote_and_rollback_need_typed_confirmation_and_keep_the_reason(project_copy):
    from tuneloop.config import load_config
    from tuneloop.registry.registry import Registry

    c = client(project_copy)
    tok = csrf(c)
    reg = Registry.from_config(load_config(project_copy))
    champion = reg.aliases()["champion"]
    other = "v2" if champion == "v1" else "v1"
    r = post(c, "/registry/promote", {"version": other, "reason": "better", "confirm": "yes"}, tok)
    assert r.status_code == 400 and reg.aliases()["champion"] == champion
    r = post(c, "/registry/promote", {"version": other, "reason": "", "confirm": other}, tok)
    assert r.status_code == 400
    r = post(c, "/registry/promote", {"version": other, "reason": "wins on spam F1", "confirm": other}, tok)
    assert r.status_code == 303 and reg.aliases()["champion"] == other
    last = reg.history()[-1]
    assert last["action"] == "promote" and last["evidence"]["reason"] == "wins on spam F1"
    r = post(c, "/registry/rollback", {"reason": "complaints", "confirm": champion}, tok)
    assert r.status_code == 303 and reg.aliases()["champion"] == champion
    last = reg.history()[-1]
    assert last["action"] == "rollback" and last["evidence"]["reason"] == "complaints"
    assert reg.champion_stack()[-1] == champion
    hist = c.get("/api/registry").json()["history"]
    assert hist[0]["reason"] == "complaints" and hist[1]["reason"] == "wins on spam F1"


# ---- access -------------------------------------------------------------------------------
def test_changes_need_csrf_token_and_same_origin(project_copy):
    from tuneloop.config import load_config
    from tuneloop.registry.registry import Registry

    reg = Registry.from_config(load_config(project_copy))
    champion = reg.aliases()["champion"]
    other = "v2" if champion == "v1" else "v1"
    c = client(project_copy)
    tok = csrf(c)
    form = {"version": other, "reason": "x", "confirm": other}
    assert post(c, "/registry/promote", form).status_code == 403  # no token
    assert post(c, "/registry/promote", form, "0" * 64).status_code == 403  # wrong token
    assert post(c, "/registry/promote", form, tok, origin="http://evil.example").status_code == 403
    assert post(c, "/registry/promote", form, tok, origin=None).status_code == 403
    other_client = client(project_copy)  # another browser's token does not fit this session
    assert post(other_client, "/registry/promote", form, tok).status_code == 403
    assert reg.aliases()["champion"] == champion
    # DNS rebinding: without a key only loopback host names are answered
    assert c.get("/", headers={"Host": "attacker.example"}).status_code == 403


def test_api_key_and_rater_keys(project_copy):
    key, rkey = "admin-key-123456", "rater-key-abcdef"
    c = client(project_copy, admin_key=key, rater_keys={rkey: "dana"})
    r = c.get("/runs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert c.get("/api/runs").status_code == 401
    assert c.get("/api/runs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert c.get("/static/style.css").status_code == 200
    tok = csrf(c, "/login")
    assert post(c, "/login", {"key": "wrong", "next": "/runs"}, tok).status_code == 401
    r = post(c, "/login", {"key": rkey, "next": "/registry"}, tok)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    assert c.get("/review").status_code == 200
    assert c.get("/registry").status_code == 403
    tok = csrf(c, "/review")
    r = post(c, "/registry/promote", {"version": "v2", "reason": "x", "confirm": "v2"}, tok)
    assert r.status_code == 403
    r = c.post(
        "/registry/promote",
        data={"version": "v2", "reason": "x", "confirm": "v2"},
        headers={"Authorization": f"Bearer {rkey}"},
    )
    assert r.status_code == 403
    item = c.get("/api/review").json()["item"]
    r = post(
        c,
        "/review/rate",
        {"source": "traffic", "item_id": item["item_id"], "rating": "4", "rater": "someone else"},
        tok,
    )
    assert r.status_code == 303
    from tuneloop.config import load_config
    from tuneloop.serve.store import TrafficStore, store_url
    from tuneloop.ui.review import recent

    assert recent(TrafficStore(store_url(load_config(project_copy))), 1)[0]["rater"] == "dana"
    # the admin key signs in to everything; a bearer request needs no CSRF token
    r = c.post("/registry/promote", json={"version": "nope"}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400


def test_off_loopback_needs_the_api_key(project_copy, monkeypatch):
    from tuneloop.ui.commands import build

    monkeypatch.delenv("TUNELOOP_API_KEY", raising=False)
    with pytest.raises(TuneloopError, match="API key"):
        build(project_copy, host="0.0.0.0")
    monkeypatch.setenv("TUNELOOP_API_KEY", "k" * 16)
    _app, _project, policy = build(project_copy, host="0.0.0.0")
    assert policy.keyed
    monkeypatch.setenv("TUNELOOP_RATER_KEYS", "eve")
    with pytest.raises(TuneloopError, match="rater keys"):
        build(project_copy)


def test_cli_refuses_public_bind_without_key(project_copy, monkeypatch):
    from typer.testing import CliRunner

    from tuneloop.cli import app

    monkeypatch.delenv("TUNELOOP_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["ui", str(project_copy), "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "API key" in str(res.exception)


# ---- live runs ----------------------------------------------------------------------------
def test_a_training_run_is_live_with_eta(project_copy):
    c = client(project_copy)
    run = project_copy.parent / "runs" / "live"
    run.mkdir()
    (run / "config.yaml").write_text("method: {name: lora}\ntrain: {epochs: 1, max_steps: 100}\n")
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, 11):
            f.write(
                json.dumps({"step": s, "epoch": s / 100, "loss": 2.0 / s, "lr": 1e-3, "elapsed_s": s * 0.5})
                + "\n"
            )
    row = next(r for r in c.get("/api/runs").json()["runs"] if r["name"] == "live")
    assert row["status"] == "training" and row["planned_steps"] == 100 and row["eta_s"] == pytest.approx(45.0)
    html = c.get("/runs/live/live").text
    assert 'data-status="training"' in html and 'data-points="10"' in html
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 11, "epoch": 0.11, "loss": 0.1, "lr": 1e-3, "elapsed_s": 5.5}) + "\n")
        f.write('{"step": 12, "loss"')  # a line being written: skipped, not an error
    assert 'data-points="11"' in c.get("/runs/live/live").text
    assert c.get("/runs/../../etc").status_code in (400, 404)


def test_monitor_runs_in_the_background_over_the_logged_window(project_copy):
    c = client(project_copy)
    tok = csrf(c, "/monitor")
    r = post(c, "/monitor/run", {"window": "bad"}, tok)
    assert r.status_code == 400
    r = c.post("/monitor/run", json={"window": "24h", "csrf": tok}, headers={"Origin": BASE})
    assert r.status_code == 200 and "last logged request" in r.json()["window"]
    for _ in range(600):
        d = c.get("/api/monitor").json()
        if d["job"]["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert d["job"]["status"] == "done", d["job"]
    res = d["result"]
    assert res["requests"] == 30 and res["verdict"] in ("drift", "no_drift")
    assert {"embedding_mmd", "domain_classifier", "novel_terms", "quality"} <= set(res["signals"])
    html = c.get("/monitor").text
    assert 'id="signals"' in html and 'id="verdict"' in html


def test_an_example_after_its_demo_shows_the_demo_work_folder(project_copy, tmp_path, monkeypatch):
    """`tuneloop ui examples/X` after `run_demo.py`: the demo wrote a resolved config and its own
    registry into a work folder under the example's runs/; the example's registry is empty."""
    import shutil

    import yaml

    from tuneloop.ui.commands import build

    example = tmp_path / "example"
    (example / "runs").mkdir(parents=True)
    shutil.copytree(project_copy.parent, example / "runs" / "demo-1", symlinks=True)
    cfg = {
        "data": {"train": str(project_copy.parent / "train.jsonl")},
        "output": {"dir": "runs"},
        "registry": {"dir": "runs/registry"},
    }
    (example / "tuneloop.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.delenv("TUNELOOP_API_KEY", raising=False)
    _app, project, _policy = build(example)
    assert project.root == (example / "runs" / "demo-1").resolve()
    assert project.registry.versions()


def test_playground_answers_with_each_model_side_by_side(project_copy):
    c = client(project_copy)
    tok = csrf(c, "/playground")
    body = {
        "models": ["champion", "base"],
        "messages": [{"role": "user", "content": "where is my card"}],
        "max_tokens": 4,
        "template": True,
        "csrf": tok,
    }
    r = c.post("/playground/chat", json=body, headers={"Origin": BASE})
    assert r.status_code == 200, r.text
    a, b = r.json()["answers"]
    assert a["model"] == "champion" and a["version"] in ("v1", "v2") and isinstance(a["text"], str)
    assert b["version"] == "base" and b["tokens"] <= 4
    bad = c.post("/playground/chat", json=body | {"models": ["nope"]}, headers={"Origin": BASE}).json()
    assert "error" in bad["answers"][0]
    names = [x["name"] for x in c.get("/api/playground").json()["choices"]]
    assert names[0] == "champion" and {"v1", "v2", "base"} <= set(names)


def test_monitor_shows_recorded_signals_and_gate_decisions(project_copy):
    root = project_copy.parent
    (root / "runs" / "loop").mkdir(exist_ok=True)
    for i, (p, verdict) in enumerate(((0.4, "no_drift"), (0.001, "drift"))):
        sig = {
            "embedding_mmd": {"p_value": p},
            "domain_classifier": {"auc": 0.5 + i / 4, "random_auc": 0.55},
            "novel_terms": {"rate": 0.1 + i / 3},
            "quality": {"drop": 0.02 * i},
        }
        log = {
            "monitor": {
                "window": {"until": f"2026-01-0{i + 1}T00:00:00+00:00"},
                "verdict": verdict,
                "requests": 100,
                "signals": sig,
                "reasons": ["mmd"] if i else [],
            },
            "action": "promoted" if i else "none",
        }
        (root / "runs" / "loop" / f"2026010{i + 1}-000000.json").write_text(json.dumps(log))
    (root / "registry" / "decisions").mkdir(exist_ok=True)
    decision = {
        "decision": "promote",
        "promoted": True,
        "champion": "v1",
        "challenger": "v2",
        "metric": "accuracy",
        "frozen": {"n": 20, "champion": 0.8, "challenger": 0.85, "p_value": 0.3},
        "fresh": {"n": 8, "champion": 0.2, "challenger": 0.9, "p_value": 0.01},
        "reasons": ["fresh: +0.7"],
        "time": "2026-01-02T00:00:00Z",
    }
    (root / "registry" / "decisions" / "20260102-000000-v2.json").write_text(json.dumps(decision))
    c = client(project_copy)
    d = c.get("/api/monitor").json()
    assert [r["verdict"] for r in d["history"]["rows"]] == ["drift", "no_drift"]  # newest first
    assert d["history"]["points"]["mmd_p"] == [[0.0, 0.4], [1.0, 0.001]]
    assert d["decisions"][0]["challenger"] == "v2"
    html = c.get("/monitor").text
    assert html.count('class="thr"') >= 4  # each signal's threshold is drawn
    assert "fresh: +0.7" in html and 'id="loop-history"' in html
