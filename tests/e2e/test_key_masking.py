"""The key ring through the eyes of Airflow's REST API, on the real api-server (the
deployment of tests/e2e/conftest.py): ``GET /api/v2/connections/{id}`` and the listing show
no key material, and neither do the task logs and XComs of a backup run that used the keys.

The key connection ``backup_encryption`` was created through the REST API by the fixture
(a connection defined only in an ``AIRFLOW_CONN_*`` variable is not served by the
connections API), in the shape docs/keys.md gives: keys under the extra ``secret_keys``.
The REST calls go through apache-airflow-client, the way automation would make them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from airflow_client.client import (
    ApiClient,
    ConnectionApi,
    ConnectionBody,
    DagRunApi,
    TaskInstanceApi,
    TriggerDAGRunPostBody,
    XComApi,
)

from include.backup.keys import KeyRing
from tests.e2e.conftest import FILES_SCHEDULE, KEY_CONN_ID, KEY_ID, AirflowDeployment

pytestmark = [pytest.mark.e2e]

RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def client(airflow_deployment: AirflowDeployment) -> Iterator[ApiClient]:
    with airflow_deployment.stack.api_client() as api_client:
        yield api_client


def forms_of(key_b64: str) -> list[str]:
    """Every way the key could show: its base64, and its bytes as hex (either case)."""
    raw = base64.b64decode(key_b64)
    return [key_b64, raw.hex(), raw.hex().upper()]


def assert_no_key(text: str, keys: list[str], where: str) -> None:
    for key in keys:
        for form in forms_of(key):
            assert form not in text, f"key material in {where}"


def raw_get(call: Any, **kwargs: Any) -> str:
    """The response body exactly as the api-server sent it (not the client's model)."""
    body = call(**kwargs).read().decode()
    assert body, "empty response"
    return body


def test_key_connection_shows_no_key_material(
    client: ApiClient, airflow_deployment: AirflowDeployment
) -> None:
    api = ConnectionApi(client)
    conn = api.get_connection(KEY_CONN_ID)
    extra = json.loads(conn.extra or "{}")
    # what an operator sees: which keys exist and which is active, not the keys
    assert extra["secret_keys"] == {KEY_ID: "***"}
    assert extra["active"] == KEY_ID and KEY_ID in extra["created"]
    keys = [airflow_deployment.key_material]
    assert_no_key(raw_get(api.get_connection_without_preload_content, connection_id=KEY_CONN_ID), keys, "GET")
    listing = raw_get(api.get_connections_without_preload_content, limit=100)
    assert KEY_CONN_ID in listing
    assert_no_key(listing, keys, "the connection listing")


def test_rotated_ring_created_through_the_api_is_masked(client: ApiClient) -> None:
    """A ring of several keys, created with POST as docs/keys.md says: the POST's own
    response, the GET and the listing all hide every key."""
    ring = KeyRing.from_json(
        {"keys": {"old": base64.b64encode(bytes(range(32))).decode()}, "active": "old"}
    ).rotated("new")
    keys = list(ring.to_json()["keys"].values())
    conn = ring.to_connection()
    api = ConnectionApi(client)
    body = ConnectionBody(
        connection_id="e2e_keys_rotated", conn_type=conn["conn_type"], extra=json.dumps(conn["extra"])
    )
    created = api.post_connection_without_preload_content(connection_body=body)
    answer = created.read().decode()
    assert created.status == 201, answer
    try:
        assert "e2e_keys_rotated" in answer
        assert_no_key(answer, keys, "the POST response")
        shown = raw_get(api.get_connection_without_preload_content, connection_id="e2e_keys_rotated")
        assert_no_key(shown, keys, "GET")
        assert json.loads(json.loads(shown)["extra"])["secret_keys"] == {"new": "***", "old": "***"}
        assert_no_key(raw_get(api.get_connections_without_preload_content, limit=100), keys, "the listing")
    finally:
        api.delete_connection("e2e_keys_rotated")


def test_old_shape_for_the_record(client: ApiClient, capsys: pytest.CaptureFixture[str]) -> None:
    """The first shape (keys under the extra ``keys``), with a throwaway key: printed, not
    asserted — it documents why the field was renamed (run with -s to see it)."""
    throwaway = KeyRing.from_json({"keys": {"t": base64.b64encode(bytes(32)).decode()}})
    api = ConnectionApi(client)
    body = ConnectionBody(
        connection_id="e2e_keys_old_shape", conn_type="generic", extra=json.dumps(throwaway.to_json())
    )
    api.post_connection(body)
    try:
        shown = api.get_connection("e2e_keys_old_shape").extra
    finally:
        api.delete_connection("e2e_keys_old_shape")
    with capsys.disabled():
        print(f"\nGET /api/v2/connections/e2e_keys_old_shape (old shape) extra: {shown}")


def wait_run(client: ApiClient, dag_id: str, run_id: str) -> str:
    api = DagRunApi(client)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = "?"
    while time.monotonic() < deadline:
        found = api.get_dag_run(dag_id, run_id).state
        state = str(getattr(found, "value", found))
        if state in ("success", "failed"):
            break
        time.sleep(1)
    return state


def test_backup_run_logs_and_xcoms_show_no_key_material(
    client: ApiClient, airflow_deployment: AirflowDeployment
) -> None:
    """A backup run that read the ring from the API-created connection (its encrypt step
    needs the key): every task log and every XCom, and each component's output."""
    dag_id = f"backup__{FILES_SCHEDULE}"
    keys = [airflow_deployment.key_material]
    run = DagRunApi(client).trigger_dag_run(dag_id, TriggerDAGRunPostBody(logical_date=None))
    state = wait_run(client, dag_id, run.dag_run_id)
    tis = TaskInstanceApi(client).get_task_instances(dag_id, run.dag_run_id).task_instances
    assert state == "success", {(t.task_id, t.map_index): t.state for t in tis}
    assert {t.task_id for t in tis} >= {"dump", "encrypt", "checksum", "upload", "verify", "cleanup"}

    xcoms = XComApi(client)
    for ti in tis:
        log = raw_get(
            TaskInstanceApi(client).get_log_without_preload_content,
            dag_id=dag_id, dag_run_id=run.dag_run_id, task_id=ti.task_id,
            try_number=ti.try_number, map_index=ti.map_index, full_content=True,
            accept="application/json",
        )  # fmt: skip
        assert len(log) > 100, (ti.task_id, log)
        assert_no_key(log, keys, f"the log of {ti.task_id}[{ti.map_index}]")
        assert "in clear" not in log  # the ring was read in the masked shape: no warning
        entry = xcoms.get_xcom_entry(
            dag_id=dag_id, task_id=ti.task_id, dag_run_id=run.dag_run_id,
            xcom_key="return_value", map_index=ti.map_index,
        )  # fmt: skip
        assert_no_key(json.dumps(entry.to_dict(), default=str), keys, f"the XCom of {ti.task_id}")
    encrypt_xcom = xcoms.get_xcom_entry(
        dag_id=dag_id, task_id="encrypt", dag_run_id=run.dag_run_id, xcom_key="return_value"
    )
    assert KEY_ID in json.dumps(encrypt_xcom.to_dict(), default=str)  # the key id, only
    for component in airflow_deployment.procs:
        assert_no_key(airflow_deployment.stack.logs(component, tail=10**8), keys, f"{component}'s output")
