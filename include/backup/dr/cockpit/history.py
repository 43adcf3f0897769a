"""A source's history over the last N days, as chart series, from what the targets hold:
the backup rows of the catalog index (``Monitor.backups()``: one row per backup, merged
over the targets, no manifest read) and the DR test reports (``_dr_tests/``).

- stored bytes per target: one point a day (the day's end): the stored size of the backups
  of the source that the target still holds and that had started by then. Backups that
  retention deleted are gone from the index, so the line shows what is kept, not what was
  stored on that day.
- backup duration: one point per finished backup (start to finish); above
  :data:`MAX_POINTS` backups in the period, the longest of each day.
- RPO age: one point a day, the worst age the source's newest verified data backup (SCHEMA
  backups hold no data) reached during that day, as the monitor's RPO rule counts it (from
  the backup's start). A backup counts from when it finished (its verification follows
  within the run). No backup yet: no point (a gap). Sources backed up by ``wal-push`` have
  a smaller real RPO than this (their WAL segments are not in the index).
- DR test RTO: one point per DR test that measured an RTO, red when above the objective.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup.dr.cockpit.svg import Series, chart
from include.backup.dr.monitor import fmt_bytes
from include.backup.dr.reports import DRTestReport

PERIODS = (30, 90)  # the ?days= choices
MAX_POINTS = 400  # backups per period before durations become one point a day
NO_DATA_TYPES = frozenset({"SCHEMA"})


@dataclass
class SourceHistory:
    """The four charts of one source (SVG markup) and the figures behind them."""

    source: str
    days: int
    stored: str
    durations: str
    rpo: str
    rto: str
    counts: dict[str, int]  # points per chart (the tests and the JSON read them)
    worst_rpo_hours: float | None  # the worst daily RPO age in the period


def _utc(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def day_ends(days: int, now: datetime) -> list[datetime]:
    """The end of each of the last ``days`` days (UTC midnights), the last one ``now``."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ends = [today - timedelta(days=days - 1 - i) for i in range(days)]
    return [*ends[1:], now] if days else []


def stored_series(rows: Sequence[dict[str, Any]], ends: Sequence[datetime]) -> list[Series]:
    """Per target: stored bytes of the backups it holds that had started by each day end."""
    per_target: dict[str, list[tuple[datetime, int]]] = {}
    for r in rows:
        started = _utc(r["started_at"])
        assert started is not None
        for t in r["targets"]:
            per_target.setdefault(t, []).append((started, int(r["stored_size"] or 0)))
    out = []
    for target, items in sorted(per_target.items()):
        items.sort()
        times = [w for w, _ in items]
        sums = [0]
        for _, size in items:
            sums.append(sums[-1] + size)
        points: list[tuple[datetime, float | None]] = [
            (end, float(sums[bisect.bisect_right(times, end)])) for end in ends
        ]
        labels = [f"{target}: {end:%Y-%m-%d}, {fmt_bytes(int(v or 0))}" for end, v in points]
        out.append(Series(target, points, labels=labels))
    return out


def duration_series(rows: Sequence[dict[str, Any]], start: datetime) -> Series:
    """Seconds from start to finish per finished backup started after ``start``."""
    items = [
        (when, float(r["duration_seconds"]), r["backup_id"])
        for r in rows
        if r["duration_seconds"] is not None and (when := _utc(r["started_at"])) is not None and when >= start
    ]
    items.sort()
    if len(items) <= MAX_POINTS:
        labels = [f"{bid}: {secs:.0f} s" for _, secs, bid in items]
        return Series("duration", [(w, s) for w, s, _ in items], labels=labels)
    longest: dict[datetime, tuple[float, str]] = {}
    for when, secs, bid in items:
        day = when.replace(hour=12, minute=0, second=0, microsecond=0)
        if day not in longest or secs > longest[day][0]:
            longest[day] = (secs, bid)
    days = sorted(longest)
    return Series(
        "longest of the day",
        [(d, longest[d][0]) for d in days],
        labels=[f"{d:%Y-%m-%d}: longest {longest[d][0]:.0f} s ({longest[d][1]})" for d in days],
    )


def rpo_points(rows: Sequence[dict[str, Any]], ends: Sequence[datetime]) -> list[float | None]:
    """The worst RPO age (hours) reached in each day that ends at ``ends[i]``."""
    good = sorted(
        (avail, started)
        for r in rows
        if r["verified"] and r["type"] not in NO_DATA_TYPES
        and (started := _utc(r["started_at"])) is not None
        and (avail := _utc(r["finished_at"]) or started) is not None
    )  # fmt: skip
    avails = [a for a, _ in good]
    newest: list[datetime] = []  # newest start among the backups available up to index i
    for _, started in good:
        newest.append(max(newest[-1], started) if newest else started)
    out: list[float | None] = []
    for i, end in enumerate(ends):
        begin = ends[i - 1] if i else end.replace(hour=0, minute=0, second=0, microsecond=0)
        # The age peaks just before each backup becomes available, and at the day's end.
        moments = [
            (a, True) for a in avails[bisect.bisect_left(avails, begin) : bisect.bisect_left(avails, end)]
        ]
        moments.append((end, False))
        worst: float | None = None
        for moment, before in moments:
            k = (bisect.bisect_left if before else bisect.bisect_right)(avails, moment)
            if k == 0:
                continue  # nothing verified yet at that moment
            age = (moment - newest[k - 1]).total_seconds() / 3600
            worst = age if worst is None else max(worst, age)
        out.append(worst)
    return out


def rto_series(reports: Iterable[DRTestReport], start: datetime, rto_hours: float | None) -> Series:
    chosen = sorted(
        (
            r
            for r in reports
            if r.measured_rto_seconds is not None and (r.finished_at or r.started_at) >= start
        ),
        key=lambda r: r.finished_at or r.started_at,
    )
    points: list[tuple[datetime, float | None]] = [
        (r.finished_at or r.started_at, (r.measured_rto_seconds or 0.0) / 60) for r in chosen
    ]
    bad = [rto_hours is not None and (r.measured_rto_seconds or 0.0) > rto_hours * 3600 for r in chosen]
    labels = [
        f"{r.test_id} ({r.test_type}, {'passed' if r.success else 'FAILED'}): "
        f"RTO {(r.measured_rto_seconds or 0) / 60:.1f} min"
        for r in chosen
    ]
    return Series("measured RTO", points, labels=labels, bad=bad)


def _hours(v: float) -> str:
    return f"{v:.0f} h" if v >= 10 or v == 0 else f"{v:.1f} h"


def _minutes(v: float) -> str:
    return f"{v:.0f} min" if v >= 10 or v == 0 else f"{v:.1f} min"


def _seconds(v: float) -> str:
    if v >= 600:
        return f"{v / 60:.0f} min"
    return f"{v:.0f} s" if v >= 10 or v == 0 else f"{v:.1f} s"


def source_history(
    source: str,
    rows: Sequence[dict[str, Any]],
    reports: Iterable[DRTestReport],
    *,
    days: int,
    now: datetime,
    rpo_hours: float | None,
    rto_hours: float | None,
) -> SourceHistory:
    """The charts of ``source`` over the last ``days`` days; ``rows``: every backup row
    (any source: filtered here), ``reports``: every DR test report (filtered here)."""
    mine = [r for r in rows if r["source"] == source]
    ends = day_ends(days, now)
    start = now - timedelta(days=days)
    stored = stored_series(mine, ends)
    duration = duration_series(mine, start)
    rpo_values = rpo_points(mine, ends)
    rpo = Series(
        "RPO age",
        list(zip(ends, rpo_values, strict=True)),
        labels=[
            f"{e:%Y-%m-%d}: worst {v:.1f} h" if v is not None else ""
            for e, v in zip(ends, rpo_values, strict=True)
        ],
        bad=[rpo_hours is not None and v is not None and v > rpo_hours for v in rpo_values],
    )
    rto = rto_series((r for r in reports if r.source == source), start, rto_hours)
    known = [v for v in rpo_values if v is not None]
    return SourceHistory(
        source=source,
        days=days,
        stored=chart(f"Stored bytes per target, {days} days", stored, start=start, end=now, y_format=_bytes),
        durations=chart(f"Backup duration, {days} days", [duration], start=start, end=now, y_format=_seconds),
        rpo=chart(
            f"RPO age (worst of each day), {days} days",
            [rpo],
            start=start,
            end=now,
            y_format=_hours,
            objective=rpo_hours,
            objective_label=f"RPO objective {rpo_hours:g} h" if rpo_hours else "",
        ),
        rto=chart(
            f"DR test RTO, {days} days",
            [rto],
            start=start,
            end=now,
            y_format=_minutes,
            bars=True,
            objective=rto_hours * 60 if rto_hours is not None else None,
            objective_label=f"RTO objective {rto_hours:g} h" if rto_hours is not None else "",
            empty_text="no DR test measured an RTO in this period",
        ),
        counts={
            "stored": sum(len(s.points) for s in stored),
            "durations": len(duration.points),
            "rpo": len(known),
            "rto": len(rto.points),
        },
        worst_rpo_hours=round(max(known), 2) if known else None,
    )


def _bytes(v: float) -> str:
    return fmt_bytes(int(v))
