"""BACKUP_SLOW: a backup in progress (read from the staging area) running much longer than
the schedule's finished backups took — the pure rule, what counts as in progress, and the
monitor round on real LocalTargets and a real staging directory in tmp_path."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup.alerts import callbacks
from include.backup.alerts.notify import AlertKind
from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import BackupConfig
from include.backup.dr import monitor
from include.backup.dr.monitor import StagedBackup, check_slow, in_progress, run_monitor
from include.backup.targets.local import LocalTarget
from include.backup.tasks import DRAFT_NAME, make_backup_id
from tests.unit.test_monitor import NOW, make_config, put_backup, ring, targets

MIN = 60.0


def schedule(cfg: BackupConfig) -> Any:
    return cfg.schedules[0]


def staged(started: datetime, backup_id: str = "hourly-20250310T110000Z-abcdef", **kw: Any) -> StagedBackup:
    return StagedBackup(backup_id, "hourly", f"/staging/{backup_id}", started, kw.pop("phase", "dump"), **kw)


# --- the pure rule ---------------------------------------------------------------------


def test_slow_after_three_times_the_median(tmp_path: Path) -> None:
    sched = schedule(make_config(tmp_path))
    history = [20 * MIN, 30 * MIN, 25 * MIN, 400 * MIN]  # one outlier: the median ignores it
    at_limit = staged(NOW - timedelta(minutes=3 * 27.5))
    alert, usual = check_slow(sched, at_limit, history, NOW)
    assert alert is None and usual == 27.5 * MIN  # exactly 3 × usual is not slow yet
    alert, _ = check_slow(sched, staged(NOW - timedelta(minutes=83)), history, NOW)
    assert alert is not None
    assert alert.kind is AlertKind.BACKUP_SLOW and alert.severity.value == "warning"
    assert alert.subject == "hourly"
    assert alert.key == "BACKUP_SLOW:hourly:hourly-20250310T110000Z-abcdef"
    assert alert.summary == "backup running for 1.4 h, usually 28 min"
    assert alert.facts["backup id"] == "hourly-20250310T110000Z-abcdef"
    assert alert.facts["usual duration"] == "28 min (median of the last 4)"
    assert alert.facts["staging"] == "/staging/hourly-20250310T110000Z-abcdef"
    assert alert.facts["source"] == "events_pg"  # the DR page files it under its source


def test_short_backups_get_the_ten_minute_floor(tmp_path: Path) -> None:
    sched = schedule(make_config(tmp_path))
    history = [30.0, 40.0, 35.0]  # seconds: 3 × would be under two minutes
    assert check_slow(sched, staged(NOW - timedelta(minutes=10)), history, NOW)[0] is None
    alert, _ = check_slow(sched, staged(NOW - timedelta(minutes=11)), history, NOW)
    assert alert is not None and alert.facts["usual duration"].startswith("35 s")


def test_no_verdict_without_enough_history(tmp_path: Path) -> None:
    sched = schedule(make_config(tmp_path))
    assert check_slow(sched, staged(NOW - timedelta(days=1)), [MIN, MIN], NOW) == (None, None)
    assert check_slow(sched, None, [MIN, MIN, MIN], NOW) == (None, MIN)


# --- what counts as in progress --------------------------------------------------------


def test_in_progress_ignores_failed_verified_and_superseded_staging(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    sched = schedule(cfg)
    ts = targets(tmp_path)
    done = put_backup(ts["local"], NOW - timedelta(hours=2))
    done_nas = put_backup(ts["nas"], NOW - timedelta(hours=2))
    held = [("local", done), ("nas", done_nas)]
    old = staged(NOW - timedelta(hours=5), "hourly-20250310T070000Z-aaaaaa")  # before `done`: abandoned
    failed = staged(NOW - timedelta(hours=1), "hourly-20250310T110000Z-bbbbbb", failed=True)
    finished = staged(NOW - timedelta(hours=2), done.backup_id)  # verified at both: cleanup left
    assert in_progress([old, failed, finished], sched, held) is None
    running = staged(NOW - timedelta(minutes=30), "hourly-20250310T113000Z-cccccc")
    assert in_progress([old, failed, finished, running], sched, held) is running
    # Uploaded to one target of two: still in progress.
    half = put_backup(ts["local"], NOW - timedelta(minutes=20), backup_id="hourly-half")
    assert in_progress([staged(NOW - timedelta(minutes=20), "hourly-half")], sched, [*held, ("local", half)])


def write_stage(root: Path, backup_id: str, started: datetime | None) -> Path:
    stage = root / backup_id
    stage.mkdir(parents=True)
    if started is None:
        (stage / "dump.partial").write_bytes(b"...")
        return stage
    draft = Manifest(
        backup_id=backup_id,
        schedule="hourly",
        source="events_pg",
        source_type="postgres",
        backup_type="FULL",
        started_at=started,
        payload_format="pg_dump-custom",
    )
    (stage / DRAFT_NAME).write_bytes(draft.to_json())
    return stage


def test_read_stage_draft_dump_and_failure_marker(tmp_path: Path) -> None:
    started = datetime(2025, 3, 10, 10, 0, tzinfo=UTC)
    with_draft = monitor.read_stage(write_stage(tmp_path, "hourly-20250310T100000Z-abcdef", started))
    assert with_draft is not None
    assert (with_draft.started_at, with_draft.phase, with_draft.schedule) == (started, "encrypt", "hourly")
    # The dump is running: no draft yet, the directory's mtime stands for the start.
    dumping = write_stage(tmp_path, "daily-full-20250310T000000Z-012345", None)
    os.utime(dumping, (started.timestamp(), started.timestamp()))
    read = monitor.read_stage(dumping)
    assert read is not None and read.started_at == started and read.phase == "dump"
    assert read.schedule == "daily-full"
    # Marked failed by the callback; a cleared step writing again un-marks it.
    (dumping / monitor.FAILED_MARKER).write_text("{}")
    os.utime(dumping / "dump.partial", (started.timestamp(), started.timestamp()))
    assert monitor.read_stage(dumping).failed  # type: ignore[union-attr]
    later = datetime.now().timestamp() + 60
    os.utime(dumping / "dump.partial", (later, later))
    assert not monitor.read_stage(dumping).failed  # type: ignore[union-attr]
    os.utime(dumping / "dump.partial", (started.timestamp(), started.timestamp()))
    assert monitor.read_stage(dumping).failed  # type: ignore[union-attr]
    os.utime(dumping, (later, later))  # a cleared upload step touches the staging
    assert not monitor.read_stage(dumping).failed  # type: ignore[union-attr]
    # Not a backup id: ignored.
    (tmp_path / "lost+found").mkdir()
    assert [s.backup_id for s in monitor.staged_backups(tmp_path)] == [
        "daily-full-20250310T000000Z-012345",
        "hourly-20250310T100000Z-abcdef",
    ]


# --- the monitor round -----------------------------------------------------------------


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, LocalTarget]:
    """Three finished, verified hourly backups of 5 minutes at both targets."""
    monkeypatch.setattr(LocalTarget, "free_bytes", lambda self: 1 << 50)
    ts = targets(tmp_path)
    for hours in (3, 2, 1):
        for t in ts.values():
            put_backup(t, NOW - timedelta(hours=hours), minutes=5)
    return ts


def test_monitor_raises_backup_slow_and_clears(tmp_path: Path, history: dict[str, LocalTarget]) -> None:
    cfg = make_config(tmp_path)
    staging = tmp_path / "staging"
    stage = write_stage(staging, "hourly-20250310T113000Z-abcdef", NOW - timedelta(minutes=16))
    report = run_monitor(cfg, NOW, targets=history, keyring=ring(), staging=staging)
    slow = [a for a in report.alerts if a.kind is AlertKind.BACKUP_SLOW]
    assert [a.key for a in slow] == ["BACKUP_SLOW:hourly:hourly-20250310T113000Z-abcdef"]
    st = report.schedules["hourly"]
    assert st.slow and st.running_backup_id == stage.name and st.running_seconds == 16 * 60
    assert st.usual_seconds == 300 and st.running_phase == "encrypt"
    assert report.to_json()["schedules"]["hourly"]["running_since"] == "2025-03-10T11:44:00+00:00"

    # Within the usual time plus the floor: running, not slow.
    report = run_monitor(cfg, NOW - timedelta(minutes=2), targets=history, keyring=ring(), staging=staging)
    assert not report.schedules["hourly"].slow and report.schedules["hourly"].running_backup_id

    # Cleanup removed the staging: nothing in progress, nothing to say.
    for p in stage.iterdir():
        p.unlink()
    stage.rmdir()
    report = run_monitor(cfg, NOW, targets=history, keyring=ring(), staging=staging)
    assert not any(a.kind is AlertKind.BACKUP_SLOW for a in report.alerts)
    assert report.schedules["hourly"].running_backup_id is None


def test_cleared_slow_key_is_forgotten(tmp_path: Path, history: dict[str, LocalTarget]) -> None:
    cfg = make_config(tmp_path)
    staging, state = tmp_path / "staging", tmp_path / "state"
    state.mkdir()
    stage = write_stage(staging, "hourly-20250310T113000Z-abcdef", NOW - timedelta(hours=1))
    mailed: list[str] = []

    def fake_send(alerts, to, conn_id, *, state_path=None):  # type: ignore[no-untyped-def]
        # Record what a real send records, so clear_resolved has something to forget.
        from include.backup.alerts.notify import _locked_state

        with _locked_state(Path(state_path) / "backup-alerts-state.json") as st:
            for a in alerts:
                if a.key not in st:
                    st[a.key] = {"kind": a.kind.value, "last_sent": NOW.isoformat()}
                    mailed.append(a.key)
        return len(alerts)

    for _ in range(2):
        report = run_monitor(cfg, NOW, targets=history, keyring=ring(), staging=staging)
        monitor.notify_report(report, cfg, state_path=state, send_fn=fake_send)
    assert mailed.count("BACKUP_SLOW:hourly:hourly-20250310T113000Z-abcdef") == 1
    (stage / DRAFT_NAME).unlink()
    stage.rmdir()
    report = run_monitor(cfg, NOW, targets=history, keyring=ring(), staging=staging)
    monitor.notify_report(report, cfg, state_path=state, send_fn=fake_send)
    saved = json.loads((state / "backup-alerts-state.json").read_text())["sent"]
    assert not any(k.startswith("BACKUP_SLOW") for k in saved)


def test_failure_callback_marks_the_staging(tmp_path: Path, history: dict[str, LocalTarget]) -> None:
    cfg = make_config(tmp_path).model_copy(update={"staging_dir": str(tmp_path / "staging")})
    logical = datetime(2025, 3, 10, 11, 0, tzinfo=UTC)
    run_id = "scheduled__2025-03-10T11:00:00+00:00"
    backup_id = make_backup_id("hourly", logical, run_id)
    write_stage(tmp_path / "staging", backup_id, NOW - timedelta(hours=1))
    assert run_monitor(cfg, NOW, targets=history, keyring=ring()).schedules["hourly"].slow

    class TI:
        dag_id = "backup__hourly"
        task_id = "upload"
        map_index = 0
        try_number = 3

    ctx = {"ti": TI(), "run_id": run_id, "logical_date": logical, "exception": RuntimeError("S3 down")}
    marker = callbacks.mark_staging_failed(cfg, cfg.schedules[0], ctx)
    assert marker is not None and json.loads(marker.read_text())["task_id"] == "upload"
    report = run_monitor(cfg, NOW, targets=history, keyring=ring())
    assert not report.schedules["hourly"].slow and report.schedules["hourly"].running_backup_id is None


def test_dr_page_lists_the_slow_backup(tmp_path: Path, history: dict[str, LocalTarget]) -> None:
    from include.backup.dr.web import Snapshot, render_page

    cfg = make_config(tmp_path)
    staging = tmp_path / "staging"
    write_stage(staging, "hourly-20250310T113000Z-abcdef", NOW - timedelta(hours=1))
    report = run_monitor(cfg, NOW, targets=history, keyring=ring(), staging=staging)
    page = render_page(Snapshot(0.0, NOW, report=report, rto_hours=4, rpo_hours=1), now=NOW)
    assert "BACKUP_SLOW: backup running for 1.0 h, usually 5 min" in page  # the source's violations
    (slow,) = [a for a in report.to_json()["alerts"] if a["kind"] == "BACKUP_SLOW"]  # the API's list
    assert slow["facts"]["backup id"] == "hourly-20250310T113000Z-abcdef"
