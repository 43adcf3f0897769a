"""The parts of include/backup/testing/airflow_stack.py that need no running Airflow: the
environment every component gets, the command lines, the health check, bad arguments, a
restarted Celery worker's readiness. (The stack itself runs in tests/e2e and bench/bench_scheduler.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from include.backup.testing.airflow_stack import (
    AirflowStack,
    AirflowStackError,
    airflow_env,
    all_healthy,
    component_argv,
)


def _env(tmp_path: Path, base_env: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    return airflow_env(
        base_env,
        home=tmp_path / "airflow",
        dags_folder=tmp_path / "dags",
        plugins_folder=None,
        port=8123,
        db_uri="postgresql+psycopg2://postgres@127.0.0.1:5999/airflow",
        passwords_file=tmp_path / "pw.json",
        parallelism=4,
        max_active_tasks_per_dag=2,
        env_extra=extra,
    )


def test_callers_airflow_settings_do_not_leak_in(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        {
            "PATH": "/usr/bin",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW_CONN_PROD_DB": "postgresql://prod",
            "AIRFLOW_VAR_X": "1",
            "BACKUP_KEY_FILE": "/secret/keys.json",
        },
    )
    assert env["PATH"] == "/usr/bin"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert "AIRFLOW_CONN_PROD_DB" not in env
    assert "AIRFLOW_VAR_X" not in env
    assert "BACKUP_KEY_FILE" not in env
    assert "AIRFLOW__CORE__PLUGINS_FOLDER" not in env  # plugins_folder=None


def test_deployment_settings_and_extra_overrides(tmp_path: Path) -> None:
    env = _env(tmp_path, {}, {"AIRFLOW__CORE__PARALLELISM": "16", "BACKUP_CONFIG": "/c.yaml"})
    assert env["AIRFLOW__CORE__PARALLELISM"] == "16"  # env_extra wins
    assert env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] == "2"
    assert env["BACKUP_CONFIG"] == "/c.yaml"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(tmp_path / "dags")


def test_timing_and_scheduling_are_the_callers_choice(tmp_path: Path) -> None:
    """No e2e or bench choice is built in: Airflow's defaults unless env_extra sets them."""
    chosen = (
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC",
        "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL",
    )
    env = _env(tmp_path, {})
    assert not [k for k in chosen if k in env]
    env = _env(tmp_path, {}, dict.fromkeys(chosen, "7"))
    assert all(env[k] == "7" for k in chosen)


def test_each_call_gets_fresh_secrets(tmp_path: Path) -> None:
    a, b = _env(tmp_path, {}), _env(tmp_path, {})
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert a[key] != b[key]


def test_servers_bind_loopback_only(tmp_path: Path) -> None:
    assert component_argv("api-server", 8123, tmp_path) == [
        str(tmp_path / "airflow"), "api-server", "--host", "127.0.0.1", "--port", "8123",
    ]
    assert component_argv("scheduler", 8123, tmp_path)[-1] == "--skip-serve-logs"
    assert component_argv("triggerer", 8123, tmp_path)[-1] == "--skip-serve-logs"
    assert component_argv("dag-processor", 8123, tmp_path) == [str(tmp_path / "airflow"), "dag-processor"]
    with pytest.raises(ValueError, match="unknown Airflow component 'worker'"):
        component_argv("worker", 8123, tmp_path)


def test_health_needs_every_component() -> None:
    healthy = {"status": "healthy"}
    full = {"metadatabase": healthy, "scheduler": healthy, "dag_processor": healthy, "triggerer": healthy}
    assert all_healthy(full)
    assert not all_healthy({**full, "triggerer": {"status": "unhealthy"}})
    assert not all_healthy({**full, "dag_processor": None})
    assert not all_healthy(None)


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dags_folder .* is not a directory"):
        AirflowStack(tmp_path, tmp_path / "missing")
    with pytest.raises(ValueError, match=r"parallelism \(0\)"):
        AirflowStack(tmp_path, tmp_path, parallelism=0)


class _Running:
    """A worker process that is up (poll() is None) but has not logged anything new."""

    pid = 0

    def poll(self) -> None:
        return None


def test_a_restarted_worker_is_not_ready_on_its_earlier_ready_line(tmp_path: Path) -> None:
    stack = AirflowStack(tmp_path, tmp_path, executor="CeleryExecutor", celery_workers=2, start_timeout_s=0.2)
    stack.home.mkdir()
    log = stack.log_path("celery-worker-1")
    log.write_text("worker1@host ready.\n")  # the first start's line
    stack.procs["celery-worker-1"] = _Running()  # type: ignore[assignment]
    with pytest.raises(AirflowStackError, match="celery-worker-1 did not become ready"):
        stack._wait_workers_ready({"celery-worker-1": log.stat().st_size})
    with log.open("a") as f:
        f.write("worker1@host ready.\n")  # the restart's line
    stack._wait_workers_ready({"celery-worker-1": log.stat().st_size - len("worker1@host ready.\n")})


def test_workers_are_named_by_index(tmp_path: Path) -> None:
    stack = AirflowStack(tmp_path, tmp_path, executor="CeleryExecutor", celery_workers=2)
    assert stack.worker_names == ["celery-worker-1", "celery-worker-2"]
    with pytest.raises(ValueError, match=r"no Celery worker 3: this deployment has workers 1\.\.2"):
        stack.start_worker(3)
    assert AirflowStack(tmp_path, tmp_path).worker_names == []  # LocalExecutor
