"""Traffic store: requests and feedback round-trip, time windows, WAL, concurrent writers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tuneloop.config import parse_config
from tuneloop.errors import TuneloopError
from tuneloop.serve.store import TrafficStore, store_url

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _log(store: TrafficStore, rid: str, created: datetime | None = None, model: str = "champion",
         text: str = "where is my card") -> None:
    store.log_request(request_id=rid, model=model, version="v1", endpoint="chat", input_text=text,
                      request_json='{"model": "champion"}', output_text="card_arrival", latency_ms=12.5,
                      prompt_tokens=20, completion_tokens=3, created=created)


@pytest.fixture
def store(tmp_path) -> TrafficStore:
    return TrafficStore(f"sqlite:///{tmp_path / 'traffic.db'}")


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
