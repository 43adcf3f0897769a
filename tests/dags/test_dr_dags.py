"""DAG integrity of the DR DAGs: dr_test, failover, dr_monitor (ids, tasks in order,
params, confirmation)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from tests.dags.test_dag_integrity import GOOD, _config, _dagbag


@pytest.fixture
def bag(monkeypatch, tmp_path):
    bag = _dagbag(_config(tmp_path, GOOD), monkeypatch, tmp_path)
    assert bag.import_errors == {}
    return bag


def _chain(dag, order):
    for up, down in pairwise(order):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} → {down} missing"


def test_dr_test_dag(bag):
    dag = bag.dags["dr_test"]
    assert type(dag.timetable).__name__ == "NullTimetable"
    _chain(dag, ["validate_params", "run_test", "publish", "result"])
    assert set(dag.task_ids) == {"validate_params", "run_test", "publish", "result"}
    assert {
        "test_type",
        "source",
        "target_environment",
        "notify_on_completion",
        "participants",
        "notes",
        "smoke_queries",
    } <= set(dag.params)
    assert dag.params["test_type"] == "RESTORE_TEST"
    assert dag.params["overwrite"] is False
    schema = dag.params.get_param("test_type").schema
    # the four types, then the aliases docs/dr.md lists (validate_params maps them)
    types = ["BACKUP_VERIFICATION", "RESTORE_TEST", "FAILOVER_TEST", "RECOVERY_TIME_TEST"]
    assert schema["enum"][:4] == types
    assert {"FAILOVER", "RESTORE", "RTO"} <= set(schema["enum"])
    outlets = dag.get_task("publish").outlets
    assert [type(o).__name__ for o in outlets] == ["AssetAlias"]
    assert dag.get_task("run_test").retries == 0


def test_failover_dag(bag):
    dag = bag.dags["failover"]
    assert type(dag.timetable).__name__ == "NullTimetable"
    order = ["validate_params", "assess", "switch", "restore", "verify", "notify"]
    assert set(dag.task_ids) == set(order)
    _chain(dag, order)
    assert {"source", "confirm", "secondary", "target", "dry_run", "overwrite"} <= set(dag.params)
    assert dag.params["confirm"] is None  # never confirmed by default
    assert dag.params["dry_run"] is False
    assert dag.get_task("notify").trigger_rule == "all_done"
    assert dag.max_active_runs == 1
    assert dag.deadline  # RTO deadline alert


def test_failover_dag_without_deadline_alerts(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKUP_DEADLINE_ALERTS", "off")
    bag = _dagbag(_config(tmp_path, GOOD), monkeypatch, tmp_path)
    assert not bag.dags["failover"].deadline


def test_dr_monitor_dag(bag):
    dag = bag.dags["dr_monitor"]
    # The monitor's report feeds dr_actions (drills, auto-failover), whose list maps the triggers.
    assert sorted(dag.task_ids) == ["dr_actions", "monitor", "trigger_dr_runs"]
    _chain(dag, ["monitor", "dr_actions", "trigger_dr_runs"])
    assert getattr(dag.timetable, "_expression", None) == "*/15 * * * *" or dag.schedule == "*/15 * * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_failover_confirm_required(monkeypatch, tmp_path):
    from include.backup.config.loader import load_config
    from include.backup.dr.failover import parse_failover_params
    from include.backup.errors import RestoreRefused

    config = load_config(_config(tmp_path, GOOD)).config
    with pytest.raises(RestoreRefused, match="confirm"):
        parse_failover_params({"source": "uploads", "secondary": "/srv/secondary"}, config)
    req = parse_failover_params(
        {"source": "uploads", "secondary": "/srv/secondary", "confirm": "uploads"}, config
    )
    assert req.secondary == "/srv/secondary" and req.dry_run is False
