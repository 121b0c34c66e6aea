"""The Monitor page's data: traffic over time (aggregated in the database), each drift signal
over the recorded monitor runs with its threshold, and the gate's decisions.

Counts, error rates, latency and ratings per time bucket are GROUP BY queries, so a page over
100,000 logged requests costs one scan in SQL, not a Python loop over rows. A full drift check
(`run_monitor`: embeddings, domain classifier, perplexity) is a background job started from the
page; its window ends at the last logged request, so a demo looked at hours later still shows
its traffic.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, case, cast, func, select

from tuneloop.serve.store import feedback_table, requests_table

WIDTHS = [60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400]
MAX_BUCKETS = 48


def _epoch(store, col):
    """Seconds since 1970 of a stored (naive UTC) time, in the store's SQL dialect."""
    if store.engine.dialect.name == "sqlite":
        return cast(func.strftime("%s", col), Integer)
    return cast(func.extract("epoch", col), Integer)


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M")


def _norm_rating(col):
    """A stored rating on 0-1: thumbs (-1/0/1) as is (negative as 0), 1-5 as (r-1)/4."""
    return case((col <= 1, case((col < 0, 0.0), else_=col)), else_=(col - 1) / 4.0)


def _span(conn, col) -> tuple[datetime | None, datetime | None]:
    """min and max of an indexed time column: two index lookups (one query with both scans)."""
    lo = conn.execute(select(func.min(col))).scalar()
    hi = conn.execute(select(func.max(col))).scalar()
    return _aware(lo), _aware(hi)


def totals(store) -> dict[str, Any]:
    """Request and feedback counts and the last request time (cheap: for the overview)."""
    r, f = requests_table, feedback_table
    with store.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(r)).scalar_one()
        errors = conn.execute(select(func.count()).select_from(r).where(r.c.status >= 400)).scalar_one()
        fb = conn.execute(select(func.count()).select_from(f)).scalar_one()
        last = _aware(conn.execute(select(func.max(r.c.created))).scalar())
    return {
        "requests": int(n),
        "errors": int(errors),
        "feedback": int(fb),
        "last": last.isoformat() if last else None,
    }


_CACHE: dict[str, tuple[tuple, dict]] = {}


def _fingerprint(conn) -> tuple:
    """Changes whenever a request or a feedback row is added (counts and newest times; the
    times come from their indexes, the counts from SQLite's smallest index)."""
    r, f = requests_table, feedback_table
    return tuple(
        conn.execute(q).scalar()
        for q in (
            select(func.count()).select_from(r),
            select(func.max(r.c.created)),
            select(func.count()).select_from(f),
            select(func.max(f.c.created)),
        )
    )


def traffic(store) -> dict[str, Any]:
    """Totals, versions and per-bucket series of the whole traffic store: one GROUP BY over
    (time bucket, version) for the requests, one over time buckets for the feedback; kept
    until a request or feedback row is added."""
    with store.engine.connect() as conn:
        key = _fingerprint(conn)
    hit = _CACHE.get(store.url)
    if hit is not None and hit[0] == key:
        return hit[1]
    out = _traffic(store)
    _CACHE[store.url] = (key, out)
    return out


def _traffic(store) -> dict[str, Any]:
    r, f = requests_table, feedback_table
    with store.engine.connect() as conn:
        first, last = _span(conn, r.c.created)
        fb = conn.execute(
            select(
                func.count(),
                func.avg(_norm_rating(f.c.rating)),
                func.sum(case((f.c.label.isnot(None), 1), else_=0)),
                func.sum(case((f.c.corrected.isnot(None), 1), else_=0)),
            )
        ).one()
        out: dict[str, Any] = {
            "requests": 0,
            "first": first.isoformat() if first else None,
            "last": last.isoformat() if last else None,
            "errors": 0,
            "mean_latency_ms": None,
            "feedback": int(fb[0] or 0),
            "mean_rating": None if fb[1] is None else round(float(fb[1]), 3),
            "labels": int(fb[2] or 0),
            "corrections": int(fb[3] or 0),
            "versions": [],
            "series": [],
        }
        if first is None:
            return out
        span = max((last - first).total_seconds(), 1.0)
        width = next((w for w in WIDTHS if span / w <= MAX_BUCKETS), WIDTHS[-1])
        b = (_epoch(store, r.c.created) // width).label("b")
        rows = conn.execute(
            select(
                b,
                r.c.version,
                func.count(),
                func.sum(case((r.c.status >= 400, 1), else_=0)),
                func.sum(r.c.latency_ms),
                func.sum(r.c.completion_tokens),
            ).group_by(b, r.c.version)
        ).all()
        fb_b = (_epoch(store, f.c.created) // width).label("b")
        fb_rows = {
            int(x[0]): x
            for x in conn.execute(
                select(fb_b, func.count(), func.avg(_norm_rating(f.c.rating))).group_by(fb_b)
            )
        }
    buckets: dict[int, list[float]] = {}
    versions: dict[str, int] = {}
    for k, version, cnt, err, lat, toks in rows:  # one row per (bucket, version): a few hundred
        acc = buckets.setdefault(int(k), [0, 0, 0.0, 0.0])
        acc[0] += cnt
        acc[1] += err or 0
        acc[2] += lat or 0.0
        acc[3] += toks or 0
        versions[version] = versions.get(version, 0) + int(cnt)
    series = []
    for k in sorted(buckets):
        cnt, err, lat, toks = buckets[k]
        fr = fb_rows.get(k)
        series.append(
            {
                "start": datetime.fromtimestamp(k * width, UTC).isoformat(),
                "label": _stamp(k * width),
                "requests": int(cnt),
                "error_rate": round(err / cnt, 4) if cnt else None,
                "latency_ms": round(lat / cnt, 1) if cnt else None,
                "completion_tokens": round(toks / cnt, 2) if cnt else None,
                "feedback": int(fr[1]) if fr else 0,
                "rating": None if not fr or fr[2] is None else round(float(fr[2]), 3),
            }
        )
    n = sum(p["requests"] for p in series)
    out |= {
        "requests": n,
        "errors": int(sum(v[1] for v in buckets.values())),
        "mean_latency_ms": round(sum(v[2] for v in buckets.values()) / n, 1) if n else None,
        "versions": [{"version": v, "requests": c} for v, c in sorted(versions.items(), key=lambda x: -x[1])][
            :20
        ],
        "series": series,
        "bucket_s": width,
    }
    return out


def signal_history(loop_logs: list[dict], thresholds: dict) -> dict[str, Any]:
    """Each drift signal across the recorded monitor runs (`tuneloop loop` records)."""
    pts: dict[str, list] = {"mmd_p": [], "domain_auc": [], "novel_rate": [], "quality_drop": []}
    labels, rows = [], []
    for i, log in enumerate(x for x in loop_logs if isinstance(x.get("monitor"), dict)):
        m = log["monitor"]
        s = m.get("signals", {})
        until = (m.get("window") or {}).get("until", "")
        labels.append(until[5:16].replace("T", " "))
        vals = {
            "mmd_p": (s.get("embedding_mmd") or {}).get("p_value"),
            "domain_auc": (s.get("domain_classifier") or {}).get("auc"),
            "random_auc": (s.get("domain_classifier") or {}).get("random_auc"),
            "novel_rate": (s.get("novel_terms") or {}).get("rate"),
            "quality_drop": (s.get("quality") or {}).get("drop"),
        }
        for k in pts:
            v = vals.get(k)
            if isinstance(v, int | float) and math.isfinite(v):
                pts[k].append((float(i), float(v)))
        rows.append(
            {
                "until": until,
                "verdict": m.get("verdict"),
                "requests": m.get("requests"),
                "reasons": m.get("reasons", []),
                "action": log.get("action"),
                "file": log.get("file"),
                **vals,
            }
        )
    return {"labels": labels, "points": pts, "rows": rows[::-1], "thresholds": thresholds}


def monitor_window(store, spec: str) -> tuple[datetime | None, str]:
    """`now` for a monitor run over the window `spec` ending at the last logged request."""
    with store.engine.connect() as conn:
        last = _aware(conn.execute(select(func.max(requests_table.c.created))).scalar())
    if last is None:
        return None, "no traffic logged yet"
    return last + timedelta(
        seconds=1
    ), f"window {spec} ending at the last logged request ({last:%Y-%m-%d %H:%M} UTC)"
