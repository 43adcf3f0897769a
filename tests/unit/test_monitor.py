"""dr_monitor checks: RPO at the boundary, late schedules, overdue DR tests, key rotation,
low storage, unreachable targets — on real LocalTargets in tmp_path."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup.alerts.notify import AlertKind
from include.backup.catalog.catalog import write_manifest
from include.backup.catalog.manifest import Manifest, StoredObject, Verification
from include.backup.config.schema import BackupConfig
from include.backup.dr import monitor
from include.backup.dr.monitor import run_monitor
from include.backup.dr.reports import DRTestReport, list_reports, write_report
from include.backup.errors import TargetError
from include.backup.keys import KeyRing
from include.backup.targets.local import LocalTarget

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
TODAY = NOW.date()


def make_config(tmp_path: Path, **dr: Any) -> BackupConfig:
    return BackupConfig.model_validate(
        {
            "dr": {
                "rpo_hours": 1,
                "test_frequency_days": 30,
                "notification_emails": ["oncall@example.com"],
                **dr,
            },
            "encryption": {"key_rotation_days": 30},
            "targets": {
                "local": {"type": "local", "path": str(tmp_path / "local")},
                "nas": {"type": "local", "path": str(tmp_path / "nas")},
            },
            "sources": {"events_pg": {"type": "postgres", "conn_id": "events_pg"}},
            "schedules": [
                {"name": "hourly", "source": "events_pg", "cron": "0 * * * *", "targets": ["local", "nas"]},
            ],
        }
    )


def ring(created: date | None = TODAY) -> KeyRing:
    return KeyRing({"k1": b"\x01" * 32}, "k1", {"k1": created} if created else None)


def targets(tmp_path: Path) -> dict[str, LocalTarget]:
    return {"local": LocalTarget("local", tmp_path / "local"), "nas": LocalTarget("nas", tmp_path / "nas")}


def put_backup(
    target: LocalTarget,
    started: datetime,
    *,
    backup_id: str | None = None,
    verified: bool = True,
    backup_type: str = "FULL",
    size: int = 1000,
    minutes: int = 5,
    schedule: str = "hourly",
) -> Manifest:
    bid = backup_id or f"{schedule}-{started:%Y%m%dT%H%M%SZ}"
    m = Manifest(
        backup_id=bid,
        schedule=schedule,
        source="events_pg",
        source_type="postgres",
        backup_type=backup_type,
        started_at=started,
        finished_at=started + timedelta(minutes=minutes),
        payload_format="pg_dump-custom",
        stored_size=size,
        objects=[StoredObject(name="payload", size=size, sha256="0" * 64)],
        verification={
            target.name: Verification(ok=verified, verified_at=started + timedelta(minutes=minutes))
        },
    )
    write_manifest(target, m)
    return m


def kinds(report: monitor.MonitorReport) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in report.alerts:
        out.setdefault(a.kind.value, []).append(a.subject)
    return out


def passing_dr_test(
    target: LocalTarget, finished: datetime, success: bool = True, test_id: str = "t1"
) -> DRTestReport:
    r = DRTestReport(
        test_id=test_id,
        test_type="RESTORE_TEST",
        source="events_pg",
        target_environment="staging_pg",
        started_at=finished - timedelta(minutes=20),
        finished_at=finished,
        success=success,
        measured_rto_seconds=1200,
        measured_rpo_seconds=600,
        issues=[] if success else ["row count mismatch in events"],
        participants=["alice@example.com"],
    )
    write_report(target, r)
    return r


@pytest.fixture
def no_low_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalTarget, "free_bytes", lambda self: 1 << 50)


def test_all_good(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path)
    ts = targets(tmp_path)
    put_backup(ts["local"], NOW - timedelta(minutes=30))
    put_backup(ts["nas"], NOW - timedelta(minutes=30))
    passing_dr_test(ts["nas"], NOW - timedelta(days=3))
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring())
    assert report.alerts == [] and report.issues == [] and report.ok
    st = report.sources["events_pg"]
    assert st.rpo_ok and st.success
    assert st.last_good_backup_age_hours == 0.5
    assert st.last_good_backup_targets == ["local", "nas"]
    assert st.backups_count == 1 and st.stored_bytes_per_target == {"local": 1000, "nas": 1000}
    assert st.avg_duration_seconds == 300
    assert st.next_dr_test_due == NOW - timedelta(days=3) + timedelta(days=30)
    assert st.last_dr_test["measured_rto_seconds"] == 1200
    js = report.to_json()
    json.dumps(js)  # serialisable as is (XCom)
    assert js["sources"]["events_pg"]["last_good_backup_at"] == (NOW - timedelta(minutes=30)).isoformat()
    assert report.keys is not None and report.keys.age_days == 0 and not report.keys.rotation_due


def test_rpo_boundary(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path, rpo_hours=2)
    ts = targets(tmp_path)
    put_backup(ts["local"], NOW - timedelta(hours=2))
    # Exactly the RPO old: met. The schedule is hourly, so 2 h is not late either (2 × 1 h).
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring())
    assert "RPO_MISSED" not in kinds(report)
    assert report.sources["events_pg"].rpo_ok
    # One second more: missed, with the figures.
    report = run_monitor(cfg, NOW + timedelta(seconds=1), targets=ts, keyring=ring())
    (alert,) = [a for a in report.alerts if a.kind is AlertKind.RPO_MISSED]
    assert alert.subject == "events_pg" and alert.key == "RPO_MISSED:events_pg"
    assert alert.facts["RPO"] == "2 h"
    assert alert.facts["age"] == "2.0 h"
    assert alert.facts["last good backup"].startswith("hourly-")
    assert alert.dag_id == "backup__hourly"
    assert not report.sources["events_pg"].rpo_ok


def test_unverified_and_schema_backups_do_not_count_for_rpo(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path)
    ts = targets(tmp_path)
    old = put_backup(ts["local"], NOW - timedelta(hours=5))
    put_backup(ts["local"], NOW - timedelta(minutes=10), verified=False, backup_id="bad")
    put_backup(ts["nas"], NOW - timedelta(minutes=5), backup_type="SCHEMA", backup_id="schema1")
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring())
    (alert,) = [a for a in report.alerts if a.kind is AlertKind.RPO_MISSED]
    assert alert.facts["last good backup"] == old.backup_id
    st = report.sources["events_pg"]
    assert st.backups_count == 3 and st.verified_count == 2
    assert not st.success
    # The schedule itself ran recently: not late.
    assert "BACKUP_LATE" not in kinds(report)


def test_no_backup_at_all_is_rpo_missed_and_late(tmp_path: Path, no_low_storage: None) -> None:
    report = run_monitor(make_config(tmp_path), NOW, targets=targets(tmp_path), keyring=ring())
    k = kinds(report)
    assert k["RPO_MISSED"] == ["events_pg"]
    assert k["BACKUP_LATE"] == ["hourly"]
    rpo = next(a for a in report.alerts if a.kind is AlertKind.RPO_MISSED)
    assert "no verified backup" in rpo.summary


def test_backup_late_after_two_intervals(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path, rpo_hours=24)
    ts = targets(tmp_path)
    put_backup(ts["local"], NOW - timedelta(hours=2))
    assert "BACKUP_LATE" not in kinds(run_monitor(cfg, NOW, targets=ts, keyring=ring()))
    report = run_monitor(cfg, NOW + timedelta(minutes=1), targets=ts, keyring=ring())
    assert kinds(report)["BACKUP_LATE"] == ["hourly"]
    assert report.schedules["hourly"].late
    assert report.schedules["hourly"].interval_seconds == 3600


def test_dr_test_overdue(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path)
    ts = targets(tmp_path)
    put_backup(ts["local"], NOW - timedelta(minutes=10))
    # None on record: overdue.
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring())
    assert kinds(report)["DR_TEST_OVERDUE"] == ["events_pg"]
    # A successful one 31 days ago, and a failed one yesterday: still overdue.
    passing_dr_test(ts["local"], NOW - timedelta(days=31), test_id="old-ok")
    passing_dr_test(ts["nas"], NOW - timedelta(days=1), success=False, test_id="new-fail")
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring())
    (alert,) = [a for a in report.alerts if a.kind is AlertKind.DR_TEST_OVERDUE]
    assert alert.facts["overdue by"] == "24.0 h"
    assert "new-fail RESTORE_TEST FAILED" in alert.facts["last test (any outcome)"]
    st = report.sources["events_pg"]
    assert st.dr_test_overdue and st.last_dr_test["test_id"] == "new-fail"
    assert st.next_dr_test_due == NOW - timedelta(days=1)
    # Exactly 30 days: not overdue.
    passing_dr_test(ts["local"], NOW - timedelta(days=30), test_id="ok30")
    assert "DR_TEST_OVERDUE" not in kinds(run_monitor(cfg, NOW, targets=ts, keyring=ring()))


def test_reports_round_trip_and_ignore_junk(tmp_path: Path) -> None:
    t = LocalTarget("local", tmp_path / "t")
    r = passing_dr_test(t, NOW)
    t.put_bytes("_dr_tests/events_pg/garbage.json", b"{not json")
    assert r.key.startswith("_dr_tests/events_pg/20250310T114000Z-t1")
    (back,) = list_reports(t)
    assert back == r and back.duration_seconds == 1200
    # The catalog does not mistake reports for backups.
    from include.backup.catalog.catalog import list_backups

    assert list_backups(t) == []


def test_key_rotation_due(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path)
    ts = targets(tmp_path)
    put_backup(ts["local"], NOW - timedelta(minutes=10))
    passing_dr_test(ts["local"], NOW)
    assert run_monitor(cfg, NOW, targets=ts, keyring=ring(TODAY - timedelta(days=30))).alerts == []
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring(TODAY - timedelta(days=31)))
    (alert,) = report.alerts
    assert alert.kind is AlertKind.KEY_ROTATION_DUE and alert.subject == "k1"
    assert alert.facts["key age"] == "31 days"
    assert report.keys.rotation_due and report.keys.next_rotation_due == TODAY - timedelta(days=1)


def test_key_ring_problems_are_issues_not_crashes(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path)
    ts = targets(tmp_path)

    def broken(_cfg: BackupConfig) -> KeyRing:
        raise ValueError("cannot reach postgresql://admin:hunter2@db/keys")

    report = run_monitor(cfg, NOW, targets=ts, keyring=broken)
    assert any("cannot load the key ring" in i for i in report.issues)
    assert "hunter2" not in json.dumps(report.to_json())
    undated = run_monitor(cfg, NOW, targets=ts, keyring=ring(None))
    assert any("no created date" in i for i in undated.issues)


def test_storage_low(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config(tmp_path, storage_min_free_gb=1)
    ts = targets(tmp_path)
    put_backup(ts["local"], NOW - timedelta(minutes=10), size=800 << 20)  # 800 MiB
    free = {"local": 1 << 30, "nas": (1 << 30) - 1}
    monkeypatch.setattr(LocalTarget, "free_bytes", lambda self: free[self.name])
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring())
    # local: 1 GiB free but twice its largest backup (1.6 GiB) is needed; nas: just under 1 GiB.
    assert sorted(kinds(report)["STORAGE_LOW"]) == ["local", "nas"]
    local = next(a for a in report.alerts if a.kind is AlertKind.STORAGE_LOW and a.subject == "local")
    assert local.facts["free"] == "1.0 GiB" and local.facts["threshold"] == "1.6 GiB"
    assert report.targets["local"].min_free_bytes == 1600 << 20
    free.update(local=2 << 30, nas=1 << 30)
    assert "STORAGE_LOW" not in kinds(run_monitor(cfg, NOW, targets=ts, keyring=ring()))
    # A target that cannot tell (None) is not low.
    monkeypatch.setattr(LocalTarget, "free_bytes", lambda self: None)
    assert "STORAGE_LOW" not in kinds(run_monitor(cfg, NOW, targets=ts, keyring=ring()))


class Unreachable(LocalTarget):
    def list(self, prefix: str = ""):  # type: ignore[override]
        raise TargetError(
            f"target '{self.name}': connection refused to sftp://backup:s3cret@nas.example:22/backups"
        )


def test_unreachable_target(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path)
    ts: dict[str, LocalTarget] = targets(tmp_path)
    put_backup(ts["local"], NOW - timedelta(minutes=10))
    passing_dr_test(ts["local"], NOW)
    ts["nas"] = Unreachable("nas", tmp_path / "nas")
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring())
    (alert,) = report.alerts
    assert alert.kind is AlertKind.TARGET_UNREACHABLE and alert.severity.value == "critical"
    assert alert.subject == "nas"
    assert "s3cret" not in alert.facts["error"] and "backup:***@" in alert.facts["error"]
    assert not report.targets["nas"].reachable
    # The other target still counts.
    assert report.sources["events_pg"].rpo_ok


def test_run_monitor_builds_targets_from_config(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path)
    put_backup(LocalTarget("local", tmp_path / "local"), NOW - timedelta(minutes=10))
    report = run_monitor(cfg, NOW, keyring=ring())
    assert set(report.targets) == {"local", "nas"}
    assert report.sources["events_pg"].last_good_backup_targets == ["local"]


def test_notify_report_sends_and_clears(tmp_path: Path, no_low_storage: None) -> None:
    cfg = make_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    calls: list[list[str]] = []

    def fake_send(alerts, to, conn_id, *, state_path=None):  # type: ignore[no-untyped-def]
        assert conn_id == "smtp_default" and to == ["oncall@example.com"]
        calls.append([a.key for a in alerts])
        return len(alerts)

    report = run_monitor(cfg, NOW, targets=targets(tmp_path), keyring=ring())
    assert monitor.notify_report(report, cfg, state_path=state, send_fn=fake_send) == 3
    assert sorted(calls[0]) == ["BACKUP_LATE:hourly", "DR_TEST_OVERDUE:events_pg", "RPO_MISSED:events_pg"]
