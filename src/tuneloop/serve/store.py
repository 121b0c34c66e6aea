"""The traffic store: every served request and every piece of feedback, in one SQL database.

SQLAlchemy Core, so any SQLAlchemy URL works (PostgreSQL for a shared deployment; a plain
`postgresql://` URL uses psycopg 3 when psycopg2 is not installed); the default is a SQLite
file next to the registry. SQLite runs in WAL mode with a busy timeout, so the server's writer
threads and a concurrent `tuneloop monitor` reader do not block each other. Several server
processes may write to one store (rows are keyed by a random request id).
Times are stored as naive UTC and returned as timezone-aware UTC datetimes.

Every request a completion route saw is a row, whatever its status; `error` holds the class of
what went wrong (None when it was answered).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from tuneloop.config import Config
from tuneloop.errors import TuneloopError

metadata = MetaData()

requests_table = Table(
    "requests", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("created", DateTime, nullable=False, index=True),
    Column("model", String(128), nullable=False, index=True),
    Column("version", String(128), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_text", Text, nullable=False),
    Column("request_json", Text, nullable=False),
    Column("output_text", Text, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("status", Integer, nullable=False, default=200),
    Column("error", String(128), nullable=True),  # class of the failure; None when answered
)

feedback_table = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("requests.request_id"), nullable=False, index=True),
    Column("created", DateTime, nullable=False, index=True),
    Column("rating", Float, nullable=True),
    Column("corrected", Text, nullable=True),
    Column("label", String(256), nullable=True),
)

REQUEST_COLUMNS = [c.name for c in requests_table.columns]
PROBE_ID = "tuneloop-write-probe"  # the row a start-up write check inserts and rolls back


def engine_url(url: str) -> str:
    """The URL SQLAlchemy gets: `postgresql://` with psycopg 3 when psycopg2 is missing (its
    default driver), so the URL a user copies from psql works with `pip install psycopg`."""
    try:
        u = make_url(url)
    except Exception:  # not a URL at all: create_engine names the problem
        return url
    if u.drivername in ("postgresql", "postgres") and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def store_url(cfg: Config) -> str:
    """The configured traffic-store URL, or a SQLite file in the registry folder."""
    return cfg.serve.store_url or f"sqlite:///{Path(cfg.registry.dir) / 'traffic.db'}"


def _to_db(dt: datetime | None) -> datetime:
    """Naive UTC for storage; naive inputs are taken to be UTC already."""
    if dt is None:
        return datetime.now(UTC).replace(tzinfo=None)
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def _from_db(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC)


def _between(q, column, since: datetime | None, until: datetime | None):
    """The query limited to since <= column < until (either bound optional)."""
    if since is not None:
        q = q.where(column >= _to_db(since))
    if until is not None:
        q = q.where(column < _to_db(until))
    return q


class TrafficStore:
    """Append requests and feedback; read them back by time window (oldest first)."""

    def __init__(self, url: str, check_writable: bool = False):
        """Open (and create) the store; check_writable: also prove a row can be written (the
        server checks at start-up, so a read-only store fails before any model loads)."""
        self.url = url
        shown = display_url(url)
        kwargs: dict[str, Any] = {}
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            db = url.split("///", 1)[-1]
            if db and db != ":memory:" and not db.startswith(("file:", "sqlite:")):
                path = Path(db).expanduser()
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise TuneloopError(f"traffic store {shown}: cannot create folder {path.parent} "
                                        f"({e.strerror}); pass a writable --store or serve.store_url") from e
                if path.is_dir():
                    raise TuneloopError(f"traffic store {shown}: {path} is a folder; name a database "
                                        "file, e.g. sqlite:///traffic.db (--store or serve.store_url)")
            else:  # in-memory: one shared connection, or every thread would see its own empty DB
                kwargs["poolclass"] = StaticPool
            # Server handlers run in a threadpool: one connection may be used by several threads.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:  # a server database: enough connections for the threadpool; survive its restarts
            kwargs.update(pool_size=10, max_overflow=30, pool_pre_ping=True)
        try:
            self.engine = create_engine(engine_url(url), **kwargs)
        except Exception as e:  # bad URL or missing DB driver: a user error
            raise TuneloopError(f"traffic store {shown!r}: {e} (serve.store_url in the config; "
                                "PostgreSQL needs `pip install psycopg[binary]`)") from e
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # SQLite allows one writer; serialising writers in-process avoids busy retries entirely.
        self._write_lock = threading.Lock() if self.is_sqlite else None
        try:
            self._create_tables()
            if check_writable:
                self._probe()
        except SQLAlchemyError as e:
            self.engine.dispose()
            raise TuneloopError(f"traffic store {shown}: cannot open or write it "
                                f"({type(e.orig or e).__name__}: {str(e.orig or e).strip()}); "
                                "pass a writable --store or serve.store_url") from e

    def _create_tables(self) -> None:
        """Create the tables (and add columns that a store written by an older tuneloop lacks).

        Several servers may start at once on a new database: PostgreSQL creators take turns
        (an advisory lock); elsewhere a creator that lost the race tries again and finds the
        tables there.
        """
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    if conn.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(7106354)"))
                    metadata.create_all(conn)
                    if "error" not in {c["name"] for c in inspect(conn).get_columns("requests")}:
                        conn.execute(text("ALTER TABLE requests ADD COLUMN error VARCHAR(128)"))
                return
            except SQLAlchemyError:
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def _probe(self) -> None:
        """Insert a row and roll it back: a read-only file or a missing grant fails here."""
        with self.engine.connect() as conn, conn.begin() as tx:
            conn.execute(insert(requests_table).values(
                request_id=PROBE_ID, created=_to_db(None), model="", version="", endpoint="probe",
                input_text="", request_json="", output_text="", latency_ms=0.0, prompt_tokens=0,
                completion_tokens=0, status=0))
            tx.rollback()

    def _write(self, stmt) -> None:
        if self._write_lock:
            with self._write_lock, self.engine.begin() as conn:
                conn.execute(stmt)
        else:
            with self.engine.begin() as conn:
                conn.execute(stmt)

    def log_request(self, *, request_id: str, model: str, version: str, endpoint: str,
                    input_text: str, request_json: str, output_text: str, latency_ms: float,
                    prompt_tokens: int, completion_tokens: int, status: int = 200,
                    created: datetime | None = None, error: str | None = None) -> None:
        """Record one served request (input_text = the last user message, or the prompt;
        error = the class of the failure, for a request that was not answered)."""
        self._write(insert(requests_table).values(
            request_id=request_id, created=_to_db(created), model=model[:128], version=version[:128],
            endpoint=endpoint, input_text=input_text, request_json=request_json,
            output_text=output_text, latency_ms=float(latency_ms), prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens), status=int(status),
            error=None if error is None else error[:128]))

    def has_request(self, request_id: str) -> bool:
        """Whether a request with this id was logged."""
        with self.engine.connect() as conn:
            q = select(requests_table.c.request_id).where(requests_table.c.request_id == request_id)
            return conn.execute(q).first() is not None

    def add_feedback(self, *, request_id: str, rating: float | None = None, corrected: str | None = None,
                     label: str | None = None, created: datetime | None = None) -> None:
        """Attach a rating, a corrected answer or a label to a logged request."""
        if rating is None and corrected is None and label is None:
            raise TuneloopError("feedback needs at least one of rating, corrected or label")
        # Checked explicitly: SQLite does not enforce foreign keys unless asked per connection.
        if not self.has_request(request_id):
            raise TuneloopError(f"feedback: unknown request id {request_id!r} (use the `id` of a "
                                "completion response from this server)")
        try:
            self._write(insert(feedback_table).values(
                request_id=request_id, created=_to_db(created),
                rating=None if rating is None else float(rating), corrected=corrected, label=label))
        except IntegrityError as e:
            raise TuneloopError(f"feedback: unknown request id {request_id!r}") from e

    def requests(self, since: datetime | None = None, until: datetime | None = None,
                 model: str | None = None, status: int | None = None) -> list[dict]:
        """Logged requests in [since, until), oldest first; optionally of one model name or
        one status (200: the answered ones)."""
        t = requests_table
        q = _between(select(t), t.c.created, since, until)
        if model is not None:
            q = q.where(t.c.model == model)
        if status is not None:
            q = q.where(t.c.status == status)
        return self._rows(q.order_by(t.c.created, t.c.request_id))

    def feedback(self, since: datetime | None = None, until: datetime | None = None) -> list[dict]:
        """Feedback in [since, until) joined with its request, oldest first."""
        f, r = feedback_table, requests_table
        q = select(f.c.request_id, f.c.rating, f.c.corrected, f.c.label, f.c.created,
                   r.c.input_text, r.c.output_text, r.c.model, r.c.version,
                   r.c.request_json).join(r, f.c.request_id == r.c.request_id)
        return self._rows(_between(q, f.c.created, since, until).order_by(f.c.created, f.c.id))

    def _rows(self, q) -> list[dict]:
        """The query's rows as dicts, `created` as an aware UTC datetime."""
        with self.engine.connect() as conn:
            rows = [dict(x._mapping) for x in conn.execute(q)]
        for x in rows:
            x["created"] = _from_db(x["created"])
        return rows

    def count_requests(self, status: int | None = None) -> int:
        """Number of logged requests (optionally with one status code)."""
        q = select(func.count()).select_from(requests_table)
        if status is not None:
            q = q.where(requests_table.c.status == status)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, fast
    cur.close()
