"""One ``dr_monitor`` round: read every target (catalog and DR test reports), the staging
area, the key ring and free space, apply the rules (:mod:`.checks`) and return the
:class:`~include.backup.dr.monitor.report.MonitorReport`; :func:`notify_report` mails
its alerts."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from include.backup.alerts.notify import clear_resolved, redact, send
from include.backup.catalog.catalog import as_utc, verified_at
from include.backup.catalog.index import summaries
from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import BackupConfig, Schedule
from include.backup.dr.monitor.checks import (
    NO_DATA_TYPES,
    check_dr_test,
    check_key_rotation,
    check_rpo,
    check_schedule,
    check_slow,
    check_storage,
    check_target_reachable,
    storage_threshold,
)
from include.backup.dr.monitor.report import (
    MONITOR_KINDS,
    KeyStatus,
    MonitorReport,
    ScheduleStatus,
    SourceStatus,
    TargetStatus,
    hours,
)
from include.backup.dr.monitor.running import (
    StagedBackup,
    finished_seconds,
    in_progress,
    staged_backups,
    usual_durations,
)
from include.backup.dr.reports import DRTestReport, list_reports
from include.backup.keyops.store import auto_rotate
from include.backup.run_records import FailedRun, failed_runs, unpublished
from include.backup.runtime import load_keys
from include.backup.schedule_retention import sweep_all_targets
from include.backup.settings import staging_root
from include.backup.targets import build_target
from include.backup.targets.base import Target
from include.backup.wal.archive import with_pushed_wal

log = logging.getLogger(__name__)


def _read_staging(
    config: BackupConfig, staging: str | os.PathLike[str] | None, report: MonitorReport
) -> list[StagedBackup]:
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
    built: dict[str, Target] = {}
    for name, cfg in config.targets.items():
        try:
            built[name] = build_target(name, cfg)
        except Exception as exc:  # noqa: BLE001 - one bad target must not hide the rest
            report.targets[name] = TargetStatus(name, cfg.type, reachable=False, error=redact(exc))
    return built


def _resolve_ring(config: BackupConfig, keyring: Any) -> tuple[Any, Exception | None]:
    """(the key ring, None), or (None, why it could not be loaded)."""
    try:
        if keyring is None:
            return load_keys(config), None
        if callable(keyring) and not hasattr(keyring, "active_id"):
            return keyring(config), None
        return keyring, None
    except Exception as exc:  # noqa: BLE001 - a monitor reports, it does not crash
        return None, exc


def _load_key_status(
    config: BackupConfig, resolved: tuple[Any, Exception | None], today: date, report: MonitorReport
) -> None:
    conn_id = config.encryption.key_conn_id
    status = KeyStatus(conn_id=conn_id, rotation_days=config.encryption.key_rotation_days)
    report.keys = status
    ring, error = resolved
    try:
        if ring is None:
            raise error or ValueError("no key ring")
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
    if alert and config.encryption.auto_rotate:
        rotated, why = auto_rotate(config, today=today)
        if rotated:  # the new key is active from now on: nothing is due any more
            status.rotated_to, status.rotation_due, alert = rotated, False, None
        else:
            report.issues.append(
                f"encryption.auto_rotate is on, but the key ring cannot be rotated from here: {why}; "
                "rotate with: python -m include.backup keys rotate (docs/keys.md)"
            )
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
        # The DR guide's test result on the DR page: what went wrong and the notes (scores).
        "issue_list": list(r.issues[:5]),
        "notes": r.notes[:1000],
    }


def _read_failed_runs(
    config: BackupConfig, name: str, target: Target, keys: Any,
    into: dict[str, list[FailedRun]], report: MonitorReport,
) -> None:  # fmt: skip
    """The failed-run records of every source at one target, for the success rate."""
    for source in config.sources:
        try:
            into.setdefault(source, []).extend(failed_runs(target, source, keys))
        except Exception as exc:  # noqa: BLE001 - the rate without them beats no page
            report.issues.append(f"target '{name}': cannot read the failed runs of {source} ({redact(exc)})")


def run_monitor(  # noqa: C901 - one pass, in the order of the rules above
    config: BackupConfig,
    now: datetime | None = None,
    *,
    targets: Mapping[str, Target] | None = None,
    keyring: Any = None,
    staging: str | os.PathLike[str] | None = None,
    listed: dict[str, list[Manifest]] | None = None,
) -> MonitorReport:
    """Check every source, schedule, target and the key ring; never raises for a target
    or key ring problem (those become alerts or issues).

    ``listed``, when given, receives each reachable target's backups as this pass read
    them (record-only manifests, oldest first), so a caller that also lists them (the DR
    page) does not read every target's catalog index a second time.

    ``targets`` replaces the targets built from the config (tests); ``keyring`` is a
    KeyRing, or a callable ``config -> KeyRing``, instead of loading it the usual way
    ($BACKUP_KEY_FILE, else the ``encryption.key_conn_id`` connection); ``staging``
    replaces the staging root where backups in progress are looked for."""
    now = as_utc(now) if now else datetime.now(UTC)
    report = MonitorReport(generated_at=now)
    staged = _read_staging(config, staging, report)
    built = dict(targets) if targets is not None else _build_targets(config, report)
    # The ring checks the catalog index; without one the listing reads every manifest.
    resolved = _resolve_ring(config, keyring)

    # One pass over each target: its backups and its DR test reports.
    held: dict[str, list[tuple[str, Manifest]]] = {}  # source -> [(target, manifest)]
    dr_reports: dict[str, DRTestReport] = {}  # test_id -> report (copies at several targets)
    failed: dict[str, list[FailedRun]] = {}  # source -> failed-run records (run_records.py)
    for name, target in built.items():
        cfg = config.targets.get(name)
        status = TargetStatus(name, cfg.type if cfg else type(target).__name__)
        report.targets[name] = status
        try:
            manifests = summaries(target, None, resolved[0])  # index records, no file index
            reports = list_reports(target)
            if listed is not None:
                listed[name] = manifests
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
        _read_failed_runs(config, name, target, resolved[0], failed, report)
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
            age_hours=hours(age) if age is not None else None,
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
        st.failed_runs_count = len(unpublished(failed.get(source, []), set(distinct)))
        durations = [d for d in (finished_seconds(m) for m in distinct.values()) if d is not None]
        st.avg_duration_seconds = round(sum(durations) / len(durations), 1) if durations else None
        newest_any = max(distinct.values(), key=lambda m: as_utc(m.started_at), default=None)
        st.last_backup_duration_seconds = finished_seconds(newest_any) if newest_any else None
        good = [distinct[i] for i in verified if distinct[i].backup_type not in NO_DATA_TYPES]
        newest_good = max(good, key=lambda m: as_utc(m.started_at), default=None)
        if newest_good is not None:
            st.last_good_backup_id = newest_good.backup_id
            st.last_good_backup_at = newest_good.started_at
            st.last_good_backup_age_hours = hours(now - as_utc(newest_good.started_at))
            st.last_good_backup_targets = sorted(verified[newest_good.backup_id])
            st.last_good_backup_incomplete = newest_good.incomplete
        # A wal-push source: its RPO is the age of its newest pushed WAL segment.
        newest_good = with_pushed_wal(config, source, newest_good, st, now, resolved[0], built)
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

    _load_key_status(config, resolved, now.date(), report)
    return report


def sweep_targets(
    config: BackupConfig,
    report: MonitorReport,
    *,
    now: datetime | None = None,
    targets: Mapping[str, Target] | None = None,
    keyring: Any = None,
) -> None:
    """``dr_monitor``'s orphan sweep (include/backup/schedule_retention.py): every source
    at every target, at most every few hours per target; what it removed goes into
    ``report.swept`` and the task log. Never raises for a target (logged, tried again).
    With a key ring (``keyring`` as for :func:`run_monitor`) each source's catalog index
    is reconciled with its manifests in the same pass."""
    ring, _ = _resolve_ring(config, keyring)
    swept = sweep_all_targets(
        config, now=now, targets=dict(targets) if targets is not None else None, keys=ring
    )
    report.swept = {t: {src: s.to_json() for src, s in by_source.items()} for t, by_source in swept.items()}
    for target_name, by_source in swept.items():
        for source, s in by_source.items():
            log.info("monitor: orphan sweep at target %s, source %s: %d orphan folder(s) %s, "
                     "%d partial upload(s) %s", target_name, source, len(s.orphans), s.orphans,
                     len(s.partial_uploads), s.partial_uploads)


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
