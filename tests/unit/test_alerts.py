"""Alerts: rendering (figures in, secrets out), dedupe state, redaction, failure and
deadline callbacks (with a fake sender), and the DeadlineAlert objects the DAGs get."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup.alerts import callbacks, notify
from include.backup.alerts.notify import Alert, AlertKind, Severity, redact, render
from include.backup.config.schema import BackupConfig

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def cfg(tmp_path: Path) -> BackupConfig:
    return BackupConfig.model_validate(
        {
            "dr": {"rpo_hours": 1, "rto_hours": 4, "notification_emails": ["oncall@example.com"]},
            "targets": {"local": {"type": "local", "path": str(tmp_path / "t")}},
            "sources": {"events_pg": {"type": "postgres", "conn_id": "events_pg"}},
            "schedules": [
                {"name": "hourly", "source": "events_pg", "cron": "0 * * * *", "targets": ["local"]},
                {"name": "daily", "source": "events_pg", "cron": "0 2 * * *", "targets": ["local"]},
            ],
        }
    )


# --- redaction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("could not connect to postgresql://backup:hunter2@db:5432/events", "hunter2"),
        ("sftp://u:p%40ss@host/backups failed", "p%40ss"),
        ("password=hunter2 host=db", "hunter2"),
        ('{"aws_secret_access_key": "AKIAsecretVALUE"}', "AKIAsecretVALUE"),
        ("https://acct.blob.core.windows.net/c?sv=2020&sig=abcDEF123%3D&se=1", "abcDEF123%3D"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9"),
        ("key material " + "A" * 43 + "= leaked", "A" * 43),
    ],
)
def test_redact(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


def test_redact_keeps_ordinary_text() -> None:
    text = "target 'nas': cannot list /backups/events_pg: connection refused (sha256 " + "a" * 64 + ")"
    assert redact(text) == text


# --- rendering -------------------------------------------------------------------------


def test_render_has_figures_link_and_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    alert = Alert(
        AlertKind.RPO_MISSED,
        "events_pg",
        summary="last good backup is 3.2 h old, RPO 1 h",
        facts={
            "last good backup": "daily-20250310T020000Z-abc123",
            "age": "3.2 h",
            "RPO": "1 h",
            "error": "psql: postgresql://backup:hunter2@db/events refused",
        },
        dag_id="backup__daily",
        run_id="scheduled__2025-03-10T02:00:00+00:00",
        raised_at=NOW,
    )
    subject, text, body = render(alert)
    assert subject == "[CRITICAL] RPO missed: events_pg — last good backup is 3.2 h old, RPO 1 h"
    for part in (text, body):
        assert "daily-20250310T020000Z-abc123" in part
        assert "3.2 h" in part and "1 h" in part
        assert "hunter2" not in part
        assert "Trigger a backup of this source now" in part
        assert (
            "https://airflow.example.com/dags/backup__daily/runs/scheduled__2025-03-10T02%3A00%3A00%2B00%3A00"
            in part
        )
    assert "RPO_MISSED:events_pg" in text


def test_severity_defaults_and_subject_is_one_line() -> None:
    expected = {
        "BACKUP_FAILED": "critical",
        "BACKUP_LATE": "warning",
        "RPO_MISSED": "critical",
        "RTO_MISSED": "critical",
        "DR_TEST_OVERDUE": "warning",
        "KEY_ROTATION_DUE": "warning",
        "STORAGE_LOW": "warning",
        "DR_ACTIVATED": "critical",
        "DR_TEST_RESULT": "info",
        "TARGET_UNREACHABLE": "critical",
    }
    for kind, sev in expected.items():
        a = Alert(kind, "x\r\nBcc: evil@example.com")  # type: ignore[arg-type]
        assert a.severity == Severity(sev)
        subject, _, _ = render(a)
        assert "\n" not in subject and "\r" not in subject
        assert subject.startswith(f"[{sev.upper()}]")


def test_html_is_escaped() -> None:
    _, _, body = render(Alert(AlertKind.BACKUP_FAILED, "<script>x</script>", facts={"a": "<b>"}))
    assert "<script>" not in body and "&lt;script&gt;" in body


# --- dedupe ----------------------------------------------------------------------------


class FakeHook:
    sent: list[dict[str, Any]] = []

    def __init__(self, smtp_conn_id: str) -> None:
        self.conn_id = smtp_conn_id
        self.from_email = None

    def __enter__(self) -> FakeHook:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def send_email_smtp(self, **kwargs: Any) -> None:
        if "FAIL" in kwargs["subject"]:
            raise ConnectionError("smtp down")
        FakeHook.sent.append({"conn_id": self.conn_id, **kwargs})


@pytest.fixture
def fake_smtp(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import airflow.providers.smtp.hooks.smtp as smtp_mod

    FakeHook.sent = []
    monkeypatch.setattr(smtp_mod, "SmtpHook", FakeHook)
    return FakeHook.sent


def test_send_dedupes_within_window(tmp_path: Path, fake_smtp: list[dict[str, Any]]) -> None:
    a = Alert(AlertKind.STORAGE_LOW, "nas", facts={"free": "1 GiB"})
    b = Alert(AlertKind.STORAGE_LOW, "local")
    assert notify.send([a, b, a], ["oncall@example.com"], "smtp_x", state_path=tmp_path, now=NOW) == 2
    assert [m["custom_headers"]["X-Backup-Alert-Key"] for m in fake_smtp] == [
        "STORAGE_LOW:nas",
        "STORAGE_LOW:local",
    ]
    assert fake_smtp[0]["conn_id"] == "smtp_x" and fake_smtp[0]["to"] == ["oncall@example.com"]
    # Within the window: nothing. After it: a reminder.
    assert (
        notify.send([a], ["oncall@example.com"], "smtp_x", state_path=tmp_path, now=NOW + timedelta(hours=23))
        == 0
    )
    assert (
        notify.send([a], ["oncall@example.com"], "smtp_x", state_path=tmp_path, now=NOW + timedelta(hours=25))
        == 1
    )
    state = json.loads((tmp_path / notify.STATE_FILE_NAME).read_text())
    assert state["sent"]["STORAGE_LOW:nas"]["count"] == 2
    assert notify.sent_recently("STORAGE_LOW:nas", state_path=tmp_path, now=NOW + timedelta(hours=26))


def test_clear_resolved_allows_resend(tmp_path: Path, fake_smtp: list[dict[str, Any]]) -> None:
    a = Alert(AlertKind.RPO_MISSED, "events_pg")
    other = Alert(AlertKind.BACKUP_FAILED, "events_pg", key="BACKUP_FAILED:d:r")
    notify.send([a, other], ["o@example.com"], state_path=tmp_path, now=NOW)
    gone = notify.clear_resolved([], [AlertKind.RPO_MISSED], state_path=tmp_path)
    assert gone == ["RPO_MISSED:events_pg"]  # BACKUP_FAILED is not the monitor's to clear
    assert notify.send([a, other], ["o@example.com"], state_path=tmp_path, now=NOW) == 1


def test_failed_mail_is_not_recorded(tmp_path: Path, fake_smtp: list[dict[str, Any]]) -> None:
    ok = Alert(AlertKind.STORAGE_LOW, "nas")
    bad = Alert(AlertKind.STORAGE_LOW, "FAIL")
    with pytest.raises(ConnectionError):
        notify.send([ok, bad], ["o@example.com"], state_path=tmp_path, now=NOW)
    assert notify.sent_recently("STORAGE_LOW:nas", state_path=tmp_path, now=NOW)
    assert not notify.sent_recently("STORAGE_LOW:FAIL", state_path=tmp_path, now=NOW)


def test_no_recipients_sends_nothing(tmp_path: Path, fake_smtp: list[dict[str, Any]]) -> None:
    assert notify.send([Alert(AlertKind.STORAGE_LOW, "nas")], [], state_path=tmp_path) == 0
    assert fake_smtp == []


def test_damaged_state_file_does_not_stop_alerts(tmp_path: Path, fake_smtp: list[dict[str, Any]]) -> None:
    (tmp_path / notify.STATE_FILE_NAME).write_text("{broken")
    assert notify.send([Alert(AlertKind.STORAGE_LOW, "nas")], ["o@example.com"], state_path=tmp_path) == 1


def test_default_state_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(notify.STATE_ENV_VAR, raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert notify.default_state_path() == tmp_path / "home" / "backup-alerts-state.json"
    monkeypatch.setenv(notify.STATE_ENV_VAR, str(tmp_path / "s"))
    assert notify.default_state_path() == tmp_path / "s" / "backup-alerts-state.json"


# --- failure callback ------------------------------------------------------------------


class TI:
    dag_id = "backup__hourly"
    run_id = "scheduled__2025-03-10T11:00:00+00:00"
    task_id = "upload"
    map_index = 1
    try_number = 3


def test_failure_callback_redacts_and_sends_once(tmp_path: Path, fake_smtp: list[dict[str, Any]]) -> None:
    context = {
        "ti": TI(),
        "run_id": TI.run_id,
        "exception": RuntimeError("upload to s3://bucket failed: https://user:s3cr3t@proxy:3128 refused"),
    }
    config = cfg(tmp_path)
    callbacks.on_backup_failure(context, config=config, state_path=tmp_path / "state")
    callbacks.on_backup_failure(context, config=config, state_path=tmp_path / "state")  # DAG callback too
    (mail,) = fake_smtp
    assert mail["subject"] == "[CRITICAL] Backup failed: events_pg — backup__hourly failed in task upload[1]"
    assert "s3cr3t" not in mail["html_content"] and "user:***@proxy" in mail["html_content"]
    for fact in ("scheduled__2025-03-10T11:00:00+00:00", "upload[1]", ">3<", "hourly", "RuntimeError"):
        assert fact in mail["html_content"]
    assert "none found at the schedule" in mail["html_content"]


def test_failure_callback_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> int:
        raise ConnectionRefusedError("smtp down")

    monkeypatch.setattr(callbacks, "send", boom)
    callbacks.on_backup_failure({"ti": TI()}, config=cfg(tmp_path))
    callbacks.on_backup_failure({}, config=None)  # config cannot be loaded? still no raise


# --- deadline alerts -------------------------------------------------------------------


def test_deadline_for_backup_schedules(tmp_path: Path) -> None:
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    config = cfg(tmp_path)
    hourly, daily = config.schedules
    d = callbacks.deadline_for(config, hourly)  # interval 1 h == RPO 1 h: RPO decides
    assert isinstance(d, DeadlineAlert)
    assert d.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert d.interval == timedelta(hours=1)
    assert isinstance(d.callback, AsyncCallback)
    assert d.callback.path == "include.backup.alerts.callbacks.deadline_missed"
    assert d.callback.kwargs["kind"] == "RPO_MISSED" and d.callback.kwargs["source"] == "events_pg"
    assert callbacks.deadline_for(config, daily).interval == timedelta(hours=1)
    json.dumps(d.callback.kwargs)  # stored in the serialized DAG
    rto = callbacks.rto_deadline_for(config, "failover")
    assert rto.interval == timedelta(hours=4) and rto.callback.kwargs["kind"] == "RTO_MISSED"


def test_deadlines_for_adds_late_when_interval_is_shorter(tmp_path: Path) -> None:
    data = cfg(tmp_path).model_dump(mode="json")
    data["dr"]["rpo_hours"] = 4
    config = BackupConfig.model_validate(data)
    late, rpo = callbacks.deadlines_for(config, config.schedules[0])
    assert (late.interval, late.callback.kwargs["kind"]) == (timedelta(hours=1), "BACKUP_LATE")
    assert (rpo.interval, rpo.callback.kwargs["kind"]) == (timedelta(hours=4), "RPO_MISSED")
    assert callbacks.deadline_for(config, config.schedules[0]) == late


def test_deadline_dag_serializes(tmp_path: Path) -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    config = cfg(tmp_path)
    with DAG(
        "backup__hourly",
        schedule="0 * * * *",
        start_date=NOW,
        deadline=callbacks.deadlines_for(config, config.schedules[0]),
    ) as dag:
        pass
    data = DagSerialization.to_dict(dag)
    text = json.dumps(data, default=str)
    assert "include.backup.alerts.callbacks.deadline_missed" in text


def simple_context() -> dict[str, Any]:
    # What Deadline.handle_miss puts in the callback kwargs (models/deadline.py).
    return {
        "dag_run": {
            "dag_run_id": "scheduled__2025-03-10T11:00:00+00:00",
            "dag_id": "backup__hourly",
            "queued_at": "2025-03-10T11:00:01+00:00",
            "start_date": "2025-03-10T11:00:03+00:00",
            "state": "running",
        },
        "deadline": {"id": "0195-uuid", "deadline_time": "2025-03-10T12:00:01+00:00"},
    }


def test_deadline_alert_figures(tmp_path: Path) -> None:
    a = callbacks.deadline_alert(
        "RPO_MISSED",
        simple_context(),
        interval_seconds=3600,
        schedule="hourly",
        source="events_pg",
        rpo_hours=1,
        config=cfg(tmp_path),
        now=NOW + timedelta(minutes=5),
    )
    assert a.key == "RPO_MISSED:backup__hourly:scheduled__2025-03-10T11:00:00+00:00"
    assert a.facts["running for"] == "1.1 h" and a.facts["allowed"] == "1.0 h"
    assert a.facts["RPO"] == "1 h" and a.subject == "events_pg"
    assert "5 min past its deadline" in a.summary


def test_deadline_alert_seconds_after_the_deadline_says_seconds(tmp_path: Path) -> None:
    # The triggerer runs the callback seconds after the deadline: "0 min past" reads wrong.
    a = callbacks.deadline_alert(
        "BACKUP_LATE",
        simple_context(),
        interval_seconds=3600,
        schedule="hourly",
        source="events_pg",
        rpo_hours=1,
        config=cfg(tmp_path),
        now=NOW + timedelta(seconds=31),  # the deadline is 12:00:01
    )
    assert "30 s past its deadline" in a.summary


def test_deadline_callback_as_the_triggerer_calls_it(
    tmp_path: Path, fake_smtp: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk import AsyncCallback
    from airflow.triggers.callback import CallbackTrigger

    config = cfg(tmp_path)
    monkeypatch.setattr(callbacks, "_load_config", lambda: config)
    monkeypatch.setenv(notify.STATE_ENV_VAR, str(tmp_path / "state"))
    d = callbacks.deadline_for(config, config.schedules[0])
    assert isinstance(d.callback, AsyncCallback)

    async def fire() -> list[Any]:
        kwargs = dict(d.callback.kwargs, context=simple_context())
        trigger = CallbackTrigger(d.callback.path, kwargs)
        return [e.payload async for e in trigger.run()]

    events = asyncio.run(fire())
    assert events[-1]["state"] == "success", events
    assert asyncio.run(fire())[-1]["state"] == "success"  # a second firing does not mail again
    (mail,) = fake_smtp
    assert mail["subject"].startswith("[CRITICAL] RPO missed: events_pg")
