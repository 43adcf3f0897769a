"""A deadline alert end to end: the real scheduler notices a backup run that missed its
deadline, the real triggerer runs our callback, and on-call gets exactly one mail.

The schedule ``e2e_slow_pg_full`` (tests/e2e/conftest.py) runs every minute, so its backup
DAG has a BACKUP_LATE deadline alert one minute after a run is queued
(``include.backup.alerts.callbacks.deadlines_for``). The test makes one run late for a
real reason: it holds an ACCESS EXCLUSIVE lock on a table of the source database, so the
dump (``pg_dump`` and the row count in its snapshot, which set no lock timeout) waits for
its ACCESS SHARE lock. Once the mail is in, the lock is released and the run finishes.

Airflow 3.3's public REST API v2 does not expose deadlines (no field on the DAG run, no
endpoint; only the UI's private ``/ui/dags/{dag_id}/dagRuns/{run_id}/deadlines``), so
the missed deadline is checked through its effect: the mail.
"""

from __future__ import annotations

import contextlib
import html
import re
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

import httpx
import psycopg2  # type: ignore[import-untyped]
import pytest
from psycopg2 import sql

from include.backup.testing.postgres import PgCluster
from tests.e2e.conftest import SLOW_DB, SLOW_SCHEDULE, SLOW_SOURCE, AirflowDeployment
from tests.e2e.test_rest_api import manifests, run_ok, task_states, trigger, wait_run

pytestmark = [pytest.mark.e2e]

DAG_ID = f"backup__{SLOW_SCHEDULE}"
LOCKED_TABLE = "transactions"
PARSE_TIMEOUT_S = 90
LOCK_WAIT_TIMEOUT_S = 120
MAIL_TIMEOUT_S = 60 + 120
"""The deadline is one minute after the run was queued; then the scheduler queues the
callback and the triggerer runs it (seconds, more on a loaded machine)."""
SETTLE_S = 10
"""After the run finished: time for a duplicate mail to show up, if there were one."""


@pytest.fixture(scope="module")
def api(airflow_deployment: AirflowDeployment) -> Iterator[httpx.Client]:
    with airflow_deployment.client() as client:
        yield client


@contextlib.contextmanager
def table_locked(cluster: PgCluster, dbname: str, table: str) -> Iterator[None]:
    """Hold ACCESS EXCLUSIVE on ``table`` (an open transaction) until the block ends."""
    conn = psycopg2.connect(**cluster.conn_params(dbname))
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
        yield
    finally:
        conn.rollback()
        conn.close()


def backup_sessions_waiting_on_a_lock(cluster: PgCluster, dbname: str) -> int:
    """Sessions of the backup (application_name ``airflow-backup``: pg_dump and the row
    count) that wait for a lock in ``dbname``."""
    conn = psycopg2.connect(**cluster.conn_params(dbname))
    conn.autocommit = True  # pg_stat_activity is a snapshot per transaction
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND application_name = 'airflow-backup' AND wait_event_type = 'Lock'",
                (dbname,),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def alert_key(mail: EmailMessage) -> tuple[str, str, str]:
    """(kind, dag_id, run_id) from ``X-Backup-Alert-Key`` (``<KIND>:<dag_id>:<run_id>``)."""
    kind, _, rest = str(mail["X-Backup-Alert-Key"] or "").partition(":")
    dag_id, _, run_id = rest.partition(":")
    return kind, dag_id, run_id


def mails_for_run(deployment: AirflowDeployment, run_id: str) -> list[EmailMessage]:
    return [m for m in deployment.smtp.messages() if alert_key(m)[1:] == (DAG_ID, run_id)]


def html_of(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("html", "plain"))
    return str(part.get_content()) if part is not None else ""


def facts_of(body: str) -> dict[str, str]:
    """The facts table of an alert mail (include/backup/alerts/notify.py ``render``)."""
    rows = re.findall(r"<tr><th[^>]*>(.*?)</th><td[^>]*>(.*?)</td>", body)
    return {html.unescape(k): html.unescape(v) for k, v in rows}


def wait_until(what: str, check: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def test_late_backup_run_mails_one_backup_late_alert(
    api: httpx.Client, airflow_deployment: AirflowDeployment
) -> None:
    deployment = airflow_deployment
    wait_until(
        f"{DAG_ID} is parsed", lambda: api.get(f"/dags/{DAG_ID}").status_code == 200, PARSE_TIMEOUT_S, 2
    )

    # A good backup first: the alert must name it as the last good one.
    good_run = run_ok(api, DAG_ID)
    good = {k: m for k, m in manifests(deployment.base / "backups").items() if m["schedule"] == SLOW_SCHEDULE}
    assert len(good) == 1, sorted(good)
    good_backup_id, good_manifest = next(iter(good.items()))
    assert good_manifest["verification"]["local"]["ok"] is True

    with table_locked(deployment.source_pg, SLOW_DB, LOCKED_TABLE):
        run_id = trigger(api, DAG_ID)
        # the dump has started and waits on our lock: the run is late for a real reason
        wait_until(
            "the dump waiting on the table lock",
            lambda: backup_sessions_waiting_on_a_lock(deployment.source_pg, SLOW_DB) > 0,
            LOCK_WAIT_TIMEOUT_S,
        )
        wait_until("the BACKUP_LATE mail", lambda: mails_for_run(deployment, run_id), MAIL_TIMEOUT_S)
        # mailed while the run was still going, stuck in its dump
        r = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}")
        r.raise_for_status()
        assert r.json()["state"] == "running", r.json()
        assert task_states(api, DAG_ID, run_id)["dump"] == "running"

    # lock released: the late run completes normally
    state = wait_run(api, DAG_ID, run_id)
    assert state == "success", f"{run_id}: {state}; tasks: {task_states(api, DAG_ID, run_id)}"
    time.sleep(SETTLE_S)
    mails = mails_for_run(deployment, run_id)
    assert len(mails) == 1, [(str(m["Subject"]), m["X-Backup-Alert-Key"]) for m in mails]
    mail = mails[0]

    assert alert_key(mail) == ("BACKUP_LATE", DAG_ID, run_id)
    assert mail["X-Backup-Alert-Kind"] == "BACKUP_LATE"
    assert mail["X-Backup-Alert-Severity"] == "warning"
    subject = str(mail["Subject"])
    assert subject.startswith(f"[WARNING] Backup late: {SLOW_SOURCE} — {DAG_ID} "), subject
    assert "past its deadline" in subject, subject
    assert [a.strip() for a in str(mail["To"]).split(",")] == ["oncall@example.com"]

    body = html_of(mail)
    facts = facts_of(body)
    assert facts["DAG"] == DAG_ID and facts["run"] == run_id, facts
    assert facts["schedule"] == SLOW_SCHEDULE and facts["source"] == SLOW_SOURCE, facts
    assert facts["allowed"] == "1 min", facts  # one interval of the every-minute cron
    assert facts["running for"] and facts["deadline"] != "unknown", facts  # how late
    assert facts["last good backup"].startswith(f"{good_backup_id} ("), facts
    run_link = f"{deployment.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"
    assert f"href='{run_link}'" in body, body
    assert deployment.key_material not in mail.as_string()

    # the every-minute cron made no runs of its own: only the two the test triggered
    r = api.get(f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})
    r.raise_for_status()
    assert sorted(d["dag_run_id"] for d in r.json()["dag_runs"]) == sorted([good_run, run_id])
