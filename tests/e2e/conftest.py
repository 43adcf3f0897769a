"""A real Airflow deployment for the end-to-end tests, started on 127.0.0.1 and torn down at
the end of the session.

``airflow_deployment`` (session scope):

* two throwaway PostgreSQL 15 clusters (:class:`PgCluster`): one holds the Airflow metadata
  database ``airflow``, the other the backup source database ``events`` (sample data);
* an Airflow home in a temporary directory, the repository's ``dags/`` and ``plugins/``,
  ``PYTHONPATH`` = the repository root, LocalExecutor, SimpleAuthManager with one ``admin``
  user whose password is written to the passwords file beforehand (so ``POST /auth/token``
  works without reading generated passwords from the logs);
* a backup config (a files source, a postgres source, two local-disk targets) and the key
  ring in ``AIRFLOW_CONN_BACKUP_ENCRYPTION`` (like scripts/demo.py); the postgres source's
  connection is *not* in the environment: the tests create it through the REST API;
* the alert mails go to a real SMTP catcher (``smtp_server`` from
  tests/integration/smtp_service.py), and a third files schedule (``e2e_gone_full``) whose
  directory a test deletes to force a failure;
* ``airflow db migrate``, then ``api-server``, ``scheduler``, ``dag-processor`` and
  ``triggerer`` as subprocesses, each in its own process group; the fixture waits until
  ``/api/v2/monitor/health`` reports every component healthy.

Teardown kills every process group it started (SIGTERM, then SIGKILL) and stops both
clusters, so nothing is left listening.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.backup.keys import KeyRing
from include.backup.testing.postgres import PgCluster, free_port, load_sample_data
from tests.integration.smtp_service import SmtpServer, smtp_server  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ADMIN_USER = "admin"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
START_TIMEOUT_S = 180
PG_SOURCE_CONN_ID = "e2e_events_pg"
FILES_SCHEDULE = "e2e_files_full"
PG_SCHEDULE = "e2e_pg_full"
GONE_SCHEDULE = "e2e_gone_full"
"""A files schedule whose directory the tests delete to force a backup failure."""
KEY_ID = "e2e-key-1"


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
schedules:
  - {{name: {FILES_SCHEDULE}, source: e2e_files, type: FULL, cron: "0 1 * * *", targets: [local, offsite],
     retention_days: 30}}
  - {{name: {PG_SCHEDULE}, source: e2e_pg, type: FULL, cron: "0 2 * * *", targets: [local],
     retention_days: 30}}
  - {{name: {GONE_SCHEDULE}, source: e2e_gone, type: FULL, cron: "0 3 * * *", targets: [local],
     retention_days: 30}}
"""


@dataclass
class AirflowDeployment:
    url: str
    password: str
    home: Path
    base: Path
    files_root: Path
    config_path: Path
    key_material: str
    source_pg: PgCluster
    smtp: SmtpServer
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str | None = None

    def token(self) -> str:
        if self._token is None:
            r = httpx.post(
                f"{self.url}/auth/token",
                json={"username": ADMIN_USER, "password": self.password},
                timeout=30,
            )
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v2",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
        )

    def logs(self, component: str) -> str:
        path = self.home / f"{component}.out"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""


def _health(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{url}/api/v2/monitor/health", timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def _all_healthy(health: dict[str, Any] | None) -> bool:
    if not health:
        return False
    wanted = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all((health.get(k) or {}).get("status") == "healthy" for k in wanted)


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # the group may hold children that outlive the leader (task supervisors, gunicorn/uvicorn workers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def airflow_deployment(
    tmp_path_factory: pytest.TempPathFactory,
    smtp_server: SmtpServer,  # noqa: F811 - the imported fixture
) -> Iterator[AirflowDeployment]:
    base = tmp_path_factory.mktemp("e2e")
    (base / "gone").mkdir()
    (base / "gone/a.txt").write_text("deleted by the failure test\n")
    home = base / "airflow"
    home.mkdir()
    files_root = base / "data"
    make_files(files_root)
    KeyRing.generate(base / "keys.json", KEY_ID)
    key_json = json.loads((base / "keys.json").read_text())
    (base / "keys.json").unlink()  # the ring lives only in the connection env, as in production
    config_path = base / "backup_config.yaml"
    config_path.write_text(backup_config(base, files_root))

    password = secrets.token_urlsafe(12)
    passwords_file = home / "simple_auth_manager_passwords.json"
    passwords_file.write_text(json.dumps({ADMIN_USER: password}) + "\n")

    procs: dict[str, subprocess.Popen[bytes]] = {}
    with PgCluster() as meta_pg, PgCluster() as source_pg:
        try:
            meta_pg.create_database("airflow")
            load_sample_data(source_pg, "events", rows=2000)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = dict(os.environ)
            for key in list(env):
                if key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")):
                    del env[key]
            env.pop("BACKUP_KEY_FILE", None)
            env.update(
                {
                    "AIRFLOW_HOME": str(home),
                    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                    "AIRFLOW__CORE__PARALLELISM": "8",
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                    "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                        f"postgresql+psycopg2://postgres@127.0.0.1:{meta_pg.port}/airflow"
                    ),
                    "AIRFLOW__API__HOST": "127.0.0.1",
                    "AIRFLOW__API__PORT": str(port),
                    "AIRFLOW__API__BASE_URL": url,
                    "AIRFLOW__API__WORKERS": "1",
                    "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                    "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
                    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
                    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                    "PYTHONPATH": str(ROOT),
                    "BACKUP_CONFIG": str(config_path),
                    "BACKUP_DEADLINE_ALERTS": "off",
                    # the alert mails go to the SMTP catcher (aiosmtpd, plain SMTP)
                    "AIRFLOW_CONN_SMTP_DEFAULT": os.environ["AIRFLOW_CONN_SMTP_DEFAULT"],
                    "BACKUP_ALERTS_STATE_DIR": str(base),
                    "AIRFLOW_CONN_BACKUP_ENCRYPTION": json.dumps({"conn_type": "generic", "extra": key_json}),
                }
            )
            migrate = subprocess.run(
                [str(BIN / "airflow"), "db", "migrate"],
                env=env,
                cwd=base,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if migrate.returncode != 0:
                pytest.fail(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}")
            for component in COMPONENTS:
                argv = [str(BIN / "airflow"), component]
                if component == "api-server":
                    argv += ["--host", "127.0.0.1", "--port", str(port)]
                elif component in ("scheduler", "triggerer"):
                    # Their log server binds every interface (host "" is hard-coded in
                    # airflow.utils.serve_logs); servers here bind to loopback only, and the
                    # api-server reads the task logs from the shared local log folder.
                    argv.append("--skip-serve-logs")
                out = open(home / f"{component}.out", "wb")  # noqa: SIM115 - the child owns it
                procs[component] = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=base,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                out.close()
            deployment = AirflowDeployment(
                url=url,
                password=password,
                home=home,
                base=base,
                files_root=files_root,
                config_path=config_path,
                key_material=key_json["keys"][KEY_ID],
                source_pg=source_pg,
                smtp=smtp_server,
                env=env,
                procs=procs,
            )
            atexit.register(_stop, procs)  # a safety net if the session dies before teardown
            deadline = time.monotonic() + START_TIMEOUT_S
            health: dict[str, Any] | None = None
            while not _all_healthy(health := _health(url)):
                dead = [c for c, p in procs.items() if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    detail = "\n".join(f"--- {c}\n{deployment.logs(c)}" for c in COMPONENTS)
                    pytest.fail(f"Airflow did not become healthy (dead: {dead}; health: {health}):\n{detail}")
                time.sleep(1)
            yield deployment
        finally:
            _stop(procs)
            atexit.unregister(_stop)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
