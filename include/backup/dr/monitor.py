"""What deadline alerts cannot see, checked by the ``dr_monitor`` DAG every 15 minutes.

:func:`run_monitor` reads every target of the config (its catalog and its DR test
reports: the targets alone, not Airflow's database), the key ring's dates and the targets'
free space, and returns a :class:`MonitorReport`: per-source figures for the DR page and
the metrics API, plus the :class:`~include.backup.alerts.notify.Alert` s to mail. The
``check_*`` functions are the pure rules, one per alert kind.

Rules (docs/alerts.md):

- RPO_MISSED (per source with an active schedule): the newest backup *verified* at any
  target, SCHEMA backups excepted (they hold no data), started more than ``dr.rpo_hours``
  ago — or there is none. The age counts from ``started_at``: a dump is a snapshot of the
  source as of its start. Exactly ``rpo_hours`` old is still within the objective.
- BACKUP_LATE (per active schedule): its newest backup at any target (verified or not:
  this is about runs happening) is older than twice the schedule's cron interval (the
  interval between its last two fire times before now), or it never produced one.
- DR_TEST_OVERDUE (per source with an active schedule): the newest *successful* DR test
  report at any target finished more than ``dr.test_frequency_days`` ago, or there is none.
- KEY_ROTATION_DUE: the active key is older than ``encryption.key_rotation_days`` (from
  the key ring's ``created`` dates). A ring that cannot be loaded, or an undated active key,
  is a report issue, not a crash.
- STORAGE_LOW (per target that can tell its free space): free space below
  ``dr.storage_min_free_gb`` GiB, or below twice the largest backup the target holds.
- TARGET_UNREACHABLE (critical, per target): listing the target failed.
- BACKUP_SLOW (warning, per active schedule, :func:`check_slow`): a backup of the schedule
  is in progress and has run longer than ``max(SLOW_FACTOR × usual, usual + SLOW_FLOOR)``
  (3 × and 10 minutes), where *usual* is the median duration of the schedule's newest
  ``SLOW_HISTORY`` (20) finished backups at the targets, and only once there are at least
  ``SLOW_MIN_HISTORY`` (3) of them. A finished backup's duration runs from its
  ``started_at`` to the last ``verified_at`` recorded at its targets (else ``finished_at``),
  the span an in-progress run is measured over too.
  *In progress* is read from the staging area (``settings.staging_root``), not Airflow's
  database: a directory ``<schedule>-<stamp>-<hash>`` whose draft manifest gives
  ``started_at`` (while the dump is still running there is no draft yet: the directory's
  mtime, set when the dump created its partial file, stands for the start). It is *not*
  in progress when the backup is verified at every target of the schedule (only cleanup
  is left), when a later backup of the schedule reached a target (the runs of a schedule
  are serial: this staging was abandoned), or when the failure callback marked it failed
  (``FAILED_MARKER``) and nothing in it was written or touched since. The monitor sees only backups
  staged where it runs: the staging directory must be shared by the workers (the
  docker-compose file mounts one volume), else runs on other workers are invisible. The
  alert clears when the backup finishes (cleanup removes the staging). A finished backup
  that took long raises nothing (it is a backup; the RPO and late rules cover the effect):
  its duration is on the DR page and in the ``backup.run.<schedule>.duration`` metric.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from include.backup.alerts.notify import Alert, AlertKind, clear_resolved, redact, send
from include.backup.catalog.catalog import as_utc, list_backups, verified_at
from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import CRON_PRESETS, BackupConfig, Schedule
from include.backup.dr.reports import DRTestReport, list_reports
from include.backup.targets.base import Target

log = logging.getLogger(__name__)

GIB = 1 << 30
LATE_FACTOR = 2  # BACKUP_LATE after this many cron intervals without a backup
STORAGE_HEADROOM_BACKUPS = 2  # STORAGE_LOW when there is no room for this many of the largest backup
NO_DATA_TYPES = frozenset({"SCHEMA"})  # backups that do not count towards the RPO
SLOW_FACTOR = 3  # BACKUP_SLOW after this many times the usual duration...
SLOW_FLOOR = timedelta(minutes=10)  # ...and at least this much over it (short backups jitter)
SLOW_MIN_HISTORY = 3  # finished backups of a schedule needed before a run can be called slow
SLOW_HISTORY = 20  # the newest this many finished backups give the usual duration
# Written into a run's staging by the backup failure callback: the run is over, not slow.
FAILED_MARKER = "run.failed.json"
# Staging directories are named by the backup id: <schedule>-<YYYYmmddTHHMMSSZ>-<6 hex>.
_STAGE_RE = re.compile(r"^(?P<schedule>.+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<suffix>[0-9a-f]{6})$")

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


# --- report structures -----------------------------------------------------------------


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
    rpo_ok: bool = False
    success: bool = False  # the newest backup of the source is verified and within the RPO
    backups_count: int = 0  # distinct backups at any target
    verified_count: int = 0
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


@dataclass
class MonitorReport:
    generated_at: datetime
    sources: dict[str, SourceStatus] = field(default_factory=dict)
    schedules: dict[str, ScheduleStatus] = field(default_factory=dict)
    targets: dict[str, TargetStatus] = field(default_factory=dict)
    keys: KeyStatus | None = None
    alerts: list[Alert] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)  # could not check something

    @property
    def ok(self) -> bool:
        return not self.alerts and not self.issues

    def to_json(self) -> dict[str, Any]:
        """JSON-able metadata for XCom and the metrics API: names, ids, sizes, times."""
        return _jsonable(
            {
                "generated_at": self.generated_at,
                "ok": self.ok,
                "sources": {k: asdict(v) for k, v in self.sources.items()},
                "schedules": {k: asdict(v) for k, v in self.schedules.items()},
                "targets": {k: asdict(v) for k, v in self.targets.items()},
                "keys": asdict(self.keys) if self.keys else None,
                "alerts": [a.to_json() for a in self.alerts],
                "issues": list(self.issues),
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


# --- helpers ---------------------------------------------------------------------------


def _hours(delta: timedelta) -> float:
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


def cron_interval(cron: str, now: datetime) -> timedelta:
    """The gap between the schedule's last two fire times before ``now``."""
    from croniter import croniter  # type: ignore[import-untyped]

    it = croniter(CRON_PRESETS.get(cron, cron), as_utc(now))
    last = it.get_prev(datetime)
    before = it.get_prev(datetime)
    return last - before


def _duration(m: Manifest) -> float | None:
    if m.finished_at is None:
        return None
    return max(0.0, (as_utc(m.finished_at) - as_utc(m.started_at)).total_seconds())


def fmt_duration(seconds: float) -> str:
    """Like :func:`fmt_age`, with seconds for short spans (backups of small sources)."""
    return f"{seconds:.0f} s" if seconds < 120 else fmt_age(timedelta(seconds=seconds))


# --- backups in progress (the staging area) --------------------------------------------


@dataclass
class StagedBackup:
    """A backup run's staging directory, as the monitor reads it."""

    backup_id: str
    schedule: str
    path: str
    started_at: datetime
    phase: str  # dump | encrypt | checksum | upload/verify
    failed: bool = False  # marked by the failure callback, nothing written since


def _stage_phase(names: set[str]) -> str:
    from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME
    from include.backup.tasks import DRAFT_NAME

    if MANIFEST_NAME in names:
        return "upload/verify"
    if PAYLOAD_NAME + ".partial" in names:
        return "encrypt"
    if PAYLOAD_NAME in names:
        return "checksum"
    return "encrypt" if DRAFT_NAME in names else "dump"


def read_stage(path: Path) -> StagedBackup | None:
    """The staged backup in ``path``, or None when the name is not a backup id's."""
    from include.backup.tasks import DRAFT_NAME

    match = _STAGE_RE.match(path.name)
    if match is None or not path.is_dir():
        return None
    entries = {p.name: p.stat().st_mtime for p in path.iterdir()}
    started: datetime | None = None
    if DRAFT_NAME in entries:
        try:
            started = as_utc(Manifest.from_json((path / DRAFT_NAME).read_bytes()).started_at)
        except ValueError:
            started = None  # half-written by hand; fall back on the directory's time
    if started is None:
        # The dump is still running (it writes the draft when it ends); the directory was
        # last changed when the dump created its partial file in it, i.e. when it started.
        started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    marked = entries.pop(FAILED_MARKER, None)
    # A failed run whose step was cleared and runs again writes newer files, or touches
    # the directory (the steps after the dump do, to keep it from looking stale).
    failed = marked is not None and all(t <= marked for t in [*entries.values(), path.stat().st_mtime])
    return StagedBackup(
        backup_id=path.name,
        schedule=match.group("schedule"),
        path=str(path),
        started_at=started,
        phase=_stage_phase(set(entries)),
        failed=failed,
    )


def staged_backups(root: Path) -> list[StagedBackup]:
    """Every backup staged under ``root`` (none when it does not exist). A directory that
    disappears while it is read (its run's cleanup) is skipped."""
    if not root.is_dir():
        return []
    found: list[StagedBackup] = []
    for path in sorted(root.iterdir()):
        try:
            staged = read_stage(path)
        except OSError:
            continue
        if staged is not None:
            found.append(staged)
    return found


def run_seconds(copies: Iterable[Manifest]) -> float | None:
    """How long a finished backup took end to end: from ``started_at`` to the last
    successful verification recorded at its targets (``copies``: its manifest at each), or
    to ``finished_at`` (the checksum step) when none is recorded."""
    copies = list(copies)
    if not copies:
        return None
    started = as_utc(copies[0].started_at)
    ends = [as_utc(v.verified_at) for m in copies for v in m.verification.values() if v.ok and v.verified_at]
    if ends:
        return max(0.0, (max(ends) - started).total_seconds())
    return _duration(copies[0])


def in_progress(
    staged: Iterable[StagedBackup],
    schedule: Schedule,
    held: Iterable[tuple[str, Manifest]],
) -> StagedBackup | None:
    """The schedule's backup in progress: the newest staged one that is not marked
    failed, not yet verified at every target of the schedule, and not superseded by a
    later backup of the schedule at a target. ``held``: (target, manifest) of the schedule."""
    held = list(held)
    verified: dict[str, set[str]] = {}
    for tname, m in held:
        if verified_at(m, tname):
            verified.setdefault(m.backup_id, set()).add(tname)
    newest_done = max((as_utc(m.started_at) for _, m in held), default=None)
    candidates = [
        s
        for s in staged
        if s.schedule == schedule.name
        and not s.failed
        and not set(schedule.targets) <= verified.get(s.backup_id, set())
        and (newest_done is None or s.started_at >= newest_done or s.backup_id in verified)
    ]
    return max(candidates, key=lambda s: s.started_at, default=None)


def usual_durations(held: Iterable[tuple[str, Manifest]], *, exclude: str | None = None) -> list[float]:
    """End-to-end durations (:func:`run_seconds`) of the newest ``SLOW_HISTORY`` finished
    backups among ``held`` ((target, manifest) pairs of one schedule), newest first."""
    by_id: dict[str, list[Manifest]] = {}
    for _, m in held:
        if m.backup_id != exclude and m.finished_at is not None:
            by_id.setdefault(m.backup_id, []).append(m)
    newest = sorted(by_id.values(), key=lambda c: as_utc(c[0].started_at), reverse=True)[:SLOW_HISTORY]
    return [d for d in (run_seconds(c) for c in newest) if d is not None]


# --- the checks (pure) -----------------------------------------------------------------


def check_rpo(
    source: str,
    newest_good: Manifest | None,
    rpo_hours: float,
    now: datetime,
    *,
    targets: Iterable[str] = (),
    dag_id: str | None = None,
) -> Alert | None:
    """RPO_MISSED when the newest verified backup of ``source`` is older than the RPO
    (exactly ``rpo_hours`` is still met), or there is none."""
    rpo = timedelta(hours=rpo_hours)
    facts = {"source": source, "RPO": f"{rpo_hours:g} h"}
    if newest_good is None:
        facts.update({"last good backup": "none (no verified backup at any target)"})
        return Alert(
            AlertKind.RPO_MISSED,
            source,
            summary=f"no verified backup of {source} at any target (RPO {rpo_hours:g} h)",
            facts=facts,
            dag_id=dag_id,
        )
    age = now - as_utc(newest_good.started_at)
    if age <= rpo:
        return None
    facts.update(
        {
            "last good backup": newest_good.backup_id,
            "taken at": fmt_time(newest_good.started_at),
            "age": fmt_age(age),
            "over the RPO by": fmt_age(age - rpo),
            "schedule": newest_good.schedule,
            "held by targets": ", ".join(targets) or "-",
        }
    )
    return Alert(
        AlertKind.RPO_MISSED,
        source,
        summary=f"last good backup is {fmt_age(age)} old, RPO {rpo_hours:g} h",
        facts=facts,
        dag_id=dag_id,
    )


def check_schedule(
    schedule: Schedule, newest: Manifest | None, now: datetime
) -> tuple[Alert | None, timedelta]:
    """BACKUP_LATE when the schedule's newest backup is older than LATE_FACTOR × its cron
    interval, or it has none. Returns (alert, interval)."""
    interval = cron_interval(schedule.cron, now)
    allowed = LATE_FACTOR * interval
    facts = {
        "schedule": schedule.name,
        "source": schedule.source,
        "cron": schedule.cron,
        "interval": fmt_age(interval),
    }
    if newest is None:
        facts["last backup"] = "none at any target"
        return (
            Alert(
                AlertKind.BACKUP_LATE,
                schedule.name,
                summary=f"schedule {schedule.name} has no backup at any target yet",
                facts=facts,
                dag_id=schedule.dag_id,
            ),
            interval,
        )
    age = now - as_utc(newest.started_at)
    if age <= allowed:
        return None, interval
    facts.update(
        {
            "last backup": newest.backup_id,
            "taken at": fmt_time(newest.started_at),
            "age": fmt_age(age),
            "late after": f"{fmt_age(allowed)} ({LATE_FACTOR} intervals)",
        }
    )
    return (
        Alert(
            AlertKind.BACKUP_LATE,
            schedule.name,
            summary=f"last backup {fmt_age(age)} ago, expected every {fmt_age(interval)}",
            facts=facts,
            dag_id=schedule.dag_id,
        ),
        interval,
    )


def slow_after(usual_seconds: float) -> float:
    """Seconds after which a run whose usual duration is ``usual_seconds`` is slow."""
    return max(SLOW_FACTOR * usual_seconds, usual_seconds + SLOW_FLOOR.total_seconds())


def check_slow(
    schedule: Schedule,
    running: StagedBackup | None,
    history_seconds: list[float],
    now: datetime,
) -> tuple[Alert | None, float | None]:
    """BACKUP_SLOW when ``running`` (the schedule's backup in progress) has run longer than
    :func:`slow_after` the median of ``history_seconds`` (durations of its finished
    backups), given at least ``SLOW_MIN_HISTORY`` of them. Returns (alert, usual seconds)."""
    if len(history_seconds) < SLOW_MIN_HISTORY:
        return None, None
    usual = float(statistics.median(history_seconds))
    if running is None:
        return None, usual
    elapsed = (now - as_utc(running.started_at)).total_seconds()
    allowed = slow_after(usual)
    if elapsed <= allowed:
        return None, usual
    facts = {
        "schedule": schedule.name,
        "source": schedule.source,
        "backup id": running.backup_id,
        "started at": fmt_time(running.started_at),
        "running for": fmt_duration(elapsed),
        "usual duration": f"{fmt_duration(usual)} (median of the last {len(history_seconds)})",
        "slow after": fmt_duration(allowed),
        "step (from the staging)": running.phase,
        "staging": running.path,
    }
    return (
        Alert(
            AlertKind.BACKUP_SLOW,
            schedule.name,
            summary=f"backup running for {fmt_duration(elapsed)}, usually {fmt_duration(usual)}",
            facts=facts,
            key=f"{AlertKind.BACKUP_SLOW.value}:{schedule.name}:{running.backup_id}",
            dag_id=schedule.dag_id,
        ),
        usual,
    )


def check_dr_test(
    source: str,
    last_success: DRTestReport | None,
    frequency_days: int,
    now: datetime,
    *,
    last_any: DRTestReport | None = None,
) -> tuple[Alert | None, datetime | None]:
    """DR_TEST_OVERDUE when the newest successful DR test of ``source`` is older than
    ``frequency_days`` (or there is none). Returns (alert, next due time)."""
    period = timedelta(days=frequency_days)
    facts = {"source": source, "test every": f"{frequency_days} days"}
    if last_any is not None and last_any is not last_success:
        facts["last test (any outcome)"] = (
            f"{last_any.test_id} {last_any.test_type} "
            f"{'succeeded' if last_any.success else 'FAILED'} {fmt_time(last_any.started_at)}"
        )
    if last_success is None:
        facts["last successful test"] = "none"
        return (
            Alert(
                AlertKind.DR_TEST_OVERDUE,
                source,
                summary=f"no successful DR test of {source} on record (due every {frequency_days} days)",
                facts=facts,
                dag_id="dr_test",
            ),
            None,
        )
    done = as_utc(last_success.finished_at or last_success.started_at)
    due = done + period
    if now <= due:
        return None, due
    facts.update(
        {
            "last successful test": f"{last_success.test_id} ({last_success.test_type})",
            "finished at": fmt_time(done),
            "overdue by": fmt_age(now - due),
        }
    )
    return (
        Alert(
            AlertKind.DR_TEST_OVERDUE,
            source,
            summary=f"last successful DR test {fmt_age(now - done)} ago, due every {frequency_days} days",
            facts=facts,
            dag_id="dr_test",
        ),
        due,
    )


def check_key_rotation(
    active_key_id: str, age_days: int | None, rotation_days: int, *, conn_id: str = ""
) -> Alert | None:
    """KEY_ROTATION_DUE when the active key is older than ``rotation_days``."""
    if age_days is None or age_days <= rotation_days:
        return None
    facts = {
        "active key id": active_key_id,
        "key age": f"{age_days} days",
        "rotate every": f"{rotation_days} days",
        "overdue by": f"{age_days - rotation_days} days",
    }
    if conn_id:
        facts["keys connection"] = conn_id
    return Alert(
        AlertKind.KEY_ROTATION_DUE,
        active_key_id,
        summary=f"active key {active_key_id} is {age_days} days old (rotate every {rotation_days})",
        facts=facts,
    )


def storage_threshold(min_free_gb: float, largest_backup: int) -> int:
    return max(int(min_free_gb * GIB), STORAGE_HEADROOM_BACKUPS * largest_backup)


def check_storage(
    target_name: str, free_bytes: int | None, min_free_bytes: int, *, largest_backup: int = 0
) -> Alert | None:
    """STORAGE_LOW when the target reports less free space than ``min_free_bytes``."""
    if free_bytes is None or free_bytes >= min_free_bytes:
        return None
    facts = {
        "target": target_name,
        "free": fmt_bytes(free_bytes),
        "threshold": fmt_bytes(min_free_bytes),
    }
    if largest_backup:
        facts["largest backup held"] = fmt_bytes(largest_backup)
    return Alert(
        AlertKind.STORAGE_LOW,
        target_name,
        summary=(
            f"{fmt_bytes(free_bytes)} free at target {target_name}, "
            f"threshold {fmt_bytes(min_free_bytes)}"
        ),
        facts=facts,
    )


def check_target_reachable(target_name: str, target_type: str, error: str | None) -> Alert | None:
    if error is None:
        return None
    return Alert(
        AlertKind.TARGET_UNREACHABLE,
        target_name,
        summary=f"cannot list target {target_name} ({target_type})",
        facts={"target": target_name, "type": target_type, "error": redact(error)[:500]},
    )


# --- gathering -------------------------------------------------------------------------


def _read_staging(
    config: BackupConfig, staging: str | os.PathLike[str] | None, report: MonitorReport
) -> list[StagedBackup]:
    from include.backup.settings import staging_root

    root = Path(staging) if staging is not None else staging_root(config)
    try:
        return staged_backups(root)
    except OSError as exc:
        report.issues.append(f"staging {root}: cannot list backups in progress ({redact(exc)})")
        return []


def _check_running(
    schedule: Schedule,
    staged: list[StagedBackup],
    source_copies: list[tuple[str, Manifest]],
    now: datetime,
    report: MonitorReport,
) -> None:
    """The schedule's backup in progress into its ScheduleStatus, and BACKUP_SLOW."""
    mine = [(t, m) for t, m in source_copies if m.schedule == schedule.name]
    running = in_progress(staged, schedule, mine)
    history = usual_durations(mine, exclude=running.backup_id if running else None)
    alert, usual = check_slow(schedule, running, history, now)
    status = report.schedules[schedule.name]
    status.usual_seconds = round(usual, 1) if usual is not None else None
    status.slow = alert is not None
    if running is not None:
        status.running_backup_id = running.backup_id
        status.running_since = running.started_at
        status.running_seconds = round(max(0.0, (now - as_utc(running.started_at)).total_seconds()), 1)
        status.running_phase = running.phase
    if alert:
        report.alerts.append(alert)


def _build_targets(config: BackupConfig, report: MonitorReport) -> dict[str, Target]:
    from include.backup.targets import build_target

    built: dict[str, Target] = {}
    for name, cfg in config.targets.items():
        try:
            built[name] = build_target(name, cfg)
        except Exception as exc:  # noqa: BLE001 - one bad target must not hide the rest
            report.targets[name] = TargetStatus(name, cfg.type, reachable=False, error=redact(exc))
    return built


def _load_key_status(config: BackupConfig, keyring: Any, today: date, report: MonitorReport) -> None:
    conn_id = config.encryption.key_conn_id
    status = KeyStatus(conn_id=conn_id, rotation_days=config.encryption.key_rotation_days)
    report.keys = status
    try:
        if keyring is None:
            from include.backup.tasks import load_keys

            ring = load_keys(config)
        elif callable(keyring) and not hasattr(keyring, "active_id"):
            ring = keyring(config)
        else:
            ring = keyring
        status.active_key_id = ring.active_id
        status.age_days = ring.age_days(today=today)
        created = ring.created(ring.active_id)
    except Exception as exc:  # noqa: BLE001 - a monitor reports, it does not crash
        status.error = redact(exc)
        report.issues.append(f"encryption keys: cannot load the key ring ({status.error})")
        return
    if created is None:
        report.issues.append(
            f"encryption keys: active key {status.active_key_id!r} has no created date; add "
            '"created": {"<id>": "YYYY-MM-DD"} to the keys connection so rotation can be tracked'
        )
        return
    status.next_rotation_due = created + timedelta(days=config.encryption.key_rotation_days)
    alert = check_key_rotation(
        status.active_key_id, status.age_days, config.encryption.key_rotation_days, conn_id=conn_id
    )
    status.rotation_due = alert is not None
    if alert:
        report.alerts.append(alert)


def _summarise_report(r: DRTestReport) -> dict[str, Any]:
    return {
        "test_id": r.test_id,
        "test_type": r.test_type,
        "target_environment": r.target_environment,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "success": r.success,
        "measured_rto_seconds": r.measured_rto_seconds,
        "measured_rpo_seconds": r.measured_rpo_seconds,
        "issues": len(r.issues),
    }


def run_monitor(  # noqa: C901 - one pass, in the order of the rules above
    config: BackupConfig,
    now: datetime | None = None,
    *,
    targets: Mapping[str, Target] | None = None,
    keyring: Any = None,
    staging: str | os.PathLike[str] | None = None,
) -> MonitorReport:
    """Check every source, schedule, target and the key ring; never raises for a target
    or key ring problem (those become alerts or issues).

    ``targets`` replaces the targets built from the config (tests); ``keyring`` is a
    KeyRing, or a callable ``config -> KeyRing``, instead of loading it the usual way
    ($BACKUP_KEY_FILE, else the ``encryption.key_conn_id`` connection); ``staging``
    replaces the staging root where backups in progress are looked for."""
    now = as_utc(now) if now else datetime.now(UTC)
    report = MonitorReport(generated_at=now)
    staged = _read_staging(config, staging, report)
    built = dict(targets) if targets is not None else _build_targets(config, report)

    # One pass over each target: its backups and its DR test reports.
    held: dict[str, list[tuple[str, Manifest]]] = {}  # source -> [(target, manifest)]
    dr_reports: dict[str, DRTestReport] = {}  # test_id -> report (copies at several targets)
    for name, target in built.items():
        cfg = config.targets.get(name)
        status = TargetStatus(name, cfg.type if cfg else type(target).__name__)
        report.targets[name] = status
        try:
            manifests = list_backups(target)
            reports = list_reports(target)
        except Exception as exc:  # noqa: BLE001 - TargetError, SDK errors, timeouts
            status.reachable = False
            status.error = redact(exc)
            continue
        status.backups = len(manifests)
        status.stored_bytes = sum(m.stored_size for m in manifests)
        status.dr_test_reports = len(reports)
        for m in manifests:
            held.setdefault(m.source, []).append((name, m))
        for r in reports:
            dr_reports.setdefault(r.test_id, r)
        try:
            status.free_bytes = target.free_bytes()
        except Exception as exc:  # noqa: BLE001 - free space is best effort
            report.issues.append(f"target '{name}': cannot read free space ({redact(exc)})")
        largest = max((m.stored_size for m in manifests), default=0)
        status.min_free_bytes = storage_threshold(config.dr.storage_min_free_gb, largest)
        alert = check_storage(name, status.free_bytes, status.min_free_bytes, largest_backup=largest)
        if alert:
            report.alerts.append(alert)

    for name, status in report.targets.items():
        alert = check_target_reachable(name, status.type, status.error if not status.reachable else None)
        if alert:
            report.alerts.append(alert)

    # Schedules.
    for schedule in config.schedules:
        if not schedule.active:
            continue
        mine = [m for _, m in held.get(schedule.source, []) if m.schedule == schedule.name]
        newest = max(mine, key=lambda m: as_utc(m.started_at), default=None)
        try:
            alert, interval = check_schedule(schedule, newest, now)
        except Exception as exc:  # noqa: BLE001 - a cron croniter cannot step through
            report.issues.append(f"schedule '{schedule.name}': cannot compute its interval ({exc})")
            continue
        age = now - as_utc(newest.started_at) if newest else None
        report.schedules[schedule.name] = ScheduleStatus(
            name=schedule.name,
            dag_id=schedule.dag_id,
            source=schedule.source,
            type=schedule.type.value,
            cron=schedule.cron,
            interval_seconds=interval.total_seconds(),
            last_backup_id=newest.backup_id if newest else None,
            last_backup_at=newest.started_at if newest else None,
            age_hours=_hours(age) if age is not None else None,
            late=alert is not None,
        )
        if alert:
            report.alerts.append(alert)
        _check_running(schedule, staged, held.get(schedule.source, []), now, report)

    # Sources.
    active_sources = {s.source for s in config.schedules if s.active}
    for source, source_cfg in config.sources.items():
        copies = held.get(source, [])
        st = SourceStatus(
            source=source,
            type=source_cfg.type,
            monitored=source in active_sources,
            rpo_hours=config.dr.rpo_hours,
        )
        report.sources[source] = st
        distinct: dict[str, Manifest] = {}
        verified: dict[str, list[str]] = {}
        for tname, m in copies:
            distinct.setdefault(m.backup_id, m)
            st.stored_bytes_per_target[tname] = st.stored_bytes_per_target.get(tname, 0) + m.stored_size
            if verified_at(m, tname):
                verified.setdefault(m.backup_id, []).append(tname)
        st.backups_count = len(distinct)
        st.verified_count = len(verified)
        durations = [d for d in (_duration(m) for m in distinct.values()) if d is not None]
        st.avg_duration_seconds = round(sum(durations) / len(durations), 1) if durations else None
        newest_any = max(distinct.values(), key=lambda m: as_utc(m.started_at), default=None)
        st.last_backup_duration_seconds = _duration(newest_any) if newest_any else None
        good = [distinct[i] for i in verified if distinct[i].backup_type not in NO_DATA_TYPES]
        newest_good = max(good, key=lambda m: as_utc(m.started_at), default=None)
        if newest_good is not None:
            st.last_good_backup_id = newest_good.backup_id
            st.last_good_backup_at = newest_good.started_at
            st.last_good_backup_age_hours = _hours(now - as_utc(newest_good.started_at))
            st.last_good_backup_targets = sorted(verified[newest_good.backup_id])
        dag_id = next((s.dag_id for s in config.schedules if s.source == source and s.active), None)
        rpo_alert = check_rpo(
            source,
            newest_good,
            config.dr.rpo_hours,
            now,
            targets=st.last_good_backup_targets,
            dag_id=dag_id,
        )
        st.rpo_ok = newest_good is not None and rpo_alert is None
        st.success = st.rpo_ok and newest_any is not None and newest_any.backup_id in verified

        tests = sorted((r for r in dr_reports.values() if r.source == source), key=lambda r: r.started_at)
        last_any = tests[-1] if tests else None
        last_success = next((r for r in reversed(tests) if r.success), None)
        st.last_dr_test = _summarise_report(last_any) if last_any else None
        if last_success:
            st.last_successful_dr_test_at = last_success.finished_at or last_success.started_at
        dr_alert, due = check_dr_test(
            source, last_success, config.dr.test_frequency_days, now, last_any=last_any
        )
        st.next_dr_test_due = due
        st.dr_test_overdue = dr_alert is not None

        if st.monitored:
            if rpo_alert:
                report.alerts.append(rpo_alert)
            if dr_alert:
                report.alerts.append(dr_alert)

    _load_key_status(config, keyring, now.date(), report)
    return report


def notify_report(
    report: MonitorReport,
    config: BackupConfig,
    *,
    state_path: str | os.PathLike[str] | None = None,
    send_fn: Callable[..., int] = send,
) -> int:
    """Mail the report's alerts (deduplicated) to ``dr.notification_emails`` through
    ``dr.smtp_conn_id``, and forget violations that cleared, so that one that comes back
    is mailed at once. Returns the number of mails sent."""
    sent = send_fn(
        report.alerts,
        list(config.dr.notification_emails),
        config.dr.smtp_conn_id,
        state_path=state_path,
    )
    clear_resolved((a.key for a in report.alerts), MONITOR_KINDS, state_path=state_path)
    return sent
