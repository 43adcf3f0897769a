"""A real Airflow deployment for the end-to-end tests, started on 127.0.0.1 and torn down at
the end of the session.

``airflow_deployment`` (session scope):

* the Airflow deployment itself is an :class:`AirflowStack`
  (include/backup/testing/airflow_stack.py, shared with bench/bench_scheduler.py): a
  throwaway PostgreSQL 15 metadata cluster, an Airflow home in a temporary directory, the
  repository's ``dags/`` and ``plugins/``, ``PYTHONPATH`` = the repository root,
  LocalExecutor, SimpleAuthManager with one ``admin`` user whose password is written to the
  passwords file beforehand (so ``POST /auth/token`` works without reading generated
  passwords from the logs); this fixture adds everything project-specific below through
  ``env_extra``;
* a second throwaway PostgreSQL 15 cluster (:class:`PgCluster`) with the backup source
  databases ``events`` and ``slow_events`` (sample data);
* a backup config (a files source, a postgres source, two local-disk targets); the key
  ring connection ``backup_encryption`` is created through the REST API once the stack is
  up (with apache-airflow-client, in the masked shape: keys under the extra
  ``secret_keys``), so it lives in the metadata DB where the connections API and the UI
  show it, and the tasks read it through the execution API (tests/e2e/test_key_masking.py
  checks what the API shows); the ``e2e_pg`` source's connection is *not* in the
  environment either: the tests create it through the REST API;
* a files source ``e2e_drill`` (schedule ``e2e_drill_full``) with a scheduled DR drill
  (``dr.drills``, RESTORE_TEST into a scratch directory): only
  tests/e2e/test_dr_drill_live.py backs it up and triggers ``dr_monitor``; the other
  sources have no drill entry, so a monitor run starts no ``dr_test`` for them;
* the alert mails go to a real SMTP catcher (``smtp_server`` from
  tests/integration/smtp_service.py), and a third files schedule (``e2e_gone_full``) whose
  directory a test deletes to force a failure;
* deadline alerts on (``BACKUP_DEADLINE_ALERTS=on``), and a fourth schedule
  (``e2e_slow_pg_full``, cron ``* * * * *``: BACKUP_LATE one minute after a run is queued)
  over its own database ``slow_events`` in the source cluster, whose connection is in the
  environment; tests/e2e/test_deadline_alert.py holds a lock on one of its tables so that
  one run is late for a real reason. ``[scheduler] use_job_schedule = False``: the scheduler
  makes no runs from the cron schedules (a ``* * * * *`` DAG would otherwise run every
  minute), only the runs the tests trigger through the API run; 1 s heartbeats and a 5 s
  DAG re-parse interval (:data:`E2E_AIRFLOW_SETTINGS`) so that the tests wait less;
* the stack runs ``airflow db migrate``, then ``api-server``, ``scheduler``,
  ``dag-processor`` and ``triggerer`` as subprocesses, each in its own process group, and
  waits until ``/api/v2/monitor/health`` reports every component healthy (if not, the
  fixture fails with each component's log tail).

Teardown kills every process group the stack started (SIGTERM, then SIGKILL) and stops both
clusters, so nothing is left listening.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from include.backup.keys import KeyRing
from include.backup.testing.airflow_stack import AirflowStack, AirflowStackError
from include.backup.testing.postgres import PgCluster, load_sample_data
from tests.conftest import SHARED_DEPLOYMENT, scope_of
from tests.integration.smtp_service import SmtpServer  # the smtp_server fixture: tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 420  # a ceiling, not a timed assertion (see include/backup/testing/airflow_stack.py)
PG_SOURCE_CONN_ID = "e2e_events_pg"
FILES_SCHEDULE = "e2e_files_full"
PG_SCHEDULE = "e2e_pg_full"
GONE_SCHEDULE = "e2e_gone_full"
"""A files schedule whose directory the tests delete to force a backup failure."""
SLOW_SCHEDULE = "e2e_slow_pg_full"
"""A postgres schedule with a one-minute cron: BACKUP_LATE fires a minute after a run is
queued (tests/e2e/test_deadline_alert.py makes one run late with a table lock)."""
SLOW_SOURCE = "e2e_slow_pg"
SLOW_DB = "slow_events"
SLOW_CONN_ID = "e2e_slow_pg"
DRILL_SOURCE = "e2e_drill"
DRILL_SCHEDULE = "e2e_drill_full"
"""A files schedule whose source has a scheduled DR drill (``dr.drills``): only
tests/e2e/test_dr_drill_live.py backs it up, so no other test's DR tests or mails touch it."""
KEY_ID = "e2e-key-1"
KEY_CONN_ID = "backup_encryption"
E2E_AIRFLOW_SETTINGS = {
    # short heartbeats: the tests wait seconds, not minutes
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    # Airflow's default re-parse interval (30 s), not less: every re-parse of the three DAG
    # files costs a few seconds of CPU, and a stack re-parsing every 5 s took half a core
    # for as long as it lived, beside the runs of every other test on the machine.
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
    # A task process re-parses its DAG file within Airflow's DAG import timeout (30 s),
    # or is rescheduled and, after 3 reschedules, failed: a ceiling on a busy test machine.
    "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    # No runs from the cron schedules (e2e_slow_pg_full would run every minute): only the
    # runs the tests trigger.
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
}
"""The Airflow settings of the e2e deployment beyond :class:`AirflowStack`'s own."""


def make_files(root: Path) -> None:
    (root / "docs/sub").mkdir(parents=True)
    for i in range(30):
        (root / f"docs/file-{i:02d}.txt").write_text(f"e2e content {i}\n" * (20 + i))
    (root / "docs/sub/résumé ✓.txt").write_text("non-ASCII name\n")
    (root / "docs/run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "docs/run.sh").chmod(0o755)
    (root / "docs/link").symlink_to("sub")
    (root / "docs/skip.tmp").write_text("excluded")


def backup_config(base: Path, files_root: Path) -> str:
    return f"""# written by tests/e2e/conftest.py
dr:
  rto_hours: 4
  rpo_hours: 1
  backup_retention_days: 30
  test_frequency_days: 90
  notification_emails: [oncall@example.com]
  drills:
    {DRILL_SOURCE}: {{into: {base}/drill-scratch, test_type: RESTORE_TEST}}
encryption:
  key_conn_id: backup_encryption
  key_rotation_days: 30
staging_dir: {base}/staging
targets:
  local: {{type: local, path: {base}/backups}}
  offsite: {{type: local, path: {base}/offsite, offsite: true}}
sources:
  e2e_pg: {{type: postgres, conn_id: {PG_SOURCE_CONN_ID}}}
  e2e_files:
    type: files
    paths: [{files_root}/docs]
    exclude: ["*.tmp"]
  e2e_gone: {{type: files, paths: [{base}/gone]}}
  {SLOW_SOURCE}: {{type: postgres, conn_id: {SLOW_CONN_ID}, database: {SLOW_DB}}}
  {DRILL_SOURCE}: {{type: files, paths: [{base}/drill-data]}}
schedules:
  - {{name: {FILES_SCHEDULE}, source: e2e_files, type: FULL, cron: "0 1 * * *", targets: [local, offsite],
     retention_days: 30}}
  - {{name: {PG_SCHEDULE}, source: e2e_pg, type: FULL, cron: "0 2 * * *", targets: [local],
     retention_days: 30}}
  - {{name: {GONE_SCHEDULE}, source: e2e_gone, type: FULL, cron: "0 3 * * *", targets: [local],
     retention_days: 30}}
  - {{name: {SLOW_SCHEDULE}, source: {SLOW_SOURCE}, type: FULL, cron: "* * * * *", targets: [local],
     retention_days: 30}}
  - {{name: {DRILL_SCHEDULE}, source: {DRILL_SOURCE}, type: FULL, cron: "0 4 * * *", targets: [local],
     retention_days: 30}}
"""


@dataclass
class AirflowDeployment:
    """The running deployment (:attr:`stack`) and the project's parts around it."""

    stack: AirflowStack
    base: Path
    files_root: Path
    config_path: Path
    key_material: str
    """The base64 of the active key (the tests check it appears nowhere)."""
    source_pg: PgCluster
    smtp: SmtpServer

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def password(self) -> str:
        return self.stack.password

    @property
    def home(self) -> Path:
        return self.stack.home

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.stack.procs

    def token(self) -> str:
        return self.stack.token()

    def client(self) -> httpx.Client:
        return self.stack.client()

    def logs(self, component: str) -> str:
        return self.stack.logs(component)


def project_env(base: Path, config_path: Path, source_pg: PgCluster) -> dict[str, str]:
    """What the deployment gets on top of the stack: the e2e Airflow settings, the backup
    config, alerts and the connections that live in the environment (not the key ring:
    :func:`create_key_connection`)."""
    return {
        **E2E_AIRFLOW_SETTINGS,
        "BACKUP_CONFIG": str(config_path),
        # Deadline alerts as in production: the scheduler and the triggerer handle them
        # (only `airflow dags test` needs them off, docs/alerts.md).
        "BACKUP_DEADLINE_ALERTS": "on",
        # the alert mails go to the SMTP catcher (aiosmtpd, plain SMTP)
        "AIRFLOW_CONN_SMTP_DEFAULT": os.environ["AIRFLOW_CONN_SMTP_DEFAULT"],
        "BACKUP_ALERTS_STATE_DIR": str(base),
        f"AIRFLOW_CONN_{SLOW_CONN_ID.upper()}": json.dumps(
            {
                "conn_type": "postgres",
                "host": source_pg.host,
                "port": source_pg.port,
                "login": "postgres",
                "schema": SLOW_DB,
            }
        ),
    }


def create_key_connection(stack: AirflowStack, ring: KeyRing) -> None:
    """``POST /api/v2/connections`` of the key ring connection, as an operator would make it
    (docs/keys.md): keys under the extra ``secret_keys``."""
    from airflow_client.client import ConnectionApi, ConnectionBody

    conn = ring.to_connection()
    body = ConnectionBody(
        connection_id=KEY_CONN_ID, conn_type=conn["conn_type"], extra=json.dumps(conn["extra"])
    )
    with stack.api_client() as client:
        ConnectionApi(client).post_connection(body)


_STARTED: list[AirflowStack] = []
"""The session deployment while it runs, for :func:`pytest_runtest_teardown` to stop."""


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the session deployment once the last test that uses it is done. The files that
    use it run as one unit, one after another (tests/conftest.py), so the next test tells:
    an idle deployment kept its scheduler polling and its DAG files re-parsed until the
    worker's last test, beside everything else the machine ran."""
    if _STARTED and (nextitem is None or scope_of(nextitem.nodeid) != SHARED_DEPLOYMENT):
        _STARTED.pop().stop()


@pytest.fixture(scope="session")
def airflow_deployment(
    tmp_path_factory: pytest.TempPathFactory,
    smtp_server: SmtpServer,
) -> Iterator[AirflowDeployment]:
    base = tmp_path_factory.mktemp("e2e")
    (base / "gone").mkdir()
    (base / "gone/a.txt").write_text("deleted by the failure test\n")
    (base / "drill-data/sub").mkdir(parents=True)
    for i in range(5):
        (base / f"drill-data/sub/drill-{i}.txt").write_text(f"drilled {i}\n" * (10 + i))
    files_root = base / "data"
    make_files(files_root)
    ring = KeyRing.generate(base / "keys.json", KEY_ID)
    (base / "keys.json").unlink()  # the ring lives only in the connection, as in production
    config_path = base / "backup_config.yaml"
    config_path.write_text(backup_config(base, files_root))

    with PgCluster() as source_pg:
        load_sample_data(source_pg, "events", rows=2000)
        load_sample_data(source_pg, SLOW_DB, rows=200)
        stack = AirflowStack(
            base,
            ROOT / "dags",
            project_env(base, config_path, source_pg),
            parallelism=8,
            plugins_folder=ROOT / "plugins",
            pythonpath=ROOT,
            start_timeout_s=START_TIMEOUT_S,
        )
        try:
            stack.start()  # stops whatever it started if it fails
        except AirflowStackError as e:
            pytest.fail(str(e))
        _STARTED.append(stack)
        try:
            create_key_connection(stack, ring)
            yield AirflowDeployment(
                stack=stack,
                base=base,
                files_root=files_root,
                config_path=config_path,
                key_material=ring.to_json()["keys"][KEY_ID],
                source_pg=source_pg,
                smtp=smtp_server,
            )
        finally:
            stack.stop()  # safe when pytest_runtest_teardown stopped it already
            _STARTED.clear()
