"""A scheduled DR drill started by ``dr_monitor`` alone, on the real Airflow of
tests/e2e/conftest.py (api-server, scheduler, dag-processor, LocalExecutor).

The deployment's ``e2e_drill`` source has ``dr.drills.e2e_drill`` (a scratch directory,
RESTORE_TEST) and no DR test on record, so a drill is due as soon as it has a backup. The
test backs it up, triggers ``dr_monitor`` through the REST API and nothing else: the
monitor's ``trigger_dr_runs`` starts ``dr_test`` run ``drill__e2e_drill__<today>``, which
restores the backup into the scratch directory, reports RESTORE_TEST passed with the
measured RTO and RPO, and mails the DR_TEST_RESULT. A second monitor run right after finds
the drill's report and starts nothing.

The other sources of the deployment have no ``dr.drills`` entry: their drills are only
warnings, so the other e2e tests see no extra ``dr_test`` run; nothing else triggers
``dr_monitor`` (``[scheduler] use_job_schedule = False``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from airflow_client.client import ApiClient, DagRunApi, TriggerDAGRunPostBody

from include.backup.sources.files import compare_trees, tree_digest
from tests.e2e.conftest import DRILL_SCHEDULE, DRILL_SOURCE, AirflowDeployment
from tests.e2e.test_rest_client import mails_of, task_states, wait_run, xcom

pytestmark = [pytest.mark.e2e]

PARSE_TIMEOUT_S = 180  # ceilings for polling, not timed assertions: the machine is shared
RUN_TIMEOUT_S = 600
DRILL_PREFIX = f"drill__{DRILL_SOURCE}__"


@pytest.fixture(scope="module")
def client(airflow_deployment: AirflowDeployment) -> Iterator[ApiClient]:
    with airflow_deployment.stack.api_client() as api:
        yield api


def trigger(client: ApiClient, dag_id: str) -> str:
    body = TriggerDAGRunPostBody(logical_date=None, conf={})
    return DagRunApi(client).trigger_dag_run(dag_id, body).dag_run_id


def finished(client: ApiClient, dag_id: str, run_id: str) -> str:
    """The run's final state (``wait_run`` polls up to its ceiling), with its task states
    when it did not succeed."""
    state = wait_run(client, dag_id, run_id).state.value
    return state if state == "success" else f"{state}: {task_states(client, dag_id, run_id)}"


def drill_runs(client: ApiClient) -> list[str]:
    runs = DagRunApi(client).get_dag_runs(dag_id="dr_test", limit=100).dag_runs
    return sorted(r.dag_run_id for r in runs if r.dag_run_id.startswith(DRILL_PREFIX))


def wait_drill_run(client: ApiClient, run_id: str) -> None:
    """The monitor's trigger made the run; the scheduler may take a moment to list it."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while run_id not in drill_runs(client) and time.monotonic() < deadline:
        time.sleep(2)


def test_due_drill_is_started_by_dr_monitor_alone_and_restores_the_source(
    client: ApiClient, airflow_deployment: AirflowDeployment
) -> None:
    dep = airflow_deployment
    dep.stack.wait_for_dags({f"backup__{DRILL_SCHEDULE}", "dr_monitor", "dr_test"}, timeout=PARSE_TIMEOUT_S)
    backup_run = trigger(client, f"backup__{DRILL_SCHEDULE}")
    assert finished(client, f"backup__{DRILL_SCHEDULE}", backup_run) == "success"
    assert drill_runs(client) == []

    monitor_run = trigger(client, "dr_monitor")
    assert finished(client, "dr_monitor", monitor_run) == "success"
    (action,) = xcom(client, "dr_monitor", monitor_run, "dr_actions")
    drill_run = f"{DRILL_PREFIX}{datetime.now(UTC):%Y%m%d}"
    assert action["trigger_dag_id"] == "dr_test" and action["trigger_run_id"] == drill_run
    assert action["conf"]["target_environment"] == str(dep.base / "drill-scratch")
    wait_drill_run(client, drill_run)
    assert drill_runs(client) == [drill_run]  # one drill, none for the sources without dr.drills

    assert finished(client, "dr_test", drill_run) == "success"
    (report,) = xcom(client, "dr_test", drill_run, "run_test")["reports"]
    assert report["test_type"] == "RESTORE_TEST" and report["success"] is True, report["issues"]
    assert report["source"] == DRILL_SOURCE and report["participants"] == ["dr_monitor"]
    assert report["measured_rto_seconds"] > 0 and report["measured_rpo_seconds"] is not None
    assert "scheduled drill: no successful DR test on record" in report["notes"]
    source = dep.base / "drill-data"
    restored = dep.base / "drill-scratch" / str(source).lstrip("/")
    assert compare_trees(tree_digest(source), tree_digest(restored)) == []
    subjects = [str(m["Subject"]) for m in mails_of(dep, drill_run)]
    assert len(subjects) == 1 and "RESTORE_TEST passed" in subjects[0], subjects

    # The drill's report is at the target now: the next monitor run starts nothing.
    again = trigger(client, "dr_monitor")
    assert finished(client, "dr_monitor", again) == "success"
    assert xcom(client, "dr_monitor", again, "dr_actions") == []
    assert drill_runs(client) == [drill_run]
