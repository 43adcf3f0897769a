"""The restore DAG of a backup frozen in S3 GLACIER, on a real Airflow 3 (:class:`AirflowStack`)
and moto's S3 server: ``validate_params → thaw → restore``. The thaw task is a sensor in
reschedule mode: it requests the thaw, logs the expected wait, gives its worker slot back
between checks (``up_for_reschedule``), and lets the restore run once S3 reports the
restored copy; what is restored matches the source byte for byte.

moto advances a restore by its state manager (``s3::keyrestore``); the test sets it to move
one state every 3 requests for the object, so the thaw visibly takes several checks. The
sensor checks every 10 s here (``BACKUP_THAW_POKE_SECONDS``; 15 minutes by default).
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

from include.backup.cli import main
from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.testing.airflow_stack import AirflowStack, AirflowStackError
from tests.e2e.conftest import E2E_AIRFLOW_SETTINGS
from tests.integration.services import S3Service, unique

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 900.0  # a ceiling for polling, not a timed assertion


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, moto_server: S3Service) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("thaw")
    tree = base / "data" / "docs"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n" * 2000)
    (tree / "sub" / "b.bin").write_bytes(os.urandom(150_000))
    KeyRing.generate(base / "keys.json", "thaw-k1")
    config = base / "backup_config.yaml"
    config.write_text(f"""
staging_dir: {base}/staging
targets:
  cold: {{type: s3, conn_id: {moto_server.conn_id}, bucket: {moto_server.bucket}, prefix: {unique('thaw')}/,
         storage_class: GLACIER, thaw_tier: Expedited}}
sources:
  docs: {{type: files, paths: ["{tree}"]}}
schedules:
  - {{name: docs_full, source: docs, type: FULL, cron: "0 1 * * *", targets: [cold]}}
""")
    env = {
        **E2E_AIRFLOW_SETTINGS,
        "BACKUP_CONFIG": str(config),
        "BACKUP_KEY_FILE": str(base / "keys.json"),
        "BACKUP_DEADLINE_ALERTS": "off",
        "BACKUP_THAW_POKE_SECONDS": "10",
        f"AIRFLOW_CONN_{moto_server.conn_id.upper()}": moto_server.connection(),
    }
    stack = AirflowStack(base, ROOT / "dags", env, parallelism=4, pythonpath=ROOT)
    try:
        stack.start()
        stack.wait_for_dags({"restore"}, timeout=300)
    except AirflowStackError as e:
        stack.stop()
        pytest.fail(str(e))
    try:
        yield {"stack": stack, "base": base, "tree": tree, "config": config}
    finally:
        stack.stop()


@pytest.fixture
def slow_thaw(moto_server: S3Service) -> Iterator[None]:
    api = f"{moto_server.url}/moto-api/state-manager"
    body = {"model_name": "s3::keyrestore", "transition": {"progression": "manual", "times": 3}}
    httpx.post(f"{api}/set-transition", json=body, timeout=30).raise_for_status()
    yield
    unset = {"model_name": "s3::keyrestore"}
    httpx.post(f"{api}/unset-transition", json=unset, timeout=30).raise_for_status()


def thaw_log(api: httpx.Client, run_id: str) -> str:
    """Every poke of the thaw task logs into its one try (a reschedule is not a new try)."""
    r = api.get(f"/dags/restore/dagRuns/{run_id}/taskInstances/thaw/logs/1",
                params={"full_content": True}, headers={"Accept": "application/json"})  # fmt: skip
    r.raise_for_status()
    content = r.json()["content"]
    if isinstance(content, list):
        return "\n".join(json.dumps(c) if not isinstance(c, str) else c for c in content)
    return str(content)


def test_restore_dag_waits_for_the_thaw_without_holding_a_slot(
    deployment: dict[str, Any], slow_thaw: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("BACKUP_CONFIG", str(deployment["config"]))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(deployment["base"] / "keys.json"))
    assert main(["backup", "docs_full"]) == 0, capsys.readouterr().err
    backup_id = capsys.readouterr().out.strip().splitlines()[-1]
    into = deployment["base"] / "restored"

    stack: AirflowStack = deployment["stack"]
    with stack.client() as api:
        conf = {"backup_id": backup_id, "into": str(into)}
        r = api.post("/dags/restore/dagRuns", json={"logical_date": None, "conf": conf})
        assert r.status_code == 200, r.text
        run_id = r.json()["dag_run_id"]
        seen: list[str] = []  # the thaw task's states, as the API reports them
        state, deadline = "?", time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            thaw = api.get(f"/dags/restore/dagRuns/{run_id}/taskInstances/thaw").json()
            if not seen or seen[-1] != thaw.get("state"):
                seen.append(thaw.get("state"))
            state = api.get(f"/dags/restore/dagRuns/{run_id}").json()["state"]
            if state in ("success", "failed"):
                break
            time.sleep(0.5)
        log = thaw_log(api, run_id)
    assert state == "success", (seen, log[-3000:])
    # every poke in one try, or (Airflow's reschedule race, apache/airflow#71172) a retry
    assert "up_for_reschedule" in seen, seen  # it gave its slot back while S3 thawed
    assert seen[-1] == "success"
    assert "waiting for a thaw at target cold" in log and "Expedited tier, typically 1-5 minutes" in log
    assert f"requested now for {backup_id}" in log
    tree = deployment["tree"]
    assert compare_trees(tree_digest(tree), tree_digest(into / str(tree).lstrip("/"))) == []
