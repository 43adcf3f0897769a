"""Access control against a real Airflow 3 api-server (docs/security.md#access-control):
simple-auth users ``admin:ADMIN``, ``viewer:VIEWER``, ``operator:OP`` and ``uma:USER``, and
a config with ``dr.reader_roles: [USER, OP, ADMIN]`` and ``dr.operator_roles: [OP, ADMIN]``.

- a viewer reading ``/dr/api/metrics`` gets 403 naming dr.reader_roles; a USER reads it;
- the audit trail (``/dr/api/audit``) is the admin's: an OP gets 403;
- a viewer triggering ``failover`` gets Airflow's own 403 (it never reaches our code);
- an operator triggers it (dry run) and it succeeds;
- a USER, whom Airflow lets trigger any DAG, is refused by the DAG's first task: the
  refusal XCom names dr.operator_roles, an info mail says "refused";
- each attempt that reached our code has its audit record, read back from the target.

One deployment for this module (:class:`AirflowStack`, LocalExecutor, its own metadata
PostgreSQL), with the key ring in a key file both the api-server and the tasks read.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.backup import audit_cli, tasks
from include.backup.config.loader import load_config
from include.backup.keys import KeyRing
from include.backup.testing.airflow_stack import AirflowStack
from tests.e2e.conftest import E2E_AIRFLOW_SETTINGS
from tests.integration.smtp_service import SmtpServer

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
USERS = {"admin": "ADMIN", "viewer": "VIEWER", "operator": "OP", "uma": "USER"}
SOURCE = "acl_files"
SCHEDULE = "acl_files_full"
RUN_TIMEOUT_S = 600  # a ceiling for polling, not a timed assertion


def write_config(base: Path) -> Path:
    (base / "docs").mkdir()
    for i in range(5):
        (base / f"docs/f{i}.txt").write_text(f"access control {i}\n" * 50)
    path = base / "backup_config.yaml"
    path.write_text(
        textwrap.dedent(f"""
        dr:
          notification_emails: [oncall@example.com]
          reader_roles: [USER, OP, ADMIN]
          operator_roles: [OP, ADMIN]
          failover:
            {SOURCE}: {{secondary: {base}/secondary}}
        staging_dir: {base}/staging
        targets:
          local: {{type: local, path: {base}/backups}}
        sources:
          {SOURCE}: {{type: files, paths: [{base}/docs]}}
        schedules:
          - {{name: {SCHEDULE}, source: {SOURCE}, type: FULL, cron: "0 1 * * *", targets: [local]}}
        """)
    )
    return path


def make_backup() -> None:
    """One verified backup at the target, made here (the failover restores it)."""
    meta = tasks.run_dump(SCHEDULE, "acl-setup", datetime.now(UTC))
    meta = tasks.run_checksum(tasks.run_encrypt(meta))
    tasks.run_upload(meta, "local")
    tasks.run_verify(meta, "local")
    tasks.run_cleanup(meta, SCHEDULE)


class Deployment:
    def __init__(self, stack: AirflowStack, config_path: Path, smtp: SmtpServer) -> None:
        self.stack, self.config_path, self.smtp = stack, config_path, smtp
        self._tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self._tokens:
            # The simple auth manager wrote a password for each configured user at start.
            passwords = json.loads((self.stack.home / "simple_auth_manager_passwords.json").read_text())
            r = httpx.post(
                f"{self.stack.url}/auth/token",
                json={"username": user, "password": passwords[user]},
                timeout=30,
            )
            r.raise_for_status()
            self._tokens[user] = str(r.json()["access_token"])
        return self._tokens[user]

    def get(self, user: str, path: str) -> httpx.Response:
        return httpx.get(
            f"{self.stack.url}{path}", headers={"Authorization": f"Bearer {self.token(user)}"}, timeout=60
        )

    def api(self, user: str) -> Any:
        import airflow_client.client as airflow_client  # the official REST client (requirements-dev)

        config = airflow_client.Configuration(host=self.stack.url, access_token=self.token(user))
        return airflow_client.ApiClient(config)

    def records(self) -> list[dict[str, Any]]:
        rows, problems = audit_cli.list_rows(load_config(self.config_path).config)
        assert problems == []
        return rows

    def wait_record(self, reason_prefix: str = "", **want: Any) -> dict[str, Any]:
        """The audit record with these fields and a reason starting with ``reason_prefix``
        (the api-server writes them in a background thread: poll until it is there)."""
        deadline = time.monotonic() + 60
        while True:
            found = [
                r
                for r in self.records()
                if all(r.get(k) == v for k, v in want.items()) and r["reason"].startswith(reason_prefix)
            ]
            if found or time.monotonic() > deadline:
                have = [(r["actor"], r["action"], r["result"]) for r in self.records()]
                assert found, f"no audit record with {want}; have {have}"
                return found[-1]
            time.sleep(0.5)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpServer) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("acl")
    config_path = write_config(base)
    KeyRing.generate(base / "keys.json", "acl-key-1")
    env = {"BACKUP_CONFIG": str(config_path), "BACKUP_KEY_FILE": str(base / "keys.json")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        make_backup()
        extra = {
            **E2E_AIRFLOW_SETTINGS,
            **env,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW_CONN_SMTP_DEFAULT": os.environ["AIRFLOW_CONN_SMTP_DEFAULT"],
            "BACKUP_ALERTS_STATE_DIR": str(base),
        }
        stack = AirflowStack(base / "stack", ROOT / "dags", extra)
        with stack:
            stack.wait_for_dags({"failover", "restore", "dr_test"})
            yield Deployment(stack, config_path, smtp_server)


def trigger(deployment: Deployment, user: str, dag_id: str, conf: dict[str, Any]) -> str:
    from airflow_client.client import DagRunApi, TriggerDAGRunPostBody

    with deployment.api(user) as api:
        return str(
            DagRunApi(api)
            .trigger_dag_run(dag_id, TriggerDAGRunPostBody(logical_date=None, conf=conf))
            .dag_run_id
        )


def wait_run(deployment: Deployment, dag_id: str, run_id: str) -> str:
    from airflow_client.client import DagRunApi

    deadline = time.monotonic() + RUN_TIMEOUT_S
    with deployment.api("admin") as api:
        while True:
            state = DagRunApi(api).get_dag_run(dag_id=dag_id, dag_run_id=run_id).state.value
            if state in ("success", "failed") or time.monotonic() > deadline:
                return str(state)
            time.sleep(1)


def xcom(deployment: Deployment, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
    from airflow_client.client import XComApi

    with deployment.api("admin") as api:
        entry = XComApi(api).get_xcom_entry(dag_id=dag_id, task_id=task_id, dag_run_id=run_id, xcom_key=key)
    value = entry.actual_instance.value if hasattr(entry, "actual_instance") else entry.value
    return json.loads(value) if isinstance(value, str) else value


FAILOVER_CONF = {"source": SOURCE, "confirm": SOURCE, "dry_run": True}


def test_a_viewer_reading_dr_metrics_gets_403_naming_the_config(deployment):
    r = deployment.get("viewer", "/dr/api/metrics")
    assert r.status_code == 403
    assert "dr.reader_roles (USER, OP, ADMIN); you have viewer" in r.json()["detail"]
    page = httpx.get(
        f"{deployment.stack.url}/dr/",
        cookies={"_token": deployment.token("viewer")},
        headers={"accept": "text/html"},
        timeout=60,
    )
    assert page.status_code == 403 and "dr.reader_roles" in page.text
    record = deployment.wait_record(
        "GET /dr/api/metrics: ", actor="viewer", action="dr_read", result="refused"
    )
    assert "dr.reader_roles" in record["reason"]
    deployment.wait_record("GET /dr/: ", actor="viewer", action="dr_read", result="refused")


def test_a_user_in_reader_roles_reads_the_figures(deployment):
    r = deployment.get("uma", "/dr/api/metrics")
    assert r.status_code == 200
    assert r.json()["sources"][SOURCE]["last_good_backup_id"]
    deployment.wait_record(actor="uma", action="dr_read", result="ok", reason="GET /dr/api/metrics")


def test_the_audit_trail_is_the_admins(deployment):
    denied = deployment.get("operator", "/dr/api/audit")
    assert denied.status_code == 403
    assert "dr.audit_roles (admin); you have op" in denied.json()["detail"]
    deployment.wait_record(actor="operator", action="audit", result="refused")
    r = deployment.get("admin", "/dr/api/audit")
    assert r.status_code == 200
    assert ("viewer", "dr_read", "refused") in {
        (x["actor"], x["action"], x["result"]) for x in r.json()["records"]
    }


def test_a_viewer_triggering_failover_gets_403_from_airflow(deployment):
    from airflow_client.client.exceptions import ApiException

    with pytest.raises(ApiException) as err:
        trigger(deployment, "viewer", "failover", FAILOVER_CONF)
    assert err.value.status == 403
    # Refused by Airflow before any run exists: nothing of ours ran, so no failover record.
    assert not [r for r in deployment.records() if r["action"] == "failover" and r["actor"] == "viewer"]


def test_an_operator_fails_over_in_a_dry_run(deployment):
    run_id = trigger(deployment, "operator", "failover", FAILOVER_CONF)
    assert wait_run(deployment, "failover", run_id) == "success"
    record = deployment.wait_record(action="failover", run_id=run_id, result="ok")
    assert record["actor"] == "operator" and record["reason"] == "dry run"


def test_a_user_outside_operator_roles_is_refused_by_our_task(deployment):
    run_id = trigger(deployment, "uma", "failover", FAILOVER_CONF)  # Airflow lets a USER trigger
    assert wait_run(deployment, "failover", run_id) == "failed"
    refusal = xcom(deployment, "failover", run_id, "validate_params", "refusal")
    assert "dr.operator_roles (OP, ADMIN); user 'uma' has user" in refusal["reason"]
    record = deployment.wait_record(action="failover", run_id=run_id, actor="uma", source=SOURCE)
    assert record["result"] == "refused" and "dr.operator_roles" in record["reason"]
    assert not [r for r in deployment.records() if r["run_id"] == run_id and r["result"] == "ok"]
    deadline = time.monotonic() + 60
    while not (mails := mails_of(deployment, run_id)) and time.monotonic() < deadline:
        time.sleep(1)
    assert mails, "no REQUEST_REFUSED mail for the refused run"
    assert "refused" in str(mails[0]["Subject"]).lower()


def mails_of(deployment: Deployment, run_id: str) -> list[Any]:
    def text(msg: Any) -> str:
        part = msg.get_body(preferencelist=("plain", "html"))
        return str(part.get_content()) if part is not None else ""

    return [m for m in deployment.smtp.messages() if run_id in text(m)]
