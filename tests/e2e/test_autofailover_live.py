"""Auto-failover driven by a live Airflow scheduler: ``dr_monitor`` runs, triggered through
the REST API, watch a real PostgreSQL 15 primary with its hot standby and fail it over alone.

A stack of its own (``dr.auto_failover: true`` waives the failover DAG's confirmation, which
tests/e2e/test_rest_client.py checks is required in the shared deployment). A flapping
primary (down for one monitor run, then back) triggers nothing; a primary down for
``dr.failover_after_checks`` (3) consecutive runs makes the third run's ``trigger_dr_runs``
start ``failover`` run ``autofailover__events_pg__<first failed check>``, which promotes
the standby, and its ``notify`` task mails DR_ACTIVATED once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.backup.keys import KeyRing
from include.backup.testing import PgCluster, load_sample_data
from include.backup.testing.airflow_stack import AirflowStack, AirflowStackError
from tests.e2e.conftest import E2E_AIRFLOW_SETTINGS
from tests.integration.smtp_service import SmtpServer

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 600.0  # a ceiling for polling, not a timed assertion
DB = "events"


def conn_json(cluster: PgCluster) -> str:
    conn = {"conn_type": "postgres", "host": cluster.host, "port": cluster.port, "login": "postgres"}
    return json.dumps({**conn, "schema": DB})


def write_config(base: Path) -> Path:
    config = base / "backup_config.yaml"
    config.write_text(f"""
staging_dir: {base}/staging
dr:
  notification_emails: [oncall@example.com]
  auto_failover: true
  failover:
    events_pg:
      switch: {{kind: promote_standby, conn_id: events_pg_standby, timeout_seconds: 60}}
targets:
  disk1: {{type: local, path: {base}/t1}}
sources:
  events_pg: {{type: postgres, conn_id: events_pg}}
schedules:
  - {{name: pg_full, source: events_pg, type: FULL, cron: "@daily", targets: [disk1]}}
""")
    return config


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpServer) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("autofailover")
    KeyRing.generate(base / "keys.json", "af-k1")
    with PgCluster() as primary:
        load_sample_data(primary, DB, rows=200)
        standby = primary.start_standby()
        env = {
            **E2E_AIRFLOW_SETTINGS,
            "BACKUP_CONFIG": str(write_config(base)),
            "BACKUP_KEY_FILE": str(base / "keys.json"),
            "BACKUP_DEADLINE_ALERTS": "off",
            "BACKUP_ALERTS_STATE_DIR": str(base),
            # the smtp_server fixture points it at the session's SMTP catcher
            "AIRFLOW_CONN_SMTP_DEFAULT": os.environ["AIRFLOW_CONN_SMTP_DEFAULT"],
            "AIRFLOW_CONN_EVENTS_PG": conn_json(primary),
            "AIRFLOW_CONN_EVENTS_PG_STANDBY": conn_json(standby),
        }
        stack = AirflowStack(base, ROOT / "dags", env, parallelism=4, pythonpath=ROOT)
        try:
            stack.start()
            stack.wait_for_dags({"backup__pg_full", "dr_monitor", "failover"}, timeout=300)
        except AirflowStackError as e:
            stack.stop()
            standby.stop()
            pytest.fail(str(e))
        try:
            yield {"stack": stack, "primary": primary, "standby": standby, "smtp": smtp_server}
        finally:
            stack.stop()
            standby.stop()


def trigger(api: httpx.Client, dag_id: str) -> str:
    r = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": {}})
    assert r.status_code == 200, r.text
    return str(r.json()["dag_run_id"])


def finished(api: httpx.Client, dag_id: str, run_id: str) -> str:
    """The run's final state (polled up to a ceiling), with its task states when it did not succeed."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = "?"
    while time.monotonic() < deadline:
        state = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(2)
    if state == "success":
        return state
    tis = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json().get("task_instances", [])
    return f"{state}: {[(t['task_id'], t['map_index'], t['state']) for t in tis]}"


def monitor_round(api: httpx.Client) -> list[dict[str, Any]]:
    """One dr_monitor run; what its dr_actions step asked trigger_dr_runs to start."""
    run_id = trigger(api, "dr_monitor")
    assert finished(api, "dr_monitor", run_id) == "success"
    r = api.get(f"/dags/dr_monitor/dagRuns/{run_id}/taskInstances/dr_actions/xcomEntries/return_value")
    value = r.raise_for_status().json()["value"]
    return json.loads(value) if isinstance(value, str) else value


def failover_runs(api: httpx.Client) -> list[str]:
    runs = api.get("/dags/failover/dagRuns", params={"limit": 100}).raise_for_status().json()["dag_runs"]
    return [r["dag_run_id"] for r in runs]


def activated_mails(smtp: SmtpServer, run_id: str) -> list[Any]:
    """The DR_ACTIVATED mails of the failover run (the SMTP catcher is the session's)."""

    def text(msg: Any) -> str:
        part = msg.get_body(preferencelist=("plain", "html"))
        return str(part.get_content()) if part is not None else ""

    return [m for m in smtp.messages() if "DR activated" in str(m["Subject"]) and run_id in text(m)]


def test_down_primary_is_failed_over_by_the_live_monitor_alone(deployment: dict[str, Any]) -> None:
    stack: AirflowStack = deployment["stack"]
    primary: PgCluster = deployment["primary"]
    standby: PgCluster = deployment["standby"]
    with stack.client() as api:
        assert finished(api, "backup__pg_full", trigger(api, "backup__pg_full")) == "success"
        primary.wait_for_standby(standby)

        # Flapping: down for one monitor run, then back: nothing is started.
        primary.crash()
        assert monitor_round(api) == []
        primary.resume()
        assert monitor_round(api) == []
        assert failover_runs(api) == []

        # Down for three consecutive runs: the third starts the failover, once.
        primary.crash()
        assert [monitor_round(api) for _ in range(2)] == [[], []]
        (action,) = monitor_round(api)
        run_id = action["trigger_run_id"]
        assert action["trigger_dag_id"] == "failover" and run_id.startswith("autofailover__events_pg__")
        assert (action["conf"]["source"], action["conf"]["confirm"]) == ("events_pg", "events_pg")
        assert finished(api, "failover", run_id) == "success"
        assert failover_runs(api) == [run_id]
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"
    assert standby.psql("SELECT count(*) > 0 FROM users", db=DB) == "t"
    mails = activated_mails(deployment["smtp"], run_id)
    assert len(mails) == 1, [str(m["Subject"]) for m in deployment["smtp"].messages()]
