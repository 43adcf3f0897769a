"""What one ``dr_monitor`` round found: per source, schedule and target figures, the key
ring's state, the alerts to mail and what could not be checked (:class:`MonitorReport`),
and how its figures are written for people (``fmt_*``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from include.backup.alerts.notify import Alert, AlertKind
from include.backup.catalog.catalog import as_utc

# The kinds the monitor decides on each round: a key of these kinds that is not raised in a
# round has cleared, and is mailed again as soon as it comes back (notify_report).
MONITOR_KINDS: tuple[AlertKind, ...] = (
    AlertKind.RPO_MISSED,
    AlertKind.BACKUP_LATE,
    AlertKind.DR_TEST_OVERDUE,
    AlertKind.KEY_ROTATION_DUE,
    AlertKind.STORAGE_LOW,
    AlertKind.TARGET_UNREACHABLE,
    AlertKind.BACKUP_SLOW,
)



@dataclass
class TargetStatus:
    name: str
    type: str
    reachable: bool = True
    error: str | None = None
    free_bytes: int | None = None
    min_free_bytes: int | None = None  # the STORAGE_LOW threshold applied
    stored_bytes: int = 0  # sum of stored_size of every backup at the target
    backups: int = 0
    dr_test_reports: int = 0


@dataclass
class ScheduleStatus:
    name: str
    dag_id: str
    source: str
    type: str
    cron: str
    interval_seconds: float | None
    last_backup_id: str | None = None
    last_backup_at: datetime | None = None
    age_hours: float | None = None
    late: bool = False
    running_backup_id: str | None = None  # a backup in progress (from the staging area)
    running_since: datetime | None = None
    running_seconds: float | None = None
    running_phase: str | None = None  # dump | encrypt | checksum | upload/verify
    usual_seconds: float | None = None  # median duration of its recent finished backups
    slow: bool = False


@dataclass
class SourceStatus:
    source: str
    type: str
    monitored: bool  # has an active schedule: RPO and DR tests are checked
    rpo_hours: float
    last_good_backup_id: str | None = None
    last_good_backup_at: datetime | None = None
    last_good_backup_age_hours: float | None = None
    last_good_backup_targets: list[str] = field(default_factory=list)
    last_good_backup_incomplete: bool = False  # marked incomplete at dump time
    rpo_ok: bool = False
    success: bool = False  # the newest backup of the source is verified and within the RPO
    backups_count: int = 0  # distinct backups at any target
    verified_count: int = 0
    # Runs that failed for good and published nothing (their records: run_records.py).
    failed_runs_count: int = 0

    @property
    def success_rate(self) -> float | None:
        """Verified backups over every run: published backups plus failed runs."""
        runs = self.backups_count + self.failed_runs_count
        return round(self.verified_count / runs, 4) if runs else None
    stored_bytes_per_target: dict[str, int] = field(default_factory=dict)
    avg_duration_seconds: float | None = None
    last_backup_duration_seconds: float | None = None
    last_dr_test: dict[str, Any] | None = None  # newest report (any outcome), summarised
    last_successful_dr_test_at: datetime | None = None
    next_dr_test_due: datetime | None = None
    dr_test_overdue: bool = False


@dataclass
class KeyStatus:
    conn_id: str
    active_key_id: str | None = None
    age_days: int | None = None
    rotation_days: int | None = None
    rotation_due: bool = False
    next_rotation_due: date | None = None
    error: str | None = None
    rotated_to: str | None = None  # encryption.auto_rotate made this key active in this run


@dataclass
class MonitorReport:
    generated_at: datetime
    sources: dict[str, SourceStatus] = field(default_factory=dict)
    schedules: dict[str, ScheduleStatus] = field(default_factory=dict)
    targets: dict[str, TargetStatus] = field(default_factory=dict)
    keys: KeyStatus | None = None
    alerts: list[Alert] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)  # could not check something
    # What the round's orphan sweep removed (dr_monitor's task only, not the DR page):
    # target -> source -> {"orphans": [backup ids], "partial_uploads": [keys]}.
    swept: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.alerts and not self.issues

    def to_json(self) -> dict[str, Any]:
        """JSON-able metadata for XCom and the metrics API: names, ids, sizes, times."""
        return _jsonable(
            {
                "generated_at": self.generated_at,
                "ok": self.ok,
                "sources": {k: asdict(v) | {"success_rate": v.success_rate} for k, v in self.sources.items()},
                "schedules": {k: asdict(v) for k, v in self.schedules.items()},
                "targets": {k: asdict(v) for k, v in self.targets.items()},
                "keys": asdict(self.keys) if self.keys else None,
                "alerts": [a.to_json() for a in self.alerts],
                "issues": list(self.issues),
                "swept": self.swept,
            }
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


# --- how figures are written ----------------------------------------------------------


def hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)


def fmt_age(delta: timedelta) -> str:
    s = delta.total_seconds()
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def fmt_time(moment: datetime | None) -> str:
    return as_utc(moment).strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def fmt_duration(seconds: float) -> str:
    """Like :func:`fmt_age`, with seconds for short spans (backups of small sources)."""
    return f"{seconds:.0f} s" if seconds < 120 else fmt_age(timedelta(seconds=seconds))
