"""DAG integrity: the DagBag over dags/ as the dag processor sees it — no import errors,
the expected DAG ids, tasks and order, and parsing with no connections defined."""

from __future__ import annotations

import os
import textwrap
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"


def _dagbag(config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    # No connection may be looked up at parse time: make any look-up fail loudly.
    for key in list(os.environ):
        if key.startswith("AIRFLOW_CONN_"):
            monkeypatch.delenv(key)
    return DagBag(dag_folder=str(DAGS), safe_mode=True)


def _config(tmp_path: Path, schedules: str) -> Path:
    path = tmp_path / "backup_config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            targets:
              local: {{type: local, path: {tmp_path}/backups}}
              nas: {{type: local, path: {tmp_path}/nas, offsite: true}}
            sources:
              events_pg: {{type: postgres, conn_id: events_pg}}
              uploads: {{type: files, paths: [/data/uploads], exclude: ["*.tmp"]}}
            schedules:
            """
        )
        + textwrap.indent(textwrap.dedent(schedules), "  ")
    )
    return path


GOOD = """
- {name: daily_full, source: events_pg, type: FULL, cron: "0 2 * * *", targets: [local, nas]}
- {name: weekly_schema, source: events_pg, type: SCHEMA, cron: "0 3 * * 0", targets: [local]}
- {name: files_6h, source: uploads, type: INCREMENTAL, cron: "0 */6 * * *", targets: [nas],
   retention_days: 14}
- {name: paused, source: uploads, type: FULL, cron: "@daily", targets: [local], active: false}
"""


def test_example_config_parses_without_errors(monkeypatch, tmp_path):
    bag = _dagbag(ROOT / "include" / "backup_config.yaml", monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert bag.dag_ids, "the example config generates no DAG"
    backups = [d for d in bag.dag_ids if d.startswith("backup__")]
    assert backups, "the example config generates no backup DAG"
    assert set(bag.dag_ids) - set(backups) == {"restore", "dr_test", "failover", "dr_monitor"}


def test_one_dag_per_active_schedule_with_tasks_in_order(monkeypatch, tmp_path):
    bag = _dagbag(_config(tmp_path, GOOD), monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == [
        "backup__daily_full",
        "backup__files_6h",
        "backup__weekly_schema",
        "dr_monitor",
        "dr_test",
        "failover",
        "restore",
    ]

    dag = bag.dags["backup__daily_full"]
    assert set(dag.task_ids) == {"dump", "encrypt", "checksum", "upload", "verify", "cleanup"}
    order = ["dump", "encrypt", "checksum", "upload", "verify", "cleanup"]
    for up, down in pairwise(order):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} → {down} missing"
    # upload and verify fan out per target
    assert dag.get_task("upload").is_mapped and dag.get_task("verify").is_mapped
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert {"backup", "source:events_pg", "type:FULL"} <= set(dag.tags)
    assert dag.get_task("dump").retries >= 1
    assert dag.get_task("dump").retry_exponential_backoff
    # on-call hears of failures and of late runs / missed RPOs
    assert dag.get_task("upload").on_failure_callback
    deadlines = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert deadlines and all(d.interval <= timedelta(hours=1) for d in deadlines)  # rpo_hours defaults to 1


def test_task_process_builds_only_its_own_backup_dag(monkeypatch, tmp_path):
    # A task process re-parses its DAG file with Airflow's parsing context set: it must find
    # its DAG, and need not build every other schedule's (bench/bench_scheduler.py).
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "backup__files_6h")
    bag = _dagbag(_config(tmp_path, GOOD), monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert [d for d in bag.dag_ids if d.startswith("backup__")] == ["backup__files_6h"]
    assert set(bag.dags["backup__files_6h"].task_ids) == {
        "dump", "encrypt", "checksum", "upload", "verify", "cleanup"
    }


@pytest.mark.parametrize(("task_id", "declared"), [("cleanup", True), ("dump", False), ("verify", False)])
def test_only_the_cleanup_task_process_declares_the_source_asset(monkeypatch, tmp_path, task_id, declared):
    # The cleanup task emits the asset's event, so its process must declare it; a process of
    # another task skips building the Asset (it loads every provider's URI handlers).
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "backup__files_6h")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", task_id)
    bag = _dagbag(_config(tmp_path, GOOD), monkeypatch, tmp_path)
    outlets = bag.dags["backup__files_6h"].get_task("cleanup").outlets
    assert [o.uri for o in outlets] == (["backup://uploads/"] if declared else [])  # normalised by Airflow


def test_deadline_alerts_can_be_switched_off_for_dags_test(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKUP_DEADLINE_ALERTS", "off")
    bag = _dagbag(_config(tmp_path, GOOD), monkeypatch, tmp_path)
    assert not bag.dags["backup__daily_full"].deadline


def test_doc_md_describes_schedule_and_has_no_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_PG", "postgres://u:hunter2secret@127.0.0.1:1/db")
    bag = _dagbag(_config(tmp_path, GOOD), monkeypatch, tmp_path)
    doc = bag.dags["backup__daily_full"].doc_md
    assert "daily_full" in doc and "events_pg" in doc and "0 2 * * *" in doc
    assert "hunter2secret" not in doc


def test_broken_schedule_is_an_import_error_and_valid_ones_still_load(monkeypatch, tmp_path):
    broken = GOOD + """
- {name: bad_cron, source: events_pg, type: FULL, cron: "61 * * * *", targets: [local]}
- {name: bad_target, source: uploads, type: FULL, cron: "@daily", targets: [nowhere]}
"""
    bag = _dagbag(_config(tmp_path, broken), monkeypatch, tmp_path)
    assert "backup__daily_full" in bag.dag_ids and "backup__files_6h" in bag.dag_ids
    assert "restore" in bag.dag_ids
    assert "backup__bad_cron" not in bag.dag_ids
    assert len(bag.import_errors) == 1
    (path, message), = bag.import_errors.items()
    assert path.endswith("backup_config_check.py")
    assert "bad_cron" in message and "cron" in message
    assert "nowhere" in message
    assert str(tmp_path / "backup_config.yaml") in message


def test_unreadable_config_fails_every_dag_file(monkeypatch, tmp_path):
    path = tmp_path / "backup_config.yaml"
    path.write_text("dr: {rto_hours: 100}\nschedules: [\n")
    bag = _dagbag(path, monkeypatch, tmp_path)
    assert bag.dag_ids == [] or list(bag.dag_ids) == []
    assert any(p.endswith("backup_dags.py") for p in bag.import_errors)


def test_restore_dag_is_manual_with_validated_params(monkeypatch, tmp_path):
    bag = _dagbag(_config(tmp_path, GOOD), monkeypatch, tmp_path)
    dag = bag.dags["restore"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # triggered by hand only
    expected = {"source", "backup_id", "point_in_time", "into", "target", "tables", "overwrite"}
    assert expected <= set(dag.params)
    assert dag.params["overwrite"] is False  # never over a non-empty destination unless told
    assert "validate_params" in dag.get_task("restore").upstream_task_ids
    assert dag.get_task("restore").retries == 0  # a half-done restore is not retried blindly
