"""Human review of real outputs: the queue, ratings, and agreement between raters.

A rating of a served request is written twice, in one transaction of the traffic store's
database: as a row of the store's own `feedback` table (rating, label, corrected answer),
which `tuneloop retrain` and `tuneloop monitor` read, and as a row of `review_ratings` (this
module's table, in the same database) that names the rater and links the feedback row. Ratings
of evaluation outputs (a run's predictions) go to `review_ratings` only: a test example must not
become training data.

Ratings are on a 1-5 scale (the monitor maps it onto 0-1); for classification a rater confirms
the model's label or names the right one, stored as the feedback `label`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.orm import aliased

from tuneloop.errors import TuneloopError
from tuneloop.serve.store import feedback_table, requests_table

metadata = MetaData()
ratings_table = Table(
    "review_ratings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created", DateTime, nullable=False, index=True),
    Column("source", String(256), nullable=False),  # "traffic" or "eval:RUN"
    Column("item_id", String(256), nullable=False),  # request id, or "EXAMPLE_ID|SYSTEM"
    Column("rater", String(128), nullable=False),
    Column("rating", Float, nullable=True),
    Column("label", String(256), nullable=True),
    Column("corrected", Text, nullable=True),
    Column("feedback_id", Integer, nullable=True),
    Index("ix_review_item", "source", "item_id", "rater"),
)
MAX_RATER = 64
MAX_TEXT = 20_000


def ensure_tables(store) -> None:
    """Create review_ratings in the traffic store's database if it is not there."""
    metadata.create_all(store.engine)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def clean_rater(name: str | None) -> str:
    """A rater's name as stored: trimmed, bounded, required."""
    name = " ".join((name or "").split())[:MAX_RATER]
    if not name:
        raise TuneloopError("a rating needs the rater's name (the Name field of the Review page)")
    return name


def _stored(rating: Any, label: Any, corrected: Any) -> tuple[float | None, str | None, str | None]:
    r = None if rating in (None, "") else float(rating)
    if r is not None and not 1 <= r <= 5:
        raise TuneloopError(f"rating {rating!r}: use 1-5")
    lab = (str(label).strip() or None) if label is not None else None
    cor = str(corrected) if corrected not in (None, "") else None
    if cor is not None and len(cor) > MAX_TEXT:
        raise TuneloopError(f"corrected answer longer than {MAX_TEXT} characters")
    if r is None and lab is None and cor is None:
        raise TuneloopError("give a rating, a label or a corrected answer")
    return r, lab, cor


def rate(
    store,
    *,
    source: str,
    item_id: str,
    rater: str,
    rating: Any = None,
    label: Any = None,
    corrected: Any = None,
) -> dict[str, Any]:
    """Store one rating; a served request's rating also becomes a feedback row."""
    rater = clean_rater(rater)
    r, lab, cor = _stored(rating, label, corrected)
    now = _now()
    with store.engine.begin() as conn:
        feedback_id = None
        if source == "traffic":
            t = requests_table
            if conn.execute(select(t.c.request_id).where(t.c.request_id == item_id)).first() is None:
                raise TuneloopError(f"unknown request id {item_id!r}")
            res = conn.execute(
                insert(feedback_table).values(
                    request_id=item_id, created=now, rating=r, corrected=cor, label=lab
                )
            )
            feedback_id = int(res.inserted_primary_key[0])
        elif not source.startswith("eval:"):
            raise TuneloopError(f"unknown review source {source!r}")
        conn.execute(
            insert(ratings_table).values(
                created=now,
                source=source,
                item_id=item_id,
                rater=rater,
                rating=r,
                label=lab,
                corrected=cor,
                feedback_id=feedback_id,
            )
        )
    return {
        "source": source,
        "item_id": item_id,
        "rater": rater,
        "rating": r,
        "label": lab,
        "corrected": cor,
        "feedback_id": feedback_id,
    }


def _mine(source: str, rater: str, item_col):
    v = ratings_table
    return exists().where(and_(v.c.source == source, v.c.item_id == item_col, v.c.rater == rater))


def next_request(
    store, rater: str, skip: int = 0, version: str | None = None, queue: str = "new"
) -> tuple[dict | None, int]:
    """The next served request for `rater`, never one this rater already rated; newest first.

    queue "new": requests without any feedback first, then the others; "overlap": requests
    another rater rated here, so that agreement between raters can be measured.
    Returns (row, length of the queue). The row is found by walking the `created` index from
    the newest end; the queue length is counted from the small feedback and rating tables."""
    r, f, v = requests_table, feedback_table, ratings_table
    served = [r.c.status == 200] + ([r.c.version == version] if version else [])
    base = [*served, ~_mine("traffic", rater, r.c.request_id)]
    cols = select(r).order_by(r.c.created.desc(), r.c.request_id)
    mine = (
        select(func.count(func.distinct(v.c.item_id)))
        .select_from(v.join(r, v.c.item_id == r.c.request_id))
        .where(v.c.source == "traffic", v.c.rater == rater, *served)
    )
    with store.engine.connect() as conn:
        if queue == "overlap":
            n_all = conn.execute(
                select(func.count(func.distinct(v.c.item_id)))
                .select_from(v.join(r, v.c.item_id == r.c.request_id))
                .where(
                    v.c.source == "traffic",
                    v.c.rater != rater,
                    *served,
                    ~_mine("traffic", rater, v.c.item_id),
                )
            ).scalar_one()
            rated = select(v.c.item_id).where(v.c.source == "traffic", v.c.rater != rater)
            row = conn.execute(cols.where(*base, r.c.request_id.in_(rated)).offset(skip).limit(1)).first()
        else:
            total = conn.execute(select(func.count()).select_from(r).where(*served)).scalar_one()
            with_fb = conn.execute(
                select(func.count(func.distinct(f.c.request_id)))
                .select_from(f.join(r, f.c.request_id == r.c.request_id))
                .where(*served)
            ).scalar_one()
            n_all = total - conn.execute(mine).scalar_one()
            n_new = total - with_fb  # a rating here always adds feedback: none of these is mine
            no_fb = ~exists().where(f.c.request_id == r.c.request_id)
            if skip < n_new:
                row = conn.execute(cols.where(*base, no_fb).offset(skip).limit(1)).first()
            else:
                row = conn.execute(cols.where(*base, ~no_fb).offset(skip - n_new).limit(1)).first()
        if row is None:
            return None, int(n_all)
        item = dict(row._mapping)
        fb = conn.execute(
            select(f.c.rating, f.c.label, f.c.corrected, f.c.created)
            .where(f.c.request_id == item["request_id"])
            .order_by(f.c.id)
        ).all()
    item["feedback"] = [dict(x._mapping) for x in fb]
    item["messages"] = _messages(item.get("request_json") or "", item.get("input_text") or "")
    return item, int(n_all)


def _messages(raw: str, fallback: str) -> list[dict[str, str]]:
    """The request's messages (system prompt and grounding included), or its prompt."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        body = {}
    msgs = body.get("messages") if isinstance(body, dict) else None
    if isinstance(msgs, list):
        out = []
        for m in msgs:
            if isinstance(m, dict):
                c = m.get("content")
                if isinstance(c, list):  # content parts
                    c = " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
                out.append({"role": str(m.get("role", "")), "content": str(c or "")})
        return out
    prompt = body.get("prompt") if isinstance(body, dict) else None
    return [{"role": "prompt", "content": str(prompt if isinstance(prompt, str) else fallback)}]


def rated_ids(store, source: str, rater: str) -> set[str]:
    """Item ids of `source` this rater has rated (eval queues are small)."""
    v = ratings_table
    with store.engine.connect() as conn:
        rows = conn.execute(select(v.c.item_id).where(v.c.source == source, v.c.rater == rater)).all()
    return {x[0] for x in rows}


def others_on(store, source: str, item_id: str, rater: str) -> list[dict]:
    """Other raters' ratings of one item (shown after the rater has given theirs)."""
    v = ratings_table
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(v.c.rater, v.c.rating, v.c.label, v.c.corrected)
            .where(v.c.source == source, v.c.item_id == item_id, v.c.rater != rater)
            .order_by(v.c.id)
        ).all()
    return [dict(x._mapping) for x in rows]


def _verdict(col):
    """good (4-5) / neutral (3) / bad (1-2) of a rating, as a SQL expression."""
    return case((col >= 4, literal("good")), (col <= 2, literal("bad")), else_=literal("neutral"))


def agreement(store, source: str | None = None, limit: int = 20) -> dict[str, Any]:
    """Pairs of raters on the same item: how often their verdicts (and labels) agree."""
    a, b = aliased(ratings_table), aliased(ratings_table)
    on = [a.c.source == b.c.source, a.c.item_id == b.c.item_id, a.c.rater < b.c.rater]
    if source:
        on.append(a.c.source == source)
    both_r = and_(a.c.rating.isnot(None), b.c.rating.isnot(None))
    both_l = and_(a.c.label.isnot(None), b.c.label.isnot(None))
    same_v = and_(both_r, _verdict(a.c.rating) == _verdict(b.c.rating))
    q = (
        select(
            func.count().label("pairs"),
            func.count(func.distinct(a.c.source + "|" + a.c.item_id)).label("n_items"),
            func.sum(case((both_r, 1), else_=0)).label("rated_pairs"),
            func.sum(case((same_v, 1), else_=0)).label("same_verdict"),
            func.sum(case((and_(both_r, a.c.rating == b.c.rating), 1), else_=0)).label("same_rating"),
            func.avg(case((both_r, func.abs(a.c.rating - b.c.rating)), else_=None)).label("mean_abs_diff"),
            func.sum(case((both_l, 1), else_=0)).label("labelled_pairs"),
            func.sum(case((and_(both_l, a.c.label == b.c.label), 1), else_=0)).label("same_label"),
        )
        .select_from(a)
        .join(b, and_(*on))
    )
    dis = (
        select(
            a.c.source,
            a.c.item_id,
            a.c.rater.label("rater_a"),
            a.c.rating.label("rating_a"),
            a.c.label.label("label_a"),
            b.c.rater.label("rater_b"),
            b.c.rating.label("rating_b"),
            b.c.label.label("label_b"),
        )
        .select_from(a)
        .join(b, and_(*on))
        .where(
            (both_r & (_verdict(a.c.rating) != _verdict(b.c.rating))) | (both_l & (a.c.label != b.c.label))
        )
        .order_by(b.c.created.desc())
        .limit(limit)
    )
    per_rater = (
        select(
            ratings_table.c.rater,
            func.count().label("n"),
            func.avg(ratings_table.c.rating).label("mean_rating"),
        )
        .group_by(ratings_table.c.rater)
        .order_by(func.count().desc())
        .limit(50)
    )
    if source:
        per_rater = per_rater.where(ratings_table.c.source == source)
    with store.engine.connect() as conn:
        s = dict(conn.execute(q).one()._mapping)
        rows = [dict(x._mapping) for x in conn.execute(dis)]
        raters = [dict(x._mapping) for x in conn.execute(per_rater)]
    s = {k: (v or 0) for k, v in s.items()}
    s["verdict_agreement"] = round(s["same_verdict"] / s["rated_pairs"], 4) if s["rated_pairs"] else None
    s["label_agreement"] = round(s["same_label"] / s["labelled_pairs"], 4) if s["labelled_pairs"] else None
    s["mean_abs_diff"] = round(float(s["mean_abs_diff"]), 3) if s["rated_pairs"] else None
    return s | {"disagreements": rows, "raters": raters}


def recent(store, limit: int = 20) -> list[dict]:
    """The latest ratings, newest first."""
    v = ratings_table
    with store.engine.connect() as conn:
        rows = conn.execute(select(v).order_by(v.c.id.desc()).limit(limit)).all()
    return [dict(x._mapping) for x in rows]


def verdict(r: dict) -> str | None:
    """good / neutral / bad of one rating (None without a rating)."""
    x = r.get("rating")
    return None if x is None else "good" if x >= 4 else "bad" if x <= 2 else "neutral"


def summary(r: dict) -> str:
    """A rating in words: `4/5, label pay_bill, corrected`."""
    parts = [f"{r['rating']:g}/5"] if r.get("rating") is not None else []
    parts += [f"label {r['label']}"] if r.get("label") else []
    parts += ["corrected"] if r.get("corrected") else []
    return ", ".join(parts)


def agree_text(mine: dict, others: list[dict]) -> str:
    """Whether this rating agrees with other raters' (label first, else the verdict)."""
    if not others:
        return ""
    n = 0
    for o in others:
        if mine.get("label") and o.get("label"):
            n += mine["label"] == o["label"]
        elif verdict(mine) is not None and verdict(o) is not None:
            n += verdict(mine) == verdict(o)
    return (
        "you agree with all of them"
        if n == len(others)
        else f"you disagree with {len(others) - n} of {len(others)}"
    )
