"""Tiny server-side SVG charts for the DR page: no scripts, no external assets, every text
escaped. A chart is a plot area with a time axis (x) and a value axis (y), one or more
series drawn as lines (or bars), and optionally an objective drawn as a dashed red line.

Each point is a ``<circle class='pt'>`` with a ``<title>`` (the browser shows it on hover,
no script needed) as long as a series has at most :data:`MAX_MARKERS` points; the
series' ``<polyline>`` carries ``data-points`` (its point count) either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape

WIDTH, HEIGHT = 520, 190
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 22, 30  # margins around the plot area
MAX_MARKERS = 120  # above this, a series is a line without per-point markers
COLOURS = ("#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d")
OBJECTIVE_COLOUR = "#c0262d"


@dataclass
class Series:
    """One line (or set of bars): points (time, value); value None leaves a gap."""

    name: str
    points: list[tuple[datetime, float | None]] = field(default_factory=list)
    labels: list[str] | None = None  # per point hover text (default: time and value)
    bad: list[bool] | None = None  # per point: drawn in the objective's colour


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _fmt_coord(value: float) -> str:
    return f"{value:.1f}"


def _scale(lo: float, hi: float, out_lo: float, out_hi: float) -> Callable[[float], float]:
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


TICKS = 4  # value grid lines above zero


def nice_step(raw: float) -> float:
    """The grid step at or above ``raw``: 1, 2, 2.5 or 5 times a power of ten (so the
    labels read 0.5 h, 1 h, 1.5 h rather than 0.28 h, 0.55 h)."""
    if raw <= 0:
        return 0.25
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))


def _ticks(top: float, count: int = TICKS) -> list[float]:
    return [top * i / count for i in range(count + 1)]


def chart(
    title: str,
    series: Sequence[Series],
    *,
    start: datetime,
    end: datetime,
    y_format: Callable[[float], str] = lambda v: f"{v:g}",
    objective: float | None = None,
    objective_label: str = "",
    bars: bool = False,
    empty_text: str = "no data in this period",
) -> str:
    """An ``<svg>`` chart of ``series`` over ``[start, end]``; y from 0 to the largest value
    (or the objective, whichever is higher). ``objective``: a horizontal dashed line."""
    values = [v for s in series for _, v in s.points if v is not None]
    top = TICKS * nice_step(max([*values, objective or 0.0, 0.0]) * 1.05 / TICKS)
    x = _scale(start.timestamp(), end.timestamp(), LEFT, WIDTH - RIGHT)
    y = _scale(0.0, top, HEIGHT - BOTTOM, TOP)
    parts = [
        f"<svg class='chart' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
        f"viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='{_attr(title)}'>",
        f"<title>{escape(title)}</title>",
        f"<text class='t' x='{LEFT}' y='14' font-size='12' font-weight='600' fill='#1f2933'>"
        f"{escape(title)}</text>",
    ]
    parts += _axes(start, end, top, x, y, y_format if values else None)
    if not values:
        parts.append(
            f"<text class='empty' x='{(LEFT + WIDTH - RIGHT) / 2:.0f}' y='{HEIGHT / 2:.0f}' "
            f"text-anchor='middle' font-size='12' fill='#6b7280'>{escape(empty_text)}</text>"
        )
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        parts += _bars(s, colour, x, y) if bars else _line(s, colour, x, y, y_format)
    if objective is not None:
        oy = _fmt_coord(y(objective))
        parts.append(
            f"<line class='objective' x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{oy}' y2='{oy}' "
            f"stroke='{OBJECTIVE_COLOUR}' stroke-width='1.5' stroke-dasharray='6 4' "
            f"data-value='{objective:g}'><title>{escape(objective_label)}</title></line>"
        )
        parts.append(
            f"<text class='objective-label' x='{WIDTH - RIGHT}' y='{float(oy) - 4:.1f}' text-anchor='end' "
            f"font-size='10' fill='{OBJECTIVE_COLOUR}'>{escape(objective_label)}</text>"
        )
    parts += _legend(series)
    parts.append("</svg>")
    return "".join(parts)


def _axes(
    start: datetime, end: datetime, top: float,
    x: Callable[[float], float], y: Callable[[float], float], y_format: Callable[[float], str] | None,
) -> list[str]:  # fmt: skip
    """Both axes, the value grid (labelled unless ``y_format`` is None: an empty chart's
    scale means nothing) and five dates along the time axis."""
    parts = [
        f"<line x1='{LEFT}' x2='{LEFT}' y1='{TOP}' y2='{HEIGHT - BOTTOM}' stroke='#9ca3af'/>",
        f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{HEIGHT - BOTTOM}' y2='{HEIGHT - BOTTOM}' "
        "stroke='#9ca3af'/>",
    ]
    for tick in _ticks(top):
        ty = _fmt_coord(y(tick))
        parts.append(f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{ty}' y2='{ty}' stroke='#eef0f3'/>")
        if y_format is not None:
            parts.append(
                f"<text class='ylabel' x='{LEFT - 4}' y='{float(ty) + 3:.1f}' text-anchor='end' "
                f"font-size='10' fill='#4b5563'>{escape(y_format(tick))}</text>"
            )
    span = end - start
    for i in range(5):
        moment = start + span * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(
            f"<text class='xlabel' x='{_fmt_coord(x(moment.timestamp()))}' y='{HEIGHT - BOTTOM + 14}' "
            f"text-anchor='{anchor}' font-size='10' fill='#4b5563'>{escape(moment.strftime('%b %d'))}</text>"
        )
    return parts


def _label(s: Series, i: int, when: datetime, value: float, y_format: Callable[[float], str]) -> str:
    if s.labels is not None:
        return s.labels[i]
    return f"{s.name}: {when:%Y-%m-%d %H:%M} UTC, {y_format(value)}"


def _line(
    s: Series, colour: str, x: Callable[[float], float], y: Callable[[float], float],
    y_format: Callable[[float], str],
) -> list[str]:  # fmt: skip
    parts: list[str] = []
    runs: list[list[str]] = [[]]  # a None value ends a run: the line has a gap there
    for when, value in s.points:
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(f"{_fmt_coord(x(when.timestamp()))},{_fmt_coord(y(value))}")
    count = sum(1 for _, v in s.points if v is not None)
    for run in (r for r in runs if r):
        parts.append(
            f"<polyline class='series' data-series='{_attr(s.name)}' data-points='{count}' fill='none' "
            f"stroke='{colour}' stroke-width='1.6' points='{' '.join(run)}'/>"
        )
    if count <= MAX_MARKERS:
        for i, (when, value) in enumerate(s.points):
            if value is None:
                continue
            fill = OBJECTIVE_COLOUR if s.bad and s.bad[i] else colour
            parts.append(
                f"<circle class='pt' data-series='{_attr(s.name)}' cx='{_fmt_coord(x(when.timestamp()))}' "
                f"cy='{_fmt_coord(y(value))}' r='2.6' fill='{fill}'>"
                f"<title>{escape(_label(s, i, when, value, y_format))}</title></circle>"
            )
    return parts


def _bars(s: Series, colour: str, x: Callable[[float], float], y: Callable[[float], float]) -> list[str]:
    parts: list[str] = []
    base = y(0.0)
    for i, (when, value) in enumerate(s.points):
        if value is None:
            continue
        cx, top = x(when.timestamp()), y(value)
        fill = OBJECTIVE_COLOUR if s.bad and s.bad[i] else colour
        parts.append(
            f"<rect class='bar' data-series='{_attr(s.name)}' x='{cx - 3:.1f}' y='{top:.1f}' width='6' "
            f"height='{max(base - top, 0.5):.1f}' fill='{fill}'>"
            f"<title>{escape(_label(s, i, when, value, lambda v: f'{v:g}'))}</title></rect>"
        )
    return parts


def _legend(series: Sequence[Series]) -> list[str]:
    if len(series) < 2:
        return []
    parts: list[str] = []
    lx = WIDTH - RIGHT
    for i, s in reversed(list(enumerate(series))):
        text = escape(s.name)
        lx -= 14 + 6 * len(s.name)
        parts.append(
            f"<rect x='{lx}' y='6' width='9' height='9' fill='{COLOURS[i % len(COLOURS)]}'/>"
            f"<text class='legend' x='{lx + 12}' y='14' font-size='10' fill='#1f2933'>{text}</text>"
        )
    return parts
