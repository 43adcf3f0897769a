"""End to end through the REST API v2 of a running Airflow (api-server, scheduler,
dag-processor, triggerer; LocalExecutor; PostgreSQL metadata DB), the way automation drives
it: a JWT from ``POST /auth/token``, connections created with ``POST /api/v2/connections``,
runs triggered with ``POST /api/v2/dags/{id}/dagRuns`` and polled to completion, results read
from task logs and XComs, a broken config seen in ``/api/v2/importErrors``.

The tests share one deployment (tests/e2e/conftest.py) and run in file order: the restore
and the DR test use the backup made by the first backup run.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.backup.sources.files import compare_trees, tree_digest
from tests.e2e.conftest import (
    FILES_SCHEDULE,
    GONE_SCHEDULE,
    PG_SCHEDULE,
    PG_SOURCE_CONN_ID,
    AirflowDeployment,
)

pytestmark = [pytest.mark.e2e]

RUN_TIMEOUT_S = 600  # a ceiling for polling, not a timed assertion (2 xdist workers share the cores)
PARSE_TIMEOUT_S = 300
EXPECTED_DAGS = {
    f"backup__{FILES_SCHEDULE}",
    f"backup__{PG_SCHEDULE}",
    f"backup__{GONE_SCHEDULE}",
    "restore",
    "dr_test",
    "failover",
    "dr_monitor",
}
# the forced failure retries twice (1 min, then about 2 min with the backoff): it is
# started early and checked last, so its waits overlap the other tests
FAILURE_TIMEOUT_S = 360

# results shared by the tests of this module (they run in file order)
STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def api(airflow_deployment: AirflowDeployment):
    with airflow_deployment.client() as client:
        yield client


def trigger(api: httpx.Client, dag_id: str, conf: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"logical_date": None}
    if conf is not None:
        body["conf"] = conf
    r = api.post(f"/dags/{dag_id}/dagRuns", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["dag_run_id"])


def wait_run(api: httpx.Client, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        r = api.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        r.raise_for_status()
        state = r.json()["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    return state


def task_states(api: httpx.Client, dag_id: str, run_id: str) -> dict[str, str]:
    r = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    r.raise_for_status()
    return {
        f"{t['task_id']}[{t['map_index']}]" if t["map_index"] >= 0 else t["task_id"]: t["state"]
        for t in r.json()["task_instances"]
    }


def task_log(
    api: httpx.Client, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
) -> str:
    r = api.get(
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        params={"map_index": map_index, "full_content": True},
        headers={"Accept": "application/json"},
    )
    r.raise_for_status()
    content = r.json()["content"]
    if isinstance(content, list):
        return "\n".join(json.dumps(c) if not isinstance(c, str) else c for c in content)
    return str(content)


def xcom(api: httpx.Client, dag_id: str, run_id: str, task_id: str) -> Any:
    r = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
    r.raise_for_status()
    value = r.json()["value"]
    return json.loads(value) if isinstance(value, str) else value


def run_ok(api: httpx.Client, dag_id: str, conf: dict[str, Any] | None = None) -> str:
    run_id = trigger(api, dag_id, conf)
    state = wait_run(api, dag_id, run_id)
    assert state == "success", f"{dag_id} {run_id}: {state}; tasks: {task_states(api, dag_id, run_id)}"
    return run_id


def manifests(root: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("manifest.json")}


# --- the tests -----------------------------------------------------------------------------


def test_auth_token_is_required(airflow_deployment: AirflowDeployment) -> None:
    r = httpx.get(f"{airflow_deployment.url}/api/v2/dags", timeout=30)
    assert r.status_code in (401, 403)
    bad = httpx.post(
        f"{airflow_deployment.url}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=30
    )
    assert bad.status_code == 401


def test_dags_are_listed(api: httpx.Client) -> None:
    deadline = time.monotonic() + PARSE_TIMEOUT_S
    found: set[str] = set()
    while time.monotonic() < deadline:
        r = api.get("/dags", params={"limit": 100})
        r.raise_for_status()
        found = {d["dag_id"] for d in r.json()["dags"]}
        if found >= EXPECTED_DAGS:
            break
        time.sleep(2)
    assert found >= EXPECTED_DAGS, f"missing: {sorted(EXPECTED_DAGS - found)}"
    r = api.get(f"/dags/backup__{FILES_SCHEDULE}")
    assert r.json()["is_paused"] is False


def test_create_source_connection(api: httpx.Client, airflow_deployment: AirflowDeployment) -> None:
    pg = airflow_deployment.source_pg
    r = api.post(
        "/connections",
        json={
            "connection_id": PG_SOURCE_CONN_ID,
            "conn_type": "postgres",
            "host": pg.host,
            "port": pg.port,
            "login": "postgres",
            "schema": "events",
        },
    )
    assert r.status_code == 201, r.text
    r = api.get(f"/connections/{PG_SOURCE_CONN_ID}")
    assert r.status_code == 200 and r.json()["port"] == pg.port


def test_start_forced_failure(api: httpx.Client, airflow_deployment: AirflowDeployment) -> None:
    """The schedule's directory disappears: the run must fail and mail one BACKUP_FAILED
    alert (checked by the last test, after the retries)."""
    import shutil

    airflow_deployment.smtp.clear()
    shutil.rmtree(airflow_deployment.base / "gone")
    STATE["gone_run"] = trigger(api, f"backup__{GONE_SCHEDULE}")


def test_files_backup_run(api: httpx.Client, airflow_deployment: AirflowDeployment) -> None:
    dag_id = f"backup__{FILES_SCHEDULE}"
    run_id = run_ok(api, dag_id)
    STATE["files_run"] = run_id
    # This run's backup (test_key_masking.py backs up the same schedule earlier in the
    # session): API-triggered runs have backup ids ending in a hash of their run id.
    suffix = "-" + hashlib.sha256(run_id.encode()).hexdigest()[:6]
    for target in ("backups", "offsite"):
        found = {
            k: m
            for k, m in manifests(airflow_deployment.base / target).items()
            if m.get("schedule") == FILES_SCHEDULE and k.endswith(suffix)
        }
        assert len(found) == 1, f"{target}: {sorted(found)}"
        backup_id, manifest = next(iter(found.items()))
        name = "local" if target == "backups" else "offsite"
        assert manifest["verification"][name]["ok"] is True
        payload = airflow_deployment.base / target / manifest["source"] / backup_id / "payload"
        assert payload.is_file() and payload.stat().st_size == manifest["objects"][0]["size"]
        assert b"e2e content" not in payload.read_bytes()  # ciphertext only
    STATE["files_backup_id"] = backup_id
    # (only this schedule's staging: the forced failure's run may be between retries)
    left = [p for p in (airflow_deployment.base / "staging").rglob("*") if FILES_SCHEDULE in str(p)]
    assert not left, f"staging not cleaned up: {left}"


def test_postgres_backup_uses_api_connection(
    api: httpx.Client, airflow_deployment: AirflowDeployment
) -> None:
    # the source's connection exists only in the metadata DB (created through the API):
    # the tasks read it through the execution API
    run_ok(api, f"backup__{PG_SCHEDULE}")
    found = [
        m for m in manifests(airflow_deployment.base / "backups").values() if m.get("schedule") == PG_SCHEDULE
    ]
    assert len(found) == 1 and found[0]["verification"]["local"]["ok"] is True


def test_task_log_has_no_key_material(api: httpx.Client, airflow_deployment: AirflowDeployment) -> None:
    run_id = STATE.get("files_run") or pytest.skip("no backup run")
    dag_id = f"backup__{FILES_SCHEDULE}"
    text = task_log(api, dag_id, run_id, "encrypt")
    assert len(text) > 100, text
    assert airflow_deployment.key_material not in text
    for task_id, state in task_states(api, dag_id, run_id).items():
        assert state == "success", task_id
        name, _, idx = task_id.partition("[")
        log_text = task_log(api, dag_id, run_id, name, map_index=int(idx.rstrip("]")) if idx else -1)
        assert airflow_deployment.key_material not in log_text, task_id


def test_restore_run_matches(api: httpx.Client, airflow_deployment: AirflowDeployment) -> None:
    backup_id = STATE.get("files_backup_id") or pytest.skip("no backup")
    into = airflow_deployment.base / "restored"
    run_id = run_ok(api, "restore", {"backup_id": backup_id, "into": str(into)})
    result = xcom(api, "restore", run_id, "restore")
    assert isinstance(result, dict), result
    src = airflow_deployment.files_root
    original = tree_digest(src, exclude=["*.tmp"])
    restored = tree_digest(into / str(src).lstrip("/"))
    assert compare_trees(original, restored) == []


def test_dr_test_backup_verification(api: httpx.Client) -> None:
    STATE.get("files_backup_id") or pytest.skip("no backup")
    run_id = run_ok(
        api,
        "dr_test",
        {"test_type": "BACKUP_VERIFICATION", "source": "e2e_files", "notify_on_completion": False},
    )
    result = xcom(api, "dr_test", run_id, "result")
    assert result["success"] is True and result["tests"], result
    run_test = xcom(api, "dr_test", run_id, "run_test")
    assert run_test["success"] is True
    assert [r["source"] for r in run_test["reports"]] == ["e2e_files"]


def test_broken_schedule_reported_while_valid_dags_run(
    api: httpx.Client, airflow_deployment: AirflowDeployment
) -> None:
    config = airflow_deployment.config_path
    original = config.read_text()
    config.write_text(
        original + '  - {name: e2e_broken_cron, source: e2e_files, type: FULL, cron: "61 25 * * *", '
        "targets: [local], retention_days: 7}\n"
    )
    try:
        deadline = time.monotonic() + PARSE_TIMEOUT_S
        errors: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            r = api.get("/importErrors")
            r.raise_for_status()
            errors = [e for e in r.json()["import_errors"] if "e2e_broken_cron" in e["stack_trace"]]
            if errors:
                break
            time.sleep(2)
        assert errors, "the broken schedule never showed up in /api/v2/importErrors"
        assert any(e["filename"].endswith("backup_config_check.py") for e in errors), errors
        # the valid schedules keep their DAGs and keep running
        r = api.get(f"/dags/backup__{FILES_SCHEDULE}")
        assert r.status_code == 200 and r.json()["is_stale"] is False
        run_ok(api, f"backup__{FILES_SCHEDULE}")
    finally:
        config.write_text(original)


def test_forced_failure_mails_one_alert(api: httpx.Client, airflow_deployment: AirflowDeployment) -> None:
    run_id = STATE.get("gone_run") or pytest.skip("the failing run was not started")
    dag_id = f"backup__{GONE_SCHEDULE}"
    state = wait_run(api, dag_id, run_id, timeout=FAILURE_TIMEOUT_S)
    assert state == "failed", f"{run_id}: {state}; tasks: {task_states(api, dag_id, run_id)}"
    assert task_states(api, dag_id, run_id)["dump"] == "failed"

    def body_of(msg: Any) -> str:  # parsed with email.policy.default: an EmailMessage
        part = msg.get_body(preferencelist=("plain", "html"))
        return str(part.get_content()) if part is not None else ""

    def failure_mails() -> list[Any]:
        return [
            m
            for m in airflow_deployment.smtp.messages()
            if dag_id in body_of(m) and "fail" in str(m["Subject"]).lower()
        ]

    deadline = time.monotonic() + 60
    while not failure_mails() and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(10)  # the task callback and the DAG callback both ran: still one mail
    mails = failure_mails()
    assert len(mails) == 1, [str(m["Subject"]) for m in airflow_deployment.smtp.messages()]
    body = body_of(mails[0])
    assert "does not exist" in body and run_id in body
    assert mails[0]["To"] and "oncall@example.com" in str(mails[0]["To"])
    assert airflow_deployment.key_material not in mails[0].as_string()
