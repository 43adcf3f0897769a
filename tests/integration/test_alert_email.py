"""Alert mails through Airflow's real SmtpHook to a real SMTP server (aiosmtpd).

Asserts what on-call receives: one mail per violation, subject with severity and source,
the figures in the body, the recipients, no secret; dedupe stops the second send; the
failure callback and the deadline callback (run the way the triggerer runs it) mail once.
"""

from __future__ import annotations

import asyncio
import email.policy
import textwrap
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from include.backup import tasks
from include.backup.alerts import callbacks, notify
from include.backup.alerts.notify import Alert, AlertKind
from include.backup.config.schema import BackupConfig
from include.backup.dr.monitor import notify_report, run_monitor
from include.backup.keys import KeyRing
from include.backup.testing import run_backup
from tests.integration.smtp_service import SmtpServer

pytestmark = pytest.mark.integration

RECIPIENTS = ["oncall@example.com", "dba@example.com"]


def body_of(msg: Message) -> str:
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    part = parsed.get_body(preferencelist=("html", "plain"))
    assert part is not None
    return part.get_content()


def config(tmp_path: Path) -> BackupConfig:
    return BackupConfig.model_validate(
        {
            "dr": {"rpo_hours": 1, "notification_emails": RECIPIENTS},
            "targets": {"local": {"type": "local", "path": str(tmp_path / "local")}},
            "sources": {"events_pg": {"type": "postgres", "conn_id": "events_pg"}},
            "schedules": [
                {"name": "hourly", "source": "events_pg", "cron": "0 * * * *", "targets": ["local"]}
            ],
        }
    )


@pytest.fixture
def mailbox(smtp_server: SmtpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SmtpServer:
    smtp_server.clear()
    monkeypatch.setenv(notify.STATE_ENV_VAR, str(tmp_path / "alert-state"))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.test:8080")
    return smtp_server


def test_alert_arrives_once_with_subject_and_facts(mailbox: SmtpServer, tmp_path: Path) -> None:
    alert = Alert(
        AlertKind.RPO_MISSED,
        "events_pg",
        summary="last good backup is 3.2 h old, RPO 1 h",
        facts={
            "last good backup": "hourly-20250310T080000Z-abc123",
            "age": "3.2 h",
            "RPO": "1 h",
            "error": "dump failed: postgresql://backup:hunter2@db/events",
        },
        dag_id="backup__hourly",
    )
    assert notify.send([alert], RECIPIENTS, mailbox.conn_id) == 1
    assert notify.send([alert], RECIPIENTS, mailbox.conn_id) == 0  # dedupe
    msgs = mailbox.wait_for(1)
    time_to_settle = mailbox.wait_for(2, timeout=1)  # a second mail would show up by now
    assert len(time_to_settle) == 1
    (msg,) = msgs
    assert msg["Subject"] == "[CRITICAL] RPO missed: events_pg — last good backup is 3.2 h old, RPO 1 h"
    assert msg["From"] == "airflow-backup@example.com"
    assert msg["X-Backup-Alert-Key"] == "RPO_MISSED:events_pg"
    assert sorted(a.strip() for a in msg["To"].split(",")) == sorted(RECIPIENTS)
    # aiosmtpd's Mailbox handler records the envelope recipients.
    assert sorted(msg["X-RcptTo"].replace(" ", "").split(",")) == sorted(RECIPIENTS)
    body = body_of(msg)
    for fact in (
        "hourly-20250310T080000Z-abc123",
        "3.2 h",
        "1 h",
        "http://airflow.test:8080/dags/backup__hourly",
    ):
        assert fact in body
    assert "hunter2" not in msg.as_string()


def test_monitor_round_mails_each_violation_once(mailbox: SmtpServer, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ring = KeyRing({"k1": b"\x02" * 32}, "k1", {"k1": datetime.now(UTC).date() - timedelta(days=90)})
    report = run_monitor(cfg, keyring=ring)
    kinds = sorted(a.kind.value for a in report.alerts)
    assert kinds == ["BACKUP_LATE", "DR_TEST_OVERDUE", "KEY_ROTATION_DUE", "RPO_MISSED"]
    assert notify_report(report, cfg) == 4
    assert notify_report(run_monitor(cfg, keyring=ring), cfg) == 0  # 15 minutes later
    msgs = mailbox.wait_for(4)
    assert len(msgs) == 4
    subjects = sorted(m["Subject"] for m in msgs)
    assert subjects[0].startswith("[CRITICAL] RPO missed: events_pg")
    assert any(s.startswith("[WARNING] Encryption key rotation due: k1") for s in subjects)


def test_failure_callback_mails_once(mailbox: SmtpServer, tmp_path: Path) -> None:
    class TI:
        dag_id = "backup__hourly"
        run_id = "manual__2025-03-10T11:00:00+00:00"
        task_id = "dump"
        map_index = -1
        try_number = 3

    ctx: dict[str, Any] = {
        "ti": TI(),
        "exception": RuntimeError("pg_dump: connection to postgresql://backup:hunter2@db failed"),
    }
    cfg = config(tmp_path)
    callbacks.on_backup_failure(ctx, config=cfg)
    callbacks.on_backup_failure(ctx, config=cfg)  # the DAG-level callback of the same run
    msgs = mailbox.wait_for(1)
    assert len(mailbox.wait_for(2, timeout=1)) == 1
    (msg,) = msgs
    assert msg["Subject"] == "[CRITICAL] Backup failed: events_pg — backup__hourly failed in task dump"
    body = body_of(msg)
    assert "manual__2025-03-10T11:00:00+00:00" in body and "RuntimeError" in body
    assert "hunter2" not in msg.as_string()


def test_deadline_callback_as_the_triggerer_runs_it(
    mailbox: SmtpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.triggers.callback import CallbackTrigger

    cfg = config(tmp_path)
    monkeypatch.setattr(callbacks, "_load_config", lambda: cfg)
    deadline = callbacks.deadline_for(cfg, cfg.schedules[0])
    context = {
        "dag_run": {
            "dag_run_id": "scheduled__2025-03-10T11:00:00+00:00",
            "dag_id": "backup__hourly",
            "queued_at": (datetime.now(UTC) - timedelta(minutes=70)).isoformat(),
            "state": "running",
        },
        "deadline": {"id": "x", "deadline_time": (datetime.now(UTC) - timedelta(minutes=10)).isoformat()},
    }

    async def fire() -> list[dict[str, Any]]:
        trigger = CallbackTrigger(deadline.callback.path, dict(deadline.callback.kwargs, context=context))
        return [e.payload async for e in trigger.run()]

    assert asyncio.run(fire())[-1]["state"] == "success"
    assert asyncio.run(fire())[-1]["state"] == "success"
    msgs = mailbox.wait_for(1)
    assert len(mailbox.wait_for(2, timeout=1)) == 1
    (msg,) = msgs
    assert msg["Subject"].startswith("[CRITICAL] RPO missed: events_pg — backup__hourly run not finished")
    assert "10 min past its deadline" in msg["Subject"]
    assert "scheduled__2025-03-10T11:00:00+00:00" in body_of(msg)


def test_slow_backup_mails_once_and_stops_when_it_finishes(
    mailbox: SmtpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three real backups make the history; a fourth is dumped and left in the staging
    (its draft manifest says when it started). Rounds of the monitor a quarter of an hour
    later see it running far longer than usual: one BACKUP_SLOW mail over two rounds;
    once the backup has finished, nothing more, and the key is forgotten."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n" * 1000)
    cfg_file = tmp_path / "backup_config.yaml"
    cfg_file.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        dr: {{rpo_hours: 24, storage_min_free_gb: 0, notification_emails: {RECIPIENTS}}}
        targets:
          local: {{type: local, path: {tmp_path}/local}}
        sources:
          docs: {{type: files, paths: [{data}]}}
        schedules:
          - {{name: docs_hourly, source: docs, cron: "@hourly", targets: [local], retention_days: 7}}
    """)
    )
    monkeypatch.setenv("BACKUP_CONFIG", str(cfg_file))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    for i in range(3):
        run_backup("docs_hourly", run_id=f"history{i}")
    running = tasks.run_dump("docs_hourly", "slow-run", datetime.now(UTC))
    assert (Path(running["staging"]) / tasks.DRAFT_NAME).exists()

    cfg = tasks.load_config()
    later = datetime.now(UTC) + timedelta(minutes=15)  # the history took seconds
    for _ in range(2):  # two rounds of dr_monitor, 15 minutes apart
        report = run_monitor(cfg, later)
        notify_report(report, cfg)
    slow_key = f"BACKUP_SLOW:docs_hourly:{running['backup_id']}"

    def slow_mails() -> list[Message]:
        return [m for m in mailbox.messages() if m["X-Backup-Alert-Kind"] == "BACKUP_SLOW"]

    mailbox.wait_for(1)
    assert len(slow_mails()) == 1
    (msg,) = slow_mails()
    assert msg["X-Backup-Alert-Key"] == slow_key
    subject = "[WARNING] Backup slow: docs_hourly — backup running for 15 min, usually "
    assert msg["Subject"].startswith(subject)
    body = body_of(msg)
    assert running["backup_id"] in body and running["staging"] in body
    assert "http://airflow.test:8080/dags/backup__docs_hourly" in body

    # The run goes on and finishes: its cleanup removes the staging.
    meta = tasks.run_checksum(tasks.run_encrypt(running))
    tasks.run_upload(meta, "local")
    tasks.run_verify(meta, "local")
    tasks.run_cleanup(meta, "docs_hourly")
    before = len(mailbox.messages())
    report = run_monitor(cfg, later)
    assert not [a for a in report.alerts if a.kind is AlertKind.BACKUP_SLOW]
    notify_report(report, cfg)
    assert len(mailbox.wait_for(before + 1, timeout=1)) == before  # nothing new was mailed
    assert len(slow_mails()) == 1
    assert not notify.sent_recently(slow_key)  # forgotten: a new slow run mails at once
