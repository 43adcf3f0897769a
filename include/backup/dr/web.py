"""The DR Management page and its JSON metrics API: a FastAPI app, mounted by the Airflow
plugin (plugins/dr_management.py) at ``/dr`` in the api-server.

Why about 650 lines: one route table and the display strings the templates need
(dr/templates/ holds the markup); the figures come from dr/monitor.

Routes (relative to the mount point)::

    GET /                      the DR Management page (server-rendered HTML, no assets)
    GET /api/metrics           MonitorReport.to_json() + "summary" (+ "period" with dates)
    GET /api/metrics/violations        the current alerts (RPO/RTO misses, overdue tests...)
    GET /api/metrics/success-rate      per source: backups, verified, success rate
    GET /api/backups           backups at the targets; ?source= &type= &latest= &start_date= &end_date=
                               &since= &limit= &cursor= (pages: pass back next_cursor; 400 when bad)
    GET /api/health            {"status": "ok"}: the app is up (no target is touched)
    GET /api/openapi.json      the OpenAPI schema (no /openapi.json, /docs or /redoc)

Dates (``start_date``, ``end_date``): an ISO date (a whole day, inclusive) or datetime,
from 1970-01-01 to 2999-12-31; anything else answers 422 naming the parameter.

Every request that needs figures runs :func:`~include.backup.dr.monitor.run_monitor` on
the config (``$BACKUP_CONFIG``, via ``include.backup.factory._load``), cached for
``$BACKUP_DR_PAGE_CACHE_SECONDS`` (default 30) so a page reload does not list every
target again; ``?refresh=1`` bypasses the cache.

Output is metadata only: source, target, schedule and connection *ids*, backup ids,
times, sizes and counts. Error texts go through :func:`~include.backup.alerts.notify.redact`.

A config that cannot be loaded, or a target that cannot be listed, does not break the
page: it renders with an error banner (HTTP 200); the JSON API answers 503 with
``{"error": ...}`` when there are no figures at all.

Authentication: Airflow 3 mounts plugin FastAPI apps without any auth of its own, so
``create_app(require_auth=True)`` (what the plugin uses) adds the dependencies of
dr/web_auth.py: Airflow's ``get_user`` (the JWT from ``Authorization: Bearer`` or the UI's
``_token`` cookie), then the configured auth manager's answer for the backup DAGs' runs
(figures) or the key ring's connection (audit), narrowed by ``dr.reader_roles`` /
``dr.audit_roles``, each decision recorded in the audit trail. ``require_auth=False``
(the module-level ``app``) is for tests and for serving it behind an authenticating proxy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from include.backup import audit_web
from include.backup.alerts.notify import redact
from include.backup.catalog.catalog import as_utc, verified_at
from include.backup.catalog.index import optional_keys, summaries
from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import BackupType
from include.backup.dr import paging, web_auth
from include.backup.dr.cockpit import PERIODS, BackupNotFound, Cockpit, airflow_base, parse_days
from include.backup.dr.monitor import MonitorReport, fmt_age, fmt_bytes, fmt_time, run_monitor
from include.backup.factory import _load
from include.backup.gc_pause import gc_paused
from include.backup.targets import build_target

log = logging.getLogger(__name__)

DEFAULT_CACHE_SECONDS = 30.0
CACHE_ENV = "BACKUP_DR_PAGE_CACHE_SECONDS"


# --- gathering, cached -----------------------------------------------------------------


@dataclass
class Snapshot:
    """One run of the monitor (or the error that prevented it)."""

    taken_at: float  # time.monotonic()
    generated_at: datetime
    report: MonitorReport | None = None
    error: str | None = None  # the config could not be loaded / the monitor crashed
    config_path: str | None = None
    config_issues: list[str] = field(default_factory=list)
    rto_hours: float | None = None
    rpo_hours: float | None = None
    test_frequency_days: int | None = None
    config: Any = None  # the BackupConfig it ran on (the Audit section reads its targets)
    # Each reachable target's backups as the monitor read them: /api/backups and the
    # History section reuse them instead of reading every catalog index again.
    listed: dict[str, list[Manifest]] | None = None


def _cache_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(CACHE_ENV, DEFAULT_CACHE_SECONDS)))
    except ValueError:
        return DEFAULT_CACHE_SECONDS


def _load_config() -> Any:
    return _load(None)


# The snapshot a page request took (Monitor.serving): what its backup rows come from.
_REQUEST_SNAPSHOT: ContextVar[Snapshot | None] = ContextVar("dr_request_snapshot", default=None)


class Monitor:
    """run_monitor on the current config, at most once per ``ttl`` seconds (thread-safe:
    FastAPI runs sync endpoints in a thread pool)."""

    def __init__(self, ttl: float | None = None, load: Callable[[], Any] = _load_config) -> None:
        self.ttl = ttl
        self._load = load
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._backups: tuple[float, list[dict[str, Any]], list[str]] | None = None
        self._derived: tuple[Snapshot, list[dict[str, Any]], list[str]] | None = None

    @contextlib.contextmanager
    def serving(self, snap: Snapshot) -> Iterator[Snapshot]:
        """Inside the block, :meth:`backups` answers from ``snap``, the snapshot this
        request took (refreshed or not), instead of reading every target's index again:
        a page's figures, history and actions come from one read (four reads of 10,000
        backups made ``/?refresh=1`` take 2 s, bench/bench_catalog.py)."""
        token = _REQUEST_SNAPSHOT.set(snap)
        try:
            yield snap
        finally:
            _REQUEST_SNAPSHOT.reset(token)

    def _rows_for(self, snap: Snapshot) -> tuple[list[dict[str, Any]], list[str]] | None:
        """The rows of ``snap``'s listing, derived once per snapshot; None without one."""
        if snap.listed is None or snap.report is None:
            return None
        with self._lock:
            if self._derived is None or self._derived[0] is not snap:
                rows, problems = _rows_of(snap.listed, _unreachable(snap.report))
                self._derived = (snap, rows, problems)
            return self._derived[1], self._derived[2]

    def _fresh(self, taken_at: float) -> bool:
        ttl = self.ttl if self.ttl is not None else _cache_seconds()
        return time.monotonic() - taken_at < ttl

    def clear(self) -> None:
        with self._lock:
            self._snap = None
            self._backups = None
            self._derived = None

    def snapshot(self, refresh: bool = False) -> Snapshot:
        with self._lock:
            if self._snap is not None and not refresh and self._fresh(self._snap.taken_at):
                return self._snap
            self._snap = self._take()
            return self._snap

    def _take(self) -> Snapshot:
        snap = Snapshot(taken_at=time.monotonic(), generated_at=datetime.now(UTC))
        try:
            loaded = self._load()
        except Exception as exc:  # noqa: BLE001 - the page shows it
            log.warning("DR page: cannot load the backup config: %s", redact(exc))
            snap.error = f"cannot load the backup config: {redact(exc)}"
            return snap
        snap.config_path = str(loaded.path)
        snap.config = loaded.config
        snap.config_issues = [redact(i) for i in loaded.issues]
        dr = loaded.config.dr
        snap.rto_hours, snap.rpo_hours, snap.test_frequency_days = (
            dr.rto_hours,
            dr.rpo_hours,
            dr.test_frequency_days,
        )
        try:
            listed: dict[str, list[Manifest]] = {}
            with gc_paused():  # the listing's records: many new objects, none garbage
                snap.report = run_monitor(loaded.config, listed=listed)
            snap.listed = listed
            snap.generated_at = snap.report.generated_at
        except Exception as exc:  # noqa: BLE001 - run_monitor should not raise; if it does, say so
            log.exception("DR page: the monitor failed")
            snap.error = f"the DR monitor failed: {redact(exc)}"
        return snap

    def backups(self, refresh: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        """Every backup at every target, merged by id: (rows, problems)."""
        bound = _REQUEST_SNAPSHOT.get()
        if bound is not None and (derived := self._rows_for(bound)) is not None:
            return derived
        with self._lock:
            if self._backups is not None and not refresh and self._fresh(self._backups[0]):
                return self._backups[1], self._backups[2]
            # The snapshot's config while it is fresh: one config load per ``ttl`` for the
            # page, its history and the API together.
            snap = self._snap
            if snap is None or snap.config is None or refresh or not self._fresh(snap.taken_at):
                rows, problems = _scan_backups(self._load().config)
            elif snap.listed is not None and snap.report is not None:
                rows, problems = _rows_of(snap.listed, _unreachable(snap.report))
            else:
                rows, problems = _scan_backups(snap.config)
            self._backups = (time.monotonic(), rows, problems)
            return rows, problems


def _scan_backups(config: Any) -> tuple[list[dict[str, Any]], list[str]]:
    listed: dict[str, list[Manifest]] = {}
    problems: list[str] = []
    keys = optional_keys(config)  # checks the catalog index; without it, every manifest is read
    for name, cfg in config.targets.items():
        try:
            listed[name] = summaries(build_target(name, cfg), None, keys)
        except Exception as exc:  # noqa: BLE001 - one bad target must not hide the rest
            problems.append(f"target '{name}': {redact(exc)}")
    return _rows_of(listed, problems)


def _unreachable(report: MonitorReport) -> list[str]:
    """The monitor's unreachable targets, as :func:`_scan_backups` words its problems."""
    return [f"target '{name}': {t.error}" for name, t in report.targets.items() if not t.reachable]


def _rows_of(
    listed: dict[str, list[Manifest]], problems: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per backup id over every target's listing, oldest first."""
    merged: dict[str, tuple[Manifest, list[str], list[str]]] = {}
    # Tens of thousands of new dicts and sort keys, none garbage: no collector passes over
    # them (the sort's keys alone set off passes that were half of this at 100,000 rows).
    with gc_paused():
        for name, manifests in listed.items():
            for m in manifests:
                _, held, ok = merged.setdefault(m.backup_id, (m, [], []))
                held.append(name)
                if verified_at(m, name):
                    ok.append(name)
        rows = [_backup_row(m, held, ok) for m, held, ok in merged.values()]
        rows.sort(key=lambda r: (r["started_at"], r["backup_id"]))  # the order paging relies on
    return rows, problems


def _backup_row(m: Manifest, held: list[str], ok: list[str]) -> dict[str, Any]:
    """What the API tells about one backup: no encryption block, no file index."""
    duration = (
        max(0.0, (as_utc(m.finished_at) - as_utc(m.started_at)).total_seconds()) if m.finished_at else None
    )
    return {
        "backup_id": m.backup_id,
        "source": m.source,
        "source_type": m.source_type,
        "schedule": m.schedule,
        "type": m.backup_type,
        "parent_id": m.parent_id,
        "started_at": as_utc(m.started_at).isoformat(),
        "finished_at": as_utc(m.finished_at).isoformat() if m.finished_at else None,
        "duration_seconds": duration,
        "raw_size": m.raw_size,
        "stored_size": m.stored_size,
        "compression": m.compression,
        "encryption_key_id": m.encryption.key_id if m.encryption else None,
        "targets": sorted(held),
        "verified_targets": sorted(ok),
        "verified": bool(ok),
        "incomplete": m.incomplete,  # marked at dump time: the source moved under it
        "dag_run_id": m.dag_run_id,  # None: made by the CLI, or before manifests recorded it
        "logical_date": _logical_date(m.logical_date),
    }


# --- figures ---------------------------------------------------------------------------


def _alert_source(alert: dict[str, Any], report: dict[str, Any]) -> str | None:
    if alert["kind"] in ("RPO_MISSED", "DR_TEST_OVERDUE"):
        return alert["subject"]
    if alert["kind"] == "BACKUP_LATE":
        sched = report["schedules"].get(alert["subject"])
        return sched["source"] if sched else alert["facts"].get("source")
    return alert["facts"].get("source")


def rto_violation(source: dict[str, Any], rto_hours: float | None) -> str | None:
    """The newest DR test of a source measured an RTO above the objective."""
    test = source.get("last_dr_test") or {}
    rto = test.get("measured_rto_seconds")
    if rto_hours is None or rto is None or rto <= rto_hours * 3600:
        return None
    return (
        f"DR test {test.get('test_id')} measured RTO {fmt_age(timedelta(seconds=rto))}, "
        f"objective {rto_hours:g} h"
    )


def summarise(snap: Snapshot) -> dict[str, Any]:
    """Totals for the top of the page and the API's "summary"."""
    assert snap.report is not None
    data = snap.report.to_json()
    sources = data["sources"].values()
    backups = sum(s["backups_count"] for s in sources)
    verified = sum(s["verified_count"] for s in sources)
    failed = sum(s["failed_runs_count"] for s in sources)  # runs that published nothing
    by_severity: dict[str, int] = {}
    for a in data["alerts"]:
        by_severity[a["severity"]] = by_severity.get(a["severity"], 0) + 1
    rto_violations = {
        s["source"]: msg for s in sources if (msg := rto_violation(s, snap.rto_hours)) is not None
    }
    return {
        "config_path": snap.config_path,
        "config_issues": snap.config_issues,
        "rpo_hours": snap.rpo_hours,
        "rto_hours": snap.rto_hours,
        "test_frequency_days": snap.test_frequency_days,
        "sources": len(data["sources"]),
        "monitored_sources": sum(1 for s in sources if s["monitored"]),
        "sources_within_rpo": sorted(s["source"] for s in sources if s["rpo_ok"]),
        "rpo_violations": sorted({a["subject"] for a in data["alerts"] if a["kind"] == "RPO_MISSED"}),
        "rto_violations": rto_violations,
        "dr_tests_overdue": sorted({a["subject"] for a in data["alerts"] if a["kind"] == "DR_TEST_OVERDUE"}),
        "backups": backups,
        "verified_backups": verified,
        "failed_runs": failed,
        "success_rate": round(verified / (backups + failed), 4) if backups + failed else None,
        "stored_bytes": sum(t["stored_bytes"] for t in data["targets"].values()),
        "targets": len(data["targets"]),
        "targets_unreachable": sorted(n for n, t in data["targets"].items() if not t["reachable"]),
        "alerts": len(data["alerts"]),
        "alerts_by_severity": by_severity,
        "issues": len(data["issues"]),
    }


# Dates the API accepts: wide enough for any backup, narrow enough that the arithmetic
# below (a bare end date means "up to the next midnight", offsets converted to UTC) cannot
# overflow datetime's year 1..9999 range.
def _logical_date(value: datetime | str | None) -> str | None:
    """ISO text of a manifest's logical date; a summary read from the catalog index
    carries it as the text it was stored as, a parsed manifest as a datetime."""
    if not value:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return as_utc(moment).isoformat()


DATE_MIN = datetime(1970, 1, 1, tzinfo=UTC)
DATE_MAX = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_DATE_RANGE = f"{DATE_MIN.date().isoformat()} to {DATE_MAX.date().isoformat()}"


@dataclass(frozen=True)
class Period:
    """Backups started in ``[start, end)`` (``end`` exclusive; None: unbounded)."""

    start: datetime | None = None
    end: datetime | None = None

    def holds(self, row: dict[str, Any]) -> bool:
        started = as_utc(datetime.fromisoformat(row["started_at"]))
        return (self.start is None or started >= self.start) and (self.end is None or started < self.end)


def _bad_date(name: str, value: str, why: str) -> HTTPException:
    return HTTPException(
        422,
        f"{name}: {why}, got {value!r}; give an ISO date (YYYY-MM-DD) or datetime "
        f"(YYYY-MM-DDTHH:MM[:SS][+HH:MM], UTC when no offset) from {_DATE_RANGE}",
    )


def _parse_bound(value: str | None, name: str, *, end: bool) -> datetime | None:
    """A query-string date as an aware UTC datetime. A bare date is a whole day: as a start
    its midnight, as an end the next midnight (exclusive). A datetime is an instant (an end
    instant is inclusive). 422 naming ``name`` and the accepted range for anything else."""
    if not value:
        return None
    text = value.strip()
    try:
        day: date | None = date.fromisoformat(text) if len(text) <= 10 else None
        parsed = (
            datetime.combine(day, datetime.min.time(), tzinfo=UTC)
            if day is not None
            else datetime.fromisoformat(text)
        )
    except ValueError:
        raise _bad_date(name, value, "not an ISO date or datetime") from None
    try:
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00-05:00
        raise _bad_date(name, value, "out of range") from None
    if not DATE_MIN <= parsed <= DATE_MAX:
        raise _bad_date(name, value, "out of range")
    if end:
        # Inside DATE_MAX, neither step can overflow.
        parsed = parsed + timedelta(days=1) if day is not None else parsed + timedelta(microseconds=1)
    return parsed


def parse_period(start_date: str | None, end_date: str | None) -> Period:
    """The ``start_date`` / ``end_date`` query parameters, checked (422 when bad)."""
    period = Period(
        _parse_bound(start_date, "start_date", end=False), _parse_bound(end_date, "end_date", end=True)
    )
    if period.start is not None and period.end is not None and period.start >= period.end:
        raise HTTPException(
            422, f"start_date {start_date!r} is after end_date {end_date!r}: give start_date <= end_date"
        )
    return period


def period_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per source over the given backups: counts, success rate, durations, bytes."""
    out: dict[str, Any] = {}
    for r in rows:
        s = out.setdefault(
            r["source"],
            {"backups": 0, "verified": 0, "by_type": {}, "stored_bytes": 0, "_durations": []},
        )
        s["backups"] += 1
        s["verified"] += 1 if r["verified"] else 0
        s["by_type"][r["type"]] = s["by_type"].get(r["type"], 0) + 1
        s["stored_bytes"] += r["stored_size"]
        if r["duration_seconds"] is not None:
            s["_durations"].append(r["duration_seconds"])
    for s in out.values():
        d = s.pop("_durations")
        s["success_rate"] = round(s["verified"] / s["backups"], 4) if s["backups"] else None
        s["avg_duration_seconds"] = round(sum(d) / len(d), 1) if d else None
    return out


# --- HTML ------------------------------------------------------------------------------
#
# The markup is in templates/ (dr_page.html.j2, its style sheet dr_page.css, and
# dr_denied.html.j2), rendered with autoescaping; the functions below only turn the
# report's JSON into the strings the template shows.

TEMPLATES = Path(__file__).parent / "templates"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    finalize=lambda value: "" if value is None else value,  # None shows as nothing
)


PAGES = ("dr_page.html.j2", "dr_source.html.j2", "dr_backup.html.j2", "dr_denied.html.j2")


def _compile_templates() -> None:
    """Compile the pages when the app is made (Jinja keeps them): compiling took a quarter
    of a second of the first request after the api-server started, the one on-call opens."""
    for name in PAGES:
        _ENV.get_template(name)


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return fmt_age(timedelta(seconds=seconds))


def _cards(snap: Snapshot, summary: dict[str, Any]) -> list[tuple[str, str]]:
    rate = summary["success_rate"]
    return [
        ("RPO", f"{snap.rpo_hours:g} h" if snap.rpo_hours is not None else "-"),
        ("RTO", f"{snap.rto_hours:g} h" if snap.rto_hours is not None else "-"),
        ("Sources within RPO", f"{len(summary['sources_within_rpo'])} / {summary['monitored_sources']}"),
        ("Verified / runs", f"{summary['verified_backups']} / {summary['backups'] + summary['failed_runs']}"),
        ("Success rate", f"{rate * 100:.0f}%" if rate is not None else "-"),
        ("Stored", fmt_bytes(summary["stored_bytes"])),
        ("Open alerts", str(summary["alerts"])),
    ]


def _source_row(
    name: str, s: dict[str, Any], alerts: list[dict[str, Any]], rto_hours: float | None, now: datetime
) -> dict[str, Any]:
    """One row of the Sources table, as the strings the template shows."""
    row: dict[str, Any] = {
        "name": name,
        "type": s["type"],
        "monitored": s["monitored"],
        "last_good_backup_id": s["last_good_backup_id"],
        "success": s["success"],
        "verified_count": s["verified_count"],
        "backups_count": s["backups_count"],
        "failed_runs_count": s["failed_runs_count"],
        "rate": f"{s['success_rate'] * 100:.0f}%" if s["success_rate"] is not None else "-",
        "avg_duration": _duration(s["avg_duration_seconds"]),
        "last_duration": _duration(s["last_backup_duration_seconds"]),
        "per_target": [(t, fmt_bytes(b)) for t, b in sorted(s["stored_bytes_per_target"].items())],
        "violations": [f"{a['kind']}: {a['summary']}" for a in alerts],
        "overdue": s["dr_test_overdue"],
        "test": None,
        "due": None,
        "due_in": None,
    }
    if s["last_good_backup_id"]:
        row["last_good_at"] = fmt_time(_dt(s["last_good_backup_at"]))
        row["last_good_targets"] = ", ".join(s["last_good_backup_targets"])
        row["last_good_incomplete"] = s.get("last_good_backup_incomplete", False)
        row["age"] = fmt_age(timedelta(hours=s["last_good_backup_age_hours"]))
        row["rpo_kind"] = "ok" if s["rpo_ok"] else "bad"
        row["rpo_hours"] = f"{s['rpo_hours']:g}"
    if (rto := rto_violation(s, rto_hours)) is not None:
        row["violations"].append(f"RTO_MISSED: {rto}")
    test = s["last_dr_test"]
    if test:
        rto_s, rpo_s = test.get("measured_rto_seconds"), test.get("measured_rpo_seconds")
        row["test"] = {
            "success": test["success"],
            "test_type": test["test_type"],
            "when": fmt_time(_dt(test["finished_at"] or test["started_at"])),
            "rto": _duration(rto_s) if rto_s is not None else None,
            "rpo": _duration(rpo_s) if rpo_s is not None else None,
            "issues": test.get("issue_list", []),  # absent in a report from an older monitor
            "notes": test.get("notes", ""),
        }
    due = _dt(s["next_dr_test_due"])
    if due:
        row["due"], row["due_in"] = fmt_time(due), fmt_age(due - now)
    return row


def _target_row(name: str, t: dict[str, Any]) -> dict[str, Any]:
    free, low = t["free_bytes"], False
    if free is not None:
        low = t["min_free_bytes"] is not None and free < t["min_free_bytes"]
    return {
        "name": name,
        "type": t["type"],
        "reachable": t["reachable"],
        "error": t["error"],
        "free": fmt_bytes(free) if free is not None else None,
        "low": low,
        "threshold": fmt_bytes(t["min_free_bytes"]),
        "stored": fmt_bytes(t["stored_bytes"]),
        "backups": t["backups"],
        "dr_test_reports": t["dr_test_reports"],
    }


def _schedule_row(name: str, sc: dict[str, Any]) -> dict[str, Any]:
    return {**sc, "name": name, "last_at": fmt_time(_dt(sc["last_backup_at"]))}


def page_context(snap: Snapshot, now: datetime) -> dict[str, Any]:
    """What dr_page.html.j2 shows: the snapshot, and when there is a report, its figures
    as display strings."""
    context: dict[str, Any] = {"snap": snap, "fmt_time": fmt_time, "data": None}
    if snap.report is None:
        return context
    data = snap.report.to_json()
    summary = summarise(snap)
    alerts_by_source: dict[str, list[dict[str, Any]]] = {}
    for a in data["alerts"]:
        src = _alert_source(a, data)
        if src:
            alerts_by_source.setdefault(src, []).append(a)
    unreachable = summary["targets_unreachable"]
    context.update(
        data=data,
        unreachable_errors="; ".join(f"{n}: {data['targets'][n]['error']}" for n in unreachable),
        all_ok=data["ok"] and not summary["rto_violations"],
        cards=_cards(snap, summary),
        sources=[
            _source_row(n, s, alerts_by_source.get(n, []), snap.rto_hours, now)
            for n, s in data["sources"].items()
        ],
        targets=[_target_row(n, t) for n, t in data["targets"].items()],
        schedules=[_schedule_row(n, sc) for n, sc in data["schedules"].items()],
        alerts=data["alerts"],
        keys=data["keys"],
        issues=data["issues"],
    )
    return context


def render_page(
    snap: Snapshot, *, now: datetime | None = None, audit: tuple[list[Any], list[str]] | None = None,
    cockpit: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """The DR Management page (templates/dr_page.html.j2); ``audit``: the Audit section's
    rows and problems (audit_web.py); ``cockpit``: :func:`cockpit_context` (actions per
    source and the History section)."""
    context = page_context(snap, now or datetime.now(UTC))
    context["audit_rows"], context["audit_problems"] = audit or ([], [])
    if cockpit is not None:
        context["cockpit"] = cockpit
    return _ENV.get_template("dr_page.html.j2").render(context)


# --- the cockpit (dr/cockpit/): history, actions, a page per source and per backup -------


@dataclass(frozen=True)
class Where:
    """Where the DR app is served: ``root`` its own path (``/dr``), ``base`` the Airflow
    UI's (``""``), ``origin`` the scheme and host the REST calls are shown with."""

    root: str
    base: str
    origin: str

    @classmethod
    def of(cls, request: Request) -> Where:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return cls(root, airflow_base(root), f"{request.url.scheme}://{request.url.netloc}")


def _days(request: Request) -> int:
    try:
        return parse_days(request.query_params.get("days"))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _without_actor(view: dict[str, Any], audit_ok: bool) -> dict[str, Any]:
    """The failover's actor is audit data: shown to the roles that may read the trail."""
    if not audit_ok and view.get("failover"):
        view["failover"] = {**view["failover"], "actor": None}
    return view


def cockpit_context(
    cp: Cockpit, snap: Snapshot, where: Where, days: int, *, refresh: bool = False,
    now: datetime | None = None, audit_ok: bool = True,
) -> dict[str, Any] | None:  # fmt: skip
    """The overview's cockpit parts: every source's actions and last failover, and its
    charts over ``days`` days. None without a config (the page shows the error).
    ``audit_ok``: the user may read the audit trail (else the failover's actor is left out)."""
    if snap.config is None:
        return None
    latest = {n: s.last_good_backup_id for n, s in snap.report.sources.items()} if snap.report else {}
    problems: list[str] = []
    try:
        history, problems = cp.histories(snap.config, days, now=now, refresh=refresh)
        views = {
            n: _without_actor(cp.source_view(snap.config, n, latest.get(n), base=where.base,
                                             origin=where.origin, refresh=refresh), audit_ok)
            for n in snap.config.sources
        }  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the figures above still show
        log.exception("DR page: the cockpit failed")
        return {"days": days, "periods": PERIODS, "root": where.root, "history": {}, "views": {},
                "problems": [f"history unavailable: {redact(exc)}"]}  # fmt: skip
    return {"days": days, "periods": PERIODS, "root": where.root, "history": history, "views": views,
            "problems": problems}  # fmt: skip


def _backup_line(r: dict[str, Any]) -> dict[str, Any]:
    return {
        **r,
        "started": r["started_at"][:19].replace("T", " "),
        "took": _duration(r["duration_seconds"]),
        "stored": fmt_bytes(r["stored_size"]),
    }


def render_source(
    cp: Cockpit, snap: Snapshot, source: str, where: Where, days: int, refresh: bool, audit_ok: bool = True
) -> str:
    """templates/dr_source.html.j2: one source's state, actions, history and newest backups."""
    now = datetime.now(UTC)
    context = page_context(snap, now)
    row = next((r for r in context.get("sources") or [] if r["name"] == source), None)
    latest = row["last_good_backup_id"] if row else None
    history, problems = cp.histories(snap.config, days, now=now, refresh=refresh, sources=[source])
    rows, _ = cp.rows(refresh)
    mine = [r for r in rows if r["source"] == source][-20:]
    return _ENV.get_template("dr_source.html.j2").render(
        source=source, row=row, error=snap.error, root=where.root, periods=PERIODS,
        rpo_hours=f"{snap.rpo_hours:g}" if snap.rpo_hours is not None else "-",
        rto_hours=f"{snap.rto_hours:g}" if snap.rto_hours is not None else "-",
        view=_without_actor(cp.source_view(snap.config, source, latest, base=where.base,
                                           origin=where.origin, refresh=refresh), audit_ok),
        history=history[source], problems=problems, backups=[_backup_line(r) for r in reversed(mine)],
    )  # fmt: skip


def _manifest_lines(m: dict[str, Any] | None) -> list[tuple[str, str]]:
    if m is None:
        return []
    enc = m["encryption"]
    lines = [
        ("Source", f"{m['source']} ({m['source_type']})"), ("Schedule", m["schedule"]), ("Type", m["type"]),
        ("Started (UTC)", (m["started_at"] or "-")[:19].replace("T", " ")),
        ("Finished (UTC)", (m["finished_at"] or "-")[:19].replace("T", " ")),
        ("Took", _duration(m["duration_seconds"])),
        ("Size", f"{fmt_bytes(m['raw_size'])} from the source, {fmt_bytes(m['stored_size'])} stored "
                 f"({m['compression']}, {m['objects']} object(s))"),
        ("Format", f"{m['payload_format']}, manifest format {m['format_version']}"),
        ("Encryption", f"{enc['algorithm']}, key {enc['key_id']}" if enc else "none"),
        ("Signed with", m["signed_with"] or "unsigned (made before manifests were signed)"),
        ("Complete", "NO: the source changed during the dump (stats.warnings)" if m["incomplete"] else "yes"),
        ("DAG run", m["dag_run_id"] or "none (made by the CLI)"),
        ("Logical date", (m["logical_date"] or "-")[:19].replace("T", " ")),
    ]  # fmt: skip
    lines += [(f"stats.{k}", str(v)) for k, v in sorted(m["stats"].items())]
    return lines


def render_backup(detail: dict[str, Any], where: Where) -> str:
    """templates/dr_backup.html.j2: :func:`~include.backup.dr.cockpit.backup.backup_detail`."""
    return _ENV.get_template("dr_backup.html.j2").render(
        d=detail, root=where.root, fields=_manifest_lines(detail["manifest"]), duration=_duration
    )


def add_cockpit_routes(app: FastAPI, deps: list[Any], mon: Monitor, cp: Cockpit) -> None:
    """``GET /source/{source}``, ``GET /backup/{source}/{backup_id}`` and its JSON twin
    ``GET /api/backups/{source}/{backup_id}`` (404 naming what is unknown)."""

    def _config(refresh: bool) -> Snapshot:
        snap = mon.snapshot(refresh=refresh)
        if snap.config is None:
            raise HTTPException(503, snap.error or "the backup config cannot be loaded")
        return snap

    def _detail(request: Request, source: str, backup_id: str, refresh: bool) -> dict[str, Any]:
        snap = _config(refresh)
        try:
            with mon.serving(snap):
                detail = cp.backup(snap.config, source, backup_id, refresh)
        except BackupNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        if not web_auth.audit_allowed(request):  # dr.audit_roles: not this user's
            detail.update(audit=[], audit_hidden=web_auth.AUDIT_HIDDEN)
        return detail

    @app.get("/source/{source}", response_class=HTMLResponse, dependencies=deps)
    def source_page(request: Request, source: str, refresh: bool = False) -> HTMLResponse:
        days = _days(request)
        snap = _config(refresh)
        if source not in snap.config.sources:
            known = ", ".join(snap.config.sources)
            raise HTTPException(404, f"no source named {source!r} in the config; known: {known}")
        audit_ok = web_auth.audit_allowed(request)
        with mon.serving(snap):
            html = render_source(cp, snap, source, Where.of(request), days, refresh, audit_ok)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/backup/{source}/{backup_id}", response_class=HTMLResponse, dependencies=deps)
    def backup_page(request: Request, source: str, backup_id: str, refresh: bool = False) -> HTMLResponse:
        html = render_backup(_detail(request, source, backup_id, refresh), Where.of(request))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/backups/{source}/{backup_id}", dependencies=deps)
    def backup_json(request: Request, source: str, backup_id: str, refresh: bool = False) -> JSONResponse:
        return JSONResponse(_detail(request, source, backup_id, refresh))


def render_denied(detail: Any) -> str:
    """The page a browser gets for a 401/403: log in to Airflow first."""
    return _ENV.get_template("dr_denied.html.j2").render(detail=detail)


# --- the app ---------------------------------------------------------------------------


def create_app(*, require_auth: bool = False, monitor: Monitor | None = None) -> FastAPI:  # noqa: C901
    """The DR Management app. ``require_auth`` adds Airflow's auth dependency to every
    route except ``/api/health``; it needs the api-server's auth manager."""
    mon = monitor or Monitor()
    # Route permissions through the auth manager, narrowed by the dr role lists and
    # recorded in the audit trail (dr/web_auth.py): ``deps`` for DR figures, ``audit_deps``
    # for the audit trail.
    deps = [web_auth.requires("read", mon._load)] if require_auth else []
    audit_deps = [web_auth.requires("audit", mon._load)] if require_auth else []
    app = FastAPI(
        title="DR Management",
        description="Backup and disaster-recovery figures: RPO/RTO, success rates, storage, DR tests.",
        # FastAPI would serve /openapi.json, /docs and /redoc outside the routes' auth
        # dependency: none of them here; the schema is at /api/openapi.json, behind it.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.monitor = mon
    _compile_templates()
    cockpit = app.state.cockpit = Cockpit(mon.backups)
    recent_audit = audit_web.RecentAudit()
    audit_web.add_routes(app, audit_deps, mon._load)  # GET /api/audit

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Any:
        wants_html = "/api/" not in request.url.path and "text/html" in request.headers.get("accept", "")
        if wants_html and exc.status_code in (401, 403):
            return HTMLResponse(render_denied(exc.detail), status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    def _report_or_503(refresh: bool) -> Snapshot:
        snap = mon.snapshot(refresh=refresh)
        if snap.report is None:
            raise HTTPException(503, snap.error or "no figures")
        return snap

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/api/openapi.json", dependencies=deps, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/", response_class=HTMLResponse, dependencies=deps)
    def page(request: Request, refresh: bool = False) -> HTMLResponse:
        # No collector passes while the page is built: each would walk every loaded record
        # again (at 100,000 backups they were 40 % of the page); one pass after it suffices.
        with gc_paused():
            snap = mon.snapshot(refresh=refresh)
            trail = recent_audit.rows(snap.config, refresh) if snap.config is not None else None
            if not web_auth.audit_allowed(request):  # dr.audit_roles: not this user's
                trail = ([], [web_auth.AUDIT_HIDDEN])
            with mon.serving(snap):
                parts = cockpit_context(cockpit, snap, Where.of(request), _days(request), refresh=refresh,
                                        audit_ok=web_auth.audit_allowed(request))  # fmt: skip
            html = render_page(snap, audit=trail, cockpit=parts)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/metrics", dependencies=deps)
    def metrics(
        refresh: bool = False,
        start_date: str | None = Query(None, description="ISO date/datetime: adds a 'period' section"),
        end_date: str | None = Query(None, description="ISO date (inclusive) or datetime"),
    ) -> JSONResponse:
        period = parse_period(start_date, end_date)  # a bad date: 422 before any work
        snap = mon.snapshot(refresh=refresh)
        if snap.report is None:
            return JSONResponse({"error": snap.error or "no figures"}, status_code=503)
        body = snap.report.to_json()
        body["summary"] = summarise(snap)
        if start_date or end_date:
            rows, problems = mon.backups(refresh=refresh)
            chosen = [r for r in rows if period.holds(r)]
            body["period"] = {
                "start_date": start_date,
                "end_date": end_date,
                "sources": period_metrics(chosen),
                "problems": problems,
            }
        return JSONResponse(body)

    @app.get("/api/metrics/violations", dependencies=deps)
    def violations(refresh: bool = False) -> JSONResponse:
        try:
            snap = _report_or_503(refresh)
        except HTTPException as exc:
            return JSONResponse({"error": exc.detail}, status_code=503)
        data = snap.report.to_json()  # type: ignore[union-attr]
        summary = summarise(snap)
        return JSONResponse(
            {
                "generated_at": data["generated_at"],
                "alerts": data["alerts"],
                "rpo_violations": summary["rpo_violations"],
                "rto_violations": summary["rto_violations"],
                "issues": data["issues"],
            }
        )

    @app.get("/api/metrics/success-rate", dependencies=deps)
    def success_rate(refresh: bool = False) -> JSONResponse:
        try:
            snap = _report_or_503(refresh)
        except HTTPException as exc:
            return JSONResponse({"error": exc.detail}, status_code=503)
        data = snap.report.to_json()  # type: ignore[union-attr]
        per = {
            n: {
                "backups": s["backups_count"],
                "verified": s["verified_count"],
                "failed_runs": s["failed_runs_count"],
                "success_rate": s["success_rate"],  # verified over backups + failed runs
                "last_good_backup_id": s["last_good_backup_id"],
                "rpo_ok": s["rpo_ok"],
            }
            for n, s in data["sources"].items()
        }
        summary = summarise(snap)
        return JSONResponse(
            {"generated_at": data["generated_at"], "success_rate": summary["success_rate"], "sources": per}
        )

    @app.get("/api/backups", dependencies=deps)
    def backups(
        source: str | None = None,
        type: str | None = Query(None, description="FULL | INCREMENTAL | TRANSACTION_LOG | SCHEMA"),  # noqa: A002
        latest: bool = False,
        verified: bool | None = None,
        start_date: str | None = None,
        end_date: str | None = None,
        refresh: bool = False,
        limit: str | None = Query(None, description=f"rows per page, 1..{paging.MAX_LIMIT} (default: all)"),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
        since: str | None = Query(None, description="only backups started at or after (ISO)"),
    ) -> JSONResponse:
        period = parse_period(start_date, end_date)  # a bad date: 422 before any work
        # Paging and ``since``: 400 naming the parameter, before any work.
        page_size, after = paging.parse_limit(limit), paging.parse_cursor(cursor)
        since_at = paging.parse_since(since)
        wanted_type = paging.parse_type(type, (t.value for t in BackupType))
        try:
            rows, problems = mon.backups(refresh=refresh)
        except Exception as exc:  # noqa: BLE001 - config cannot be loaded
            return JSONResponse({"error": f"cannot list backups: {redact(exc)}"}, status_code=503)
        chosen = [
            r
            for r in rows
            if (source is None or r["source"] == source)
            and (wanted_type is None or r["type"] == wanted_type)
            and (verified is None or r["verified"] == verified)
            and period.holds(r)
        ]
        if latest:
            newest: dict[str, dict[str, Any]] = {}
            for r in chosen:  # sorted oldest first: the last one per source wins
                newest[r["source"]] = r
            chosen = sorted(newest.values(), key=lambda r: (r["started_at"], r["backup_id"]))
        rows_page, next_cursor = paging.page(chosen, limit=page_size, after=after, since=since_at)
        return JSONResponse(
            {"backups": rows_page, "count": len(rows_page), "next_cursor": next_cursor, "problems": problems}
        )

    add_cockpit_routes(app, deps, mon, cockpit)
    return app


# For tests, ``uvicorn include.backup.dr.web:app``, and serving behind an authenticating
# proxy. The Airflow plugin builds its own with require_auth=True.
app = create_app()
