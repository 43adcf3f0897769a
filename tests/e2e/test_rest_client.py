"""End to end through the official typed REST client (apache-airflow-client, pinned in
requirements-dev.txt), the way automation users drive the deployment: what they found
missing is checked here against the real Airflow of tests/e2e/conftest.py.

- trigger-only DAGs (restore, dr_test, failover) are created unpaused;
- a backup's id is named by when it was taken, its manifest keeps the logical date and the
  run id, its verified backup is one asset event on ``backup://<source>`` with the id,
  sizes and targets, and ``/dr/api/backups`` carries the run id and refuses an unknown type;
- a refusal (failover without ``confirm``, a relative restore destination) says why in the
  task's XCom ``refusal`` and as a plain line the typed ``get_log`` keeps, and mails an
  info "refused" message, not "[CRITICAL] Backup failed";
- the dr_test aliases of docs/dr.md pass the param schema; an unknown type is a 400.

The tests run in file order (the restore uses the backup of the first backup test).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from airflow_client.client import (
    ApiClient,
    AssetApi,
    DAGApi,
    DagRunApi,
    TaskInstanceApi,
    TriggerDAGRunPostBody,
    XComApi,
)
from airflow_client.client.exceptions import ApiException

from tests.e2e.conftest import FILES_SCHEDULE, AirflowDeployment

pytestmark = [pytest.mark.e2e]

RUN_TIMEOUT_S = 600  # a ceiling for polling, not a timed assertion
PARSE_TIMEOUT_S = 90
TRIGGER_ONLY = ("restore", "dr_test", "failover")
BACKUP_DAG = f"backup__{FILES_SCHEDULE}"
# a past interval: the run it makes is taken now, and named so
LOGICAL = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)

STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def client(airflow_deployment: AirflowDeployment) -> Iterator[ApiClient]:
    with airflow_deployment.stack.api_client() as api:
        yield api


def trigger(client: ApiClient, dag_id: str, conf: dict[str, Any], logical: datetime | None = None) -> str:
    body = TriggerDAGRunPostBody(logical_date=logical, conf=conf)
    return DagRunApi(client).trigger_dag_run(dag_id, body).dag_run_id


def wait_run(client: ApiClient, dag_id: str, run_id: str) -> Any:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run = DagRunApi(client).get_dag_run(dag_id=dag_id, dag_run_id=run_id)
    while run.state.value not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(1)
        run = DagRunApi(client).get_dag_run(dag_id=dag_id, dag_run_id=run_id)
    return run


def task_states(client: ApiClient, dag_id: str, run_id: str) -> dict[str, str]:
    tis = TaskInstanceApi(client).get_task_instances(dag_id=dag_id, dag_run_id=run_id).task_instances
    return {f"{t.task_id}[{t.map_index}]": str(t.state.value if t.state else None) for t in tis}


def xcom(client: ApiClient, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    # get_xcom_entry takes (dag_id, task_id, dag_run_id): keywords, not positions
    entry = XComApi(client).get_xcom_entry(dag_id=dag_id, task_id=task_id, dag_run_id=run_id, xcom_key=key)
    value = entry.actual_instance.value if hasattr(entry, "actual_instance") else entry.value
    return json.loads(value) if isinstance(value, str) else value


def log_events(client: ApiClient, dag_id: str, run_id: str, task_id: str) -> list[str]:
    """The log as the typed client returns it: structured records keep only ``event``."""
    content = TaskInstanceApi(client).get_log(
        dag_id=dag_id, dag_run_id=run_id, task_id=task_id, try_number=1, full_content=True
    ).content
    items = content.actual_instance if hasattr(content, "actual_instance") else content
    return [getattr(i, "event", None) or str(i) for i in items or []]


def mails_of(deployment: AirflowDeployment, run_id: str) -> list[Any]:
    def text(msg: Any) -> str:
        part = msg.get_body(preferencelist=("plain", "html"))
        return str(part.get_content()) if part is not None else ""

    return [m for m in deployment.smtp.messages() if run_id in text(m)]


def manifest_of_run(base: Path, run_id: str) -> dict[str, Any]:
    found = [
        json.loads(p.read_text())
        for p in (base / "backups").rglob("manifest.json")
        if json.loads(p.read_text()).get("dag_run_id") == run_id
    ]
    assert len(found) == 1, found
    return found[0]


def dr_api(deployment: AirflowDeployment, params: dict[str, str]) -> httpx.Response:
    return httpx.get(
        f"{deployment.url}/dr/api/backups",
        params={**params, "refresh": "true"},
        headers={"Authorization": f"Bearer {deployment.token()}"},
        timeout=60,
    )


# --- the tests -----------------------------------------------------------------------------


def test_trigger_only_dags_are_created_unpaused(client: ApiClient) -> None:
    deadline = time.monotonic() + PARSE_TIMEOUT_S
    details: dict[str, Any] = {}
    while len(details) < len(TRIGGER_ONLY) and time.monotonic() < deadline:
        for dag_id in TRIGGER_ONLY:
            try:
                details[dag_id] = DAGApi(client).get_dag_details(dag_id)
            except ApiException:
                time.sleep(2)  # not parsed yet
    assert {d: (v.is_paused_upon_creation, v.is_paused) for d, v in details.items()} == {
        d: (False, False) for d in TRIGGER_ONLY
    }


def test_backup_is_named_by_when_it_was_taken_and_emits_one_asset_event(
    client: ApiClient, airflow_deployment: AirflowDeployment
) -> None:
    run_id = trigger(client, BACKUP_DAG, {}, logical=LOGICAL)
    run = wait_run(client, BACKUP_DAG, run_id)
    assert run.state.value == "success", task_states(client, BACKUP_DAG, run_id)
    manifest = manifest_of_run(airflow_deployment.base, run_id)
    backup_id = manifest["backup_id"]
    # the run's start (when it was taken), not the interval's T010000Z
    assert run.start_date.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") in backup_id
    assert "20260101T010000Z" not in backup_id
    assert datetime.fromisoformat(manifest["logical_date"]) == LOGICAL
    STATE["backup_id"] = backup_id

    events = AssetApi(client).get_asset_events(source_dag_id=BACKUP_DAG, source_run_id=run_id).asset_events
    # Asset("backup://e2e_files"), as Airflow normalises its URI
    assert [(e.uri, e.source_task_id) for e in events] == [("backup://e2e_files/", "cleanup")]
    extra = events[0].extra or {}
    assert extra["backup_id"] == backup_id and sorted(extra["targets"]) == ["local", "offsite"]
    assert extra["stored_size"] == manifest["stored_size"] and extra["raw_size"] == manifest["raw_size"]

    listed = dr_api(airflow_deployment, {"source": "e2e_files"})
    assert listed.status_code == 200 and "backups" in listed.json(), (listed.status_code, listed.text[:500])
    rows = listed.json()["backups"]
    assert [r["dag_run_id"] for r in rows if r["backup_id"] == backup_id] == [run_id]
    bogus = dr_api(airflow_deployment, {"type": "BOGUS"})
    assert bogus.status_code == 400 and "FULL, INCREMENTAL, TRANSACTION_LOG, SCHEMA" in bogus.json()["detail"]


def test_failover_without_confirm_is_a_visible_refusal_not_a_failure_page(
    client: ApiClient, airflow_deployment: AirflowDeployment
) -> None:
    run_id = trigger(client, "failover", {"source": "e2e_files"})
    run = wait_run(client, "failover", run_id)
    assert run.state.value == "failed", run
    refusal = xcom(client, "failover", run_id, "validate_params", key="refusal")
    assert "confirm" in refusal["reason"] and refusal["touched_nothing"] is True
    events = log_events(client, "failover", run_id, "validate_params")
    assert any(e.startswith("refused, nothing was touched:") and "confirm" in e for e in events), events

    deadline = time.monotonic() + 60
    while not mails_of(airflow_deployment, run_id) and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(5)  # the notify task refuses too: still one mail
    subjects = [str(m["Subject"]) for m in mails_of(airflow_deployment, run_id)]
    assert subjects == [
        "[INFO] Request refused: failover — failover refused the request before touching anything"
    ]


def test_relative_restore_destination_is_refused(
    client: ApiClient, airflow_deployment: AirflowDeployment
) -> None:
    backup_id = STATE.get("backup_id") or pytest.skip("no backup")
    run_id = trigger(client, "restore", {"backup_id": backup_id, "into": "restored-relative"})
    assert wait_run(client, "restore", run_id).state.value == "failed"
    refusal = xcom(client, "restore", run_id, "restore", key="refusal")
    assert "is a relative path" in refusal["reason"] and "e2e_files" in refusal["reason"]
    assert not list(airflow_deployment.home.rglob("restored-relative"))


def test_documented_dr_test_alias_runs_and_unknown_type_is_400(
    client: ApiClient, airflow_deployment: AirflowDeployment
) -> None:
    STATE.get("backup_id") or pytest.skip("no backup")
    conf = {
        "test_type": "RTO",
        "source": "e2e_files",
        "target_environment": str(airflow_deployment.base / "dr-rto"),
        "notify_on_completion": False,
    }
    run_id = trigger(client, "dr_test", conf)
    state = wait_run(client, "dr_test", run_id).state.value
    assert state == "success", task_states(client, "dr_test", run_id)
    report = xcom(client, "dr_test", run_id, "run_test")["reports"][0]
    assert report["test_type"] == "RECOVERY_TIME_TEST" and report["success"] is True
    with pytest.raises(ApiException) as refused:
        trigger(client, "dr_test", {**conf, "test_type": "BOGUS"})
    assert refused.value.status == 400 and "test_type" in str(refused.value.body)
