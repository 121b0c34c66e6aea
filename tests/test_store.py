"""Traffic store: requests and feedback round-trip, time windows, WAL, concurrent writers.

The store's tests run on SQLite and, when TUNELOOP_TEST_POSTGRES_URL is set (`.ci/postgres.sh`
prints one), on PostgreSQL too: each test gets its own schema there, dropped afterwards.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from tuneloop.config import parse_config
from tuneloop.errors import TuneloopError
from tuneloop.serve.store import TrafficStore, display_url, engine_url, store_url

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PG_URL = os.environ.get("TUNELOOP_TEST_POSTGRES_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="set TUNELOOP_TEST_POSTGRES_URL (.ci/postgres.sh)")
BACKENDS = ["sqlite", pytest.param("postgres", marks=needs_pg)]


@contextmanager
def pg_schema() -> Iterator[str]:
    """A store URL on the test PostgreSQL server whose tables live in a fresh schema."""
    assert PG_URL
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(engine_url(PG_URL))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {name}"))
    url = make_url(engine_url(PG_URL)).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


@contextmanager
def store_url_for(backend: str, folder: Path) -> Iterator[str]:
    """A fresh, empty store URL on `backend` ("sqlite" or "postgres")."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'traffic.db'}"
    else:
        with pg_schema() as url:
            yield url


def _log(store: TrafficStore, rid: str, created: datetime | None = None, model: str = "champion",
         text: str = "where is my card") -> None:
    store.log_request(request_id=rid, model=model, version="v1", endpoint="chat", input_text=text,
                      request_json='{"model": "champion"}', output_text="card_arrival", latency_ms=12.5,
                      prompt_tokens=20, completion_tokens=3, created=created)


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> Iterator[str]:
    with store_url_for(request.param, tmp_path) as u:
        yield u


@pytest.fixture
def store(url) -> Iterator[TrafficStore]:
    s = TrafficStore(url)
    yield s
    s.close()


def test_requests_round_trip_in_time_order_and_window(store):
    _log(store, "b", T0 + timedelta(hours=2))
    _log(store, "a", T0, model="v2")
    _log(store, "c", T0 + timedelta(days=3))
    rows = store.requests()
    assert [r["request_id"] for r in rows] == ["a", "b", "c"]  # oldest first
    assert rows[0]["created"] == T0 and rows[0]["created"].tzinfo is not None
    assert rows[0]["latency_ms"] == 12.5 and rows[0]["completion_tokens"] == 3
    assert set(rows[0]) >= {"request_id", "model", "version", "endpoint", "input_text", "request_json",
                            "output_text", "latency_ms", "prompt_tokens", "completion_tokens", "status",
                            "created"}
    window = store.requests(since=T0 + timedelta(hours=1), until=T0 + timedelta(days=1))
    assert [r["request_id"] for r in window] == ["b"]
    assert [r["request_id"] for r in store.requests(model="v2")] == ["a"]
    # Another timezone means the same instant.
    plus2 = timezone(timedelta(hours=2))
    until = T0.astimezone(plus2) + timedelta(minutes=1)
    assert [r["request_id"] for r in store.requests(until=until)] == ["a"]


def test_feedback_joins_its_request(store):
    _log(store, "r1", T0, text="my card is lost")
    store.add_feedback(request_id="r1", label="lost_card", created=T0 + timedelta(minutes=5))
    store.add_feedback(request_id="r1", rating=0.0, corrected="lost_or_stolen_card")
    fb = store.feedback()
    assert len(fb) == 2
    assert fb[0]["label"] == "lost_card" and fb[0]["input_text"] == "my card is lost"
    assert fb[0]["output_text"] == "card_arrival" and fb[0]["version"] == "v1"
    assert fb[1]["rating"] == 0.0 and fb[1]["corrected"] == "lost_or_stolen_card"
    assert len(store.feedback(since=T0 + timedelta(days=1))) == 1


def test_feedback_for_unknown_request_is_a_user_error(store):
    with pytest.raises(TuneloopError, match="unknown request id"):
        store.add_feedback(request_id="nope", rating=1.0)
    _log(store, "r1")
    with pytest.raises(TuneloopError, match="at least one"):
        store.add_feedback(request_id="r1")


def test_concurrent_writers_lose_no_row(url):
    stores = [TrafficStore(url), TrafficStore(url)]  # two engines, as two server processes have

    def writer(k: int) -> None:
        for i in range(25):
            _log(stores[k % 2], f"w{k}-{i}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[1].count_requests() == 200 and len({r["request_id"] for r in stores[0].requests()}) == 200
    for s in stores:
        s.close()


def test_servers_starting_at_once_on_a_new_database_all_start(url):
    """Two `tuneloop serve` started together on an empty PostgreSQL raced to CREATE TABLE and
    one exited 2; each must find or create the tables."""
    errors: list[Exception] = []

    def start() -> None:
        try:
            TrafficStore(url, check_writable=True).close()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_every_status_is_logged_with_its_error_class(store):
    _log(store, "ok")
    store.log_request(request_id="bad", model="champion", version="", endpoint="chat", input_text="x",
                      request_json="{}", output_text="", latency_ms=1, prompt_tokens=0, completion_tokens=0,
                      status=500, error="ModelLoadFailed:SafetensorError")
    rows = {r["request_id"]: r for r in store.requests()}
    assert rows["ok"]["error"] is None and rows["ok"]["status"] == 200
    assert (rows["bad"]["status"], rows["bad"]["error"]) == (500, "ModelLoadFailed:SafetensorError")
    assert store.count_requests(status=500) == 1


def test_a_store_from_before_the_error_column_is_upgraded(tmp_path):
    """A traffic.db written by an older tuneloop (no `error` column) gains it, rows kept."""
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE requests (request_id VARCHAR(64) PRIMARY KEY, created DATETIME NOT NULL, "
                "model VARCHAR(128) NOT NULL, version VARCHAR(128) NOT NULL, endpoint VARCHAR(64) NOT NULL, "
                "input_text TEXT NOT NULL, request_json TEXT NOT NULL, output_text TEXT NOT NULL, "
                "latency_ms FLOAT NOT NULL, prompt_tokens INTEGER NOT NULL, "
                "completion_tokens INTEGER NOT NULL, status INTEGER NOT NULL)")
    con.execute("INSERT INTO requests VALUES ('old', '2025-03-01 12:00:00', 'champion', 'v1', 'chat', "
                "'hi', '{}', 'x', 1.0, 1, 1, 200)")
    con.commit()
    con.close()
    store = TrafficStore(f"sqlite:///{db}")
    _log(store, "new")
    rows = {r["request_id"]: r for r in store.requests()}
    assert set(rows) == {"old", "new"} and rows["old"]["error"] is None


def test_unwritable_store_is_a_user_error_before_use(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TuneloopError, match="cannot create folder"):
        TrafficStore(f"sqlite:///{tmp_path / 'file' / 'traffic.db'}")
    with pytest.raises(TuneloopError, match="is a folder"):
        TrafficStore(f"sqlite:///{tmp_path}")
    ro = tmp_path / "ro.db"
    TrafficStore(f"sqlite:///{ro}").close()
    with pytest.raises(TuneloopError, match="cannot open or write"):  # read-only, even for root
        TrafficStore(f"sqlite:///file:{ro}?mode=ro&uri=true", check_writable=True)
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ro.db-"))  # WAL files
    assert left == ["file", "ro.db"]  # nothing else created


def test_postgres_urls_use_psycopg_and_hide_the_password():
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        assert engine_url("postgresql://u:pw@db/x").startswith("postgresql+psycopg://u:pw@")
    assert engine_url("sqlite:///a.db") == "sqlite:///a.db"
    assert "pw" not in display_url("postgresql://u:pw@db/x")
    with pytest.raises(TuneloopError, match="cannot open") as e:  # nothing listens on port 1
        TrafficStore("postgresql://u:secret@127.0.0.1:1/x")
    assert "secret" not in str(e.value)


def test_sqlite_uses_wal_and_survives_concurrent_writers(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'traffic.db'}"  # parent folder is created
    stores = [TrafficStore(url), TrafficStore(url)]  # two engines, as server + monitor would be
    with stores[0].engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"

    def writer(k: int) -> None:
        for i in range(50):
            _log(stores[k % 2], f"w{k}-{i}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[1].count_requests() == 300 and len(stores[0].requests()) == 300


def test_store_url_defaults_to_the_registry(tmp_path):
    cfg = parse_config({"data": {"train": "t.jsonl"}}, base=tmp_path)
    assert store_url(cfg) == f"sqlite:///{tmp_path / 'registry' / 'traffic.db'}"
    cfg = parse_config({"data": {"train": "t.jsonl"}, "serve": {"store_url": "sqlite://"}}, base=tmp_path)
    assert store_url(cfg) == "sqlite://"


def test_bad_url_is_a_user_error():
    with pytest.raises(TuneloopError, match="traffic store"):
        TrafficStore("nosuchdialect://x")
