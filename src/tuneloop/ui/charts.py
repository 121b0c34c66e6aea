"""Charts as inline SVG, drawn on the server: no chart library and no script in the browser.

Each function returns an SVG string (values escaped); every plotted point carries a <title>
tooltip, and the <svg> says how many points it drew (`data-points`), which the browser tests
read to watch a live curve grow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

COLORS = ("#2f6db5", "#d1495b", "#2a9d8f", "#e9a03b", "#7b5ea7", "#6c757d", "#00798c", "#8d6a9f")
Point = tuple[float, float]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 12))
        t += step
    return ticks


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for a table or a tick: compact, never scientific below a million."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e6:
        return f"{int(v):,}" if abs(v) >= 1e4 else str(int(v))
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.{max(digits - 1, 1)}f}".rstrip("0").rstrip(".")
    return f"{v:.{digits}g}" if a >= 1e-4 else f"{v:.1e}"


def _scale(lo: float, hi: float, a: float, b: float, log: bool = False):
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = (hi - lo) or 1.0

    def f(v: float) -> float:
        v = math.log10(v) if log else v
        return a + (v - lo) / span * (b - a)

    return f


def line_chart(
    series: Sequence[tuple[str, Sequence[Point]]],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 560,
    height: int = 220,
    log_y: bool = False,
    thresholds: Sequence[tuple[float, str]] = (),
    x_labels: Sequence[str] | None = None,
    bands: Sequence[tuple[float, float, float]] = (),
    chart_id: str = "",
) -> str:
    """Lines (with point markers) over a shared x axis; dashed horizontal thresholds; optional
    vertical error bars `bands` (x, lo, hi) for the first series. `x_labels` names the x
    positions 0..n-1 instead of numeric ticks (time buckets)."""
    pts_all = [
        (x, y)
        for _, pts in series
        for x, y in pts
        if y is not None and math.isfinite(y) and (y > 0 or not log_y)
    ]
    n_points = sum(len(p) for _, p in series)
    head = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" data-points="{n_points}"'
        + (f' id="{escape(chart_id)}"' if chart_id else "")
        + f"><title>{escape(title)}</title>"
    )
    if not pts_all:
        return (
            head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">'
            f"{escape(title)}: no data yet</text></svg>"
        )
    ml, mr, mt, mb = 56, 12, 22, 34
    xs = [p[0] for p in pts_all]
    ys = [p[1] for p in pts_all] + [t for t, _ in thresholds if not log_y or t > 0]
    ys += [v for _, lo, hi in bands for v in (lo, hi) if v is not None and (v > 0 or not log_y)]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    if log_y:
        y0, y1 = y0 / 1.2, y1 * 1.2
    else:
        pad = (y1 - y0) * 0.06 or abs(y1) * 0.1 or 1.0
        y0, y1 = (y0 - pad if y0 < 0 else max(0.0, y0 - pad)), y1 + pad  # counts and rates stay >= 0
    sx = _scale(x0, x1, ml, width - mr)
    sy = _scale(y0, y1, height - mb, mt, log_y)
    out = [head, f'<text x="{ml}" y="14" class="ct">{escape(title)}</text>']
    yt = (
        (
            [
                10**e
                for e in range(math.floor(math.log10(y0)), math.ceil(math.log10(y1)) + 1)
                if y0 <= 10**e <= y1
            ]
            or [y0, y1]
        )
        if log_y
        else nice_ticks(y0, y1)
    )
    for t in yt:
        y = sy(t)
        out.append(
            f'<line x1="{ml}" x2="{width - mr}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{ml - 4}" y="{y + 3:.1f}" text-anchor="end" class="tick">{fmt(t)}</text>'
        )
    if x_labels is not None:
        every = max(1, math.ceil(len(x_labels) / 6))
        xt = [(i, x_labels[i]) for i in range(0, len(x_labels), every)]
    else:
        xt = [(t, fmt(t)) for t in nice_ticks(x0, x1, 6)]
    for t, lab in xt:
        x = sx(t)
        out.append(
            f'<text x="{x:.1f}" y="{height - mb + 14}" text-anchor="middle" class="tick">'
            f"{escape(str(lab))}</text>"
        )
    out.append(f'<line x1="{ml}" x2="{width - mr}" y1="{height - mb}" y2="{height - mb}" class="axis"/>')
    if x_label:
        out.append(
            f'<text x="{(ml + width - mr) / 2}" y="{height - 4}" text-anchor="middle" '
            f'class="tick">{escape(x_label)}</text>'
        )
    if y_label:
        out.append(
            f'<text x="12" y="{(mt + height - mb) / 2}" text-anchor="middle" class="tick" '
            f'transform="rotate(-90 12 {(mt + height - mb) / 2})">{escape(y_label)}</text>'
        )
    for t, lab in thresholds:
        if log_y and t <= 0:
            continue
        y = sy(t)
        out.append(
            f'<line x1="{ml}" x2="{width - mr}" y1="{y:.1f}" y2="{y:.1f}" class="thr"/>'
            f'<text x="{width - mr - 2}" y="{y - 3:.1f}" text-anchor="end" class="thr-l">'
            f"{escape(lab)}</text>"
        )
    for x, lo, hi in bands:
        if lo is None or hi is None or (log_y and lo <= 0):
            continue
        out.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" '
            f'stroke="{COLORS[0]}" class="err"/>'
        )
    for k, (name, pts) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        good = [(x, y) for x, y in pts if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
        if len(good) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        r = 2.2 if len(good) < 80 else 1.2
        for x, y in good:
            label = x_labels[int(x)] if x_labels is not None and 0 <= int(x) < len(x_labels) else fmt(x)
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r}" fill="{color}">'
                f"<title>{escape(name)} {escape(str(label))}: {fmt(y, 4)}</title></circle>"
            )
        if len(series) > 1:
            lx = width - mr - 110 * (len(series) - k)
            out.append(
                f'<rect x="{lx}" y="8" width="10" height="3" fill="{color}"/>'
                f'<text x="{lx + 14}" y="13" class="tick">{escape(name)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    bars: Sequence[tuple[str, float, tuple[float, float] | None]],
    *,
    title: str = "",
    width: int = 560,
    bar_height: int = 18,
    max_value: float | None = None,
) -> str:
    """Horizontal bars (label, value, optional interval), e.g. a metric per system or counts."""
    if not bars:
        return (
            f'<svg class="chart" width="{width}" height="30" data-points="0"><text x="4" y="18" '
            f'class="muted">{escape(title)}: no data</text></svg>'
        )
    ml = min(220, 12 + 7 * max(len(str(b[0])) for b in bars))
    mr, mt = 60, 22
    height = mt + len(bars) * (bar_height + 6) + 6
    top = (
        max_value
        if max_value is not None
        else max(
            [b[1] for b in bars if b[1] is not None]
            + [b[2][1] for b in bars if b[2] and b[2][1] is not None]
            + [1e-12]
        )
    )
    sx = _scale(0, top, ml, width - mr)
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" data-points="{len(bars)}"><title>{escape(title)}</title>',
        f'<text x="4" y="14" class="ct">{escape(title)}</text>',
    ]
    for i, (label, value, ci) in enumerate(bars):
        y = mt + i * (bar_height + 6)
        v = value if value is not None and math.isfinite(value) else 0.0
        out.append(
            f'<text x="{ml - 6}" y="{y + bar_height * 0.7:.1f}" text-anchor="end" class="tick">'
            f'{escape(str(label))}</text><rect x="{ml}" y="{y}" width="{max(sx(v) - ml, 0):.1f}" '
            f'height="{bar_height}" fill="{COLORS[0]}" opacity="0.85"><title>{escape(str(label))}: '
            f"{fmt(value, 4)}</title></rect>"
        )
        if ci and ci[0] is not None and ci[1] is not None:
            yc = y + bar_height / 2
            out.append(f'<line x1="{sx(ci[0]):.1f}" x2="{sx(ci[1]):.1f}" y1="{yc}" y2="{yc}" class="err"/>')
        out.append(
            f'<text x="{max(sx(v), sx(ci[1]) if ci and ci[1] is not None else 0) + 4:.1f}" '
            f'y="{y + bar_height * 0.7:.1f}" class="tick">{fmt(value, 3)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def heat(value: float, top: float) -> str:
    """A background colour for a table cell, darker for larger values (confusion matrices)."""
    a = 0 if top <= 0 else min(1.0, value / top)
    return (
        f"background: rgba(47, 109, 181, {0.08 + 0.72 * a:.2f}); color: {'#fff' if a > 0.55 else 'inherit'}"
    )
