"""The monitor's rules, one pure function per alert kind (docs/alerts.md): each takes what
was read and ``now``, and returns the Alert to raise, or None. RPO_MISSED, BACKUP_LATE,
BACKUP_SLOW, DR_TEST_OVERDUE, KEY_ROTATION_DUE, STORAGE_LOW, TARGET_UNREACHABLE."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import datetime, timedelta

from include.backup.alerts.deadlines import cron_interval  # re-exported by dr.monitor
from include.backup.alerts.notify import Alert, AlertKind, redact
from include.backup.catalog.catalog import as_utc
from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import Schedule
from include.backup.dr.monitor.report import fmt_age, fmt_bytes, fmt_duration, fmt_time
from include.backup.dr.monitor.running import StagedBackup
from include.backup.dr.reports import DRTestReport

GIB = 1 << 30
LATE_FACTOR = 2  # BACKUP_LATE after this many cron intervals without a backup
STORAGE_HEADROOM_BACKUPS = 2  # STORAGE_LOW when there is no room for this many of the largest backup
NO_DATA_TYPES = frozenset({"SCHEMA"})  # backups that do not count towards the RPO
SLOW_FACTOR = 3  # BACKUP_SLOW after this many times the usual duration...
SLOW_FLOOR = timedelta(minutes=10)  # ...and at least this much over it (short backups jitter)
SLOW_MIN_HISTORY = 3  # finished backups of a schedule needed before a run can be called slow


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
