"""`tuneloop monitor` and `tuneloop loop` end to end on a tiny model: exit 0 on traffic like the
training data, 1 on shifted traffic, JSON and HTML output, no verdict on too little traffic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from test_retrain_gate import log_traffic, project, trained  # noqa: F401 (fixtures)
from tuneloop.cli import app
from tuneloop.registry.registry import Registry
from tuneloop.serve.store import TrafficStore, store_url

runner = CliRunner()


PHRASES = {"card_arrival": ["where is my card, it has not arrived ", "my card still has not come "],
           "exchange_rate": ["what is the exchange rate today ", "exchange rate for euros "]}


def _same(n: int):
    # resampled from the reference (train: phrasing 0, numbers 0-23; frozen test: phrasing 1,
    # numbers 100-109) in about its proportions: the same distribution by construction
    labels = ["card_arrival" if i % 2 == 0 else "exchange_rate" for i in range(n)]
    texts = [PHRASES[lab][1] + str(100 + i % 10) if i % 10 >= 7 else PHRASES[lab][0] + str(i % 24)
             for i, lab in enumerate(labels)]
    return texts, labels


SHIFTED = ["book a flight to {} next week", "what is the weather like in {} tomorrow",
           "cancel my hotel reservation in {}", "how long is the train ride to {}",
           "recommend a restaurant near {} station"]
CITIES = ["paris", "tokyo", "lima", "oslo", "cairo", "delhi", "quito", "rome"]


def _shifted(n: int):
    return [SHIFTED[i % 5].format(CITIES[i % 8]) for i in range(n)], [None] * n


def _write_cfg(project):  # noqa: F811
    """The fixture's config (own registry) as a file the CLI can read."""
    import yaml

    path = project.registry.dir.rsplit("/", 1)[0] + "/tuneloop.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(project.model_dump(mode="json"), f)
    return path


def test_same_distribution_exits_0_shifted_exits_1(project, tmp_path):  # noqa: F811
    path = _write_cfg(project)
    store = TrafficStore(store_url(project))
    texts, labels = _same(40)
    log_traffic(store, texts, labels, "v1")
    r = runner.invoke(app, ["monitor", path, "--json", "--no-perplexity"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["verdict"] == "no_drift" and res["requests"] == 40 and res["champion"] == "v1"
    assert res["signals"]["embedding_mmd"]["p_value"] > project.monitor.mmd_p_value

    texts, labels = _shifted(40)
    log_traffic(store, texts, labels, "v1")
    html = tmp_path / "drift.html"
    r = runner.invoke(app, ["monitor", path, "--json", "--html", str(html)])
    assert r.exit_code == 1, r.output
    res = json.loads(r.output)
    assert res["verdict"] == "drift" and res["drift"] and res["reasons"]
    assert res["signals"]["embedding_mmd"]["drift"] and res["signals"]["novel_terms"]["drift"]
    assert res["signals"]["perplexity"]["cur_median"] is not None
    # the most drifted inputs are the shifted ones, template stripped
    assert all(any(c in x["input"] for c in CITIES) for x in res["most_drifted"][:5])
    page = html.read_text()
    assert "Drift report: DRIFT" in page
    assert "data:image/png;base64" in page
    assert any(c in page for c in CITIES)


def test_too_little_traffic_gives_no_verdict(project):  # noqa: F811
    path = _write_cfg(project)
    texts, labels = _shifted(5)
    log_traffic(TrafficStore(store_url(project)), texts, labels, "v1")
    r = runner.invoke(app, ["monitor", path])
    assert r.exit_code == 0 and "no verdict" in r.output


def test_quality_drop_is_drift(project):  # noqa: F811
    path = _write_cfg(project)
    store = TrafficStore(store_url(project))
    texts, labels = _same(30)
    # before the window the answers were right; in it they are wrong half the time
    from datetime import UTC, datetime, timedelta

    log_traffic(store, texts, labels, "v1", start=datetime.now(UTC) - timedelta(days=3),
                output="card_arrival")
    wrong = ["exchange_rate"] * 30
    log_traffic(store, texts, wrong, "v1")
    r = runner.invoke(app, ["monitor", path, "--window", "1d", "--json", "--no-perplexity"])
    res = json.loads(r.output)
    q = res["signals"]["quality"]
    assert q["baseline"] == pytest.approx(0.5) and q["current"]["value"] == pytest.approx(0.0)
    assert r.exit_code == 1 and any("quality" in x for x in res["reasons"])


def test_bad_window_is_a_user_error(project):  # noqa: F811
    path = _write_cfg(project)
    r = subprocess.run([sys.executable, "-m", "tuneloop", "monitor", path, "--window", "soon"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "24h or 7d" in r.stderr


def test_loop_without_drift_does_nothing(project):  # noqa: F811
    path = _write_cfg(project)
    texts, labels = _same(30)
    log_traffic(TrafficStore(store_url(project)), texts, labels, "v1")
    r = runner.invoke(app, ["loop", path, "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["action"] == "none" and "retrain" not in res
    assert Registry.from_config(project).aliases() == {"champion": "v1"}


def test_refused_requests_are_counted_apart_not_compared(project):  # noqa: F811
    path = _write_cfg(project)
    store = TrafficStore(store_url(project))
    texts, labels = _same(40)
    log_traffic(store, texts, labels, "v1")
    # Off-topic inputs the server refused (400): logged, but nothing the model answered.
    shifted, _ = _shifted(40)
    for i, t in enumerate(shifted):
        store.log_request(request_id=f"refused-{i}", model="champion", version="v1",
                          endpoint="chat", input_text=t, request_json="{}", output_text="",
                          latency_ms=1.0, prompt_tokens=0, completion_tokens=0, status=400)
    r = runner.invoke(app, ["monitor", path, "--json", "--no-perplexity"])
    res = json.loads(r.output)
    assert r.exit_code == 0 and res["verdict"] == "no_drift", r.output
    assert res["requests"] == 40 and res["failed_requests"] == 40
