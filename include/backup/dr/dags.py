"""The manual DR DAGs, triggered from the UI or the REST API with a JSON ``conf``.

``restore``: params ``source``, ``backup_id`` or ``point_in_time``, ``into``, ``target``,
``tables`` / ``collections`` / ``paths``, ``overwrite``. The params are validated before
anything is touched; the restore task records how long the restore took (the measured RTO)
and mails on-call when it overran ``dr.rto_hours``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from include.backup.config.schema import BackupConfig

log = logging.getLogger(__name__)

START_DATE = datetime(2024, 1, 1, tzinfo=timezone.utc)

RESTORE_DOC = """### Restore a backup
Trigger with a config (UI: *Trigger DAG w/ config*; REST API:
`POST /api/v2/dags/restore/dagRuns {"logical_date": null, "conf": {...}}`).

| param | meaning |
|---|---|
| `source` | the source to restore (its newest backup, or the state at `point_in_time`) |
| `backup_id` | or: exactly this backup (and the chain it depends on) |
| `point_in_time` | ISO-8601 time, for sources with log backups (PostgreSQL WAL, MongoDB oplog) |
| `into` | a database name or `conn:<conn_id>`; a directory for files; a new data directory for PostgreSQL PITR |
| `target` | restore from this target (default: the first that holds the backup) |
| `tables` / `collections` / `paths` | restore only these |
| `overwrite` | restore over a non-empty destination (default false: refused) |

Every object of the chain is re-hashed against its manifest before anything is written.
The `restore` task's XCom holds the measured RTO (`seconds`) against `dr.rto_hours`.
"""


def _restore_params(config: BackupConfig) -> dict[str, Any]:
    from airflow.sdk import Param

    sources = ", ".join(config.sources) or "none configured"
    targets = ", ".join(config.targets) or "none configured"
    nullable_text = ["null", "string"]
    return {
        "source": Param(None, type=nullable_text, description=f"source name: {sources}"),
        "backup_id": Param(None, type=nullable_text, description="a backup id (python -m include.backup list)"),
        "point_in_time": Param(None, type=nullable_text, description="ISO-8601, e.g. 2026-11-22T14:05:00Z"),
        "into": Param("", type="string", description="where to restore: database, conn:<id>, or directory"),
        "target": Param(None, type=nullable_text, description=f"target name: {targets}"),
        "tables": Param(None, type=["null", "array", "string"], description="only these tables / collections / paths"),
        "overwrite": Param(False, type="boolean", description="restore over a non-empty destination"),
    }


def run_restore(request_data: dict[str, Any]) -> dict[str, Any]:
    """The restore task: keys from the connection, then restore_backup; measured RTO."""
    from include.backup import tasks
    from include.backup.dr.params import RestoreRequest
    from include.backup.dr.restore import restore_backup

    config = tasks.load_config()
    request = RestoreRequest.from_xcom(request_data)
    result = restore_backup(
        config,
        request.backup_id,
        request.into,
        keys=tasks.load_keys(config),
        target_name=request.target,
        only=request.only,
        overwrite=request.overwrite,
        until=request.point_in_time,
        source_name=request.source,
    )
    rto_seconds = config.dr.rto_hours * 3600
    summary = {
        "backup_id": result.backup_id,
        "target": result.target,
        "into": result.into,
        "chain": result.chain,
        "seconds": round(result.seconds, 3),
        "rto_hours": config.dr.rto_hours,
        "rto_met": result.seconds <= rto_seconds,
        "stats": result.stats,
    }
    log.info("restored %s into %s in %.1f s (RTO %s h)", result.backup_id, result.into, result.seconds, config.dr.rto_hours)
    if not summary["rto_met"]:
        _mail_rto_missed(config, summary)
    return summary


def _mail_rto_missed(config: BackupConfig, summary: dict[str, Any]) -> None:
    """An overrun is on-call's business, but must not turn a good restore into a failure."""
    from include.backup.alerts.notify import Alert, AlertKind, send

    alert = Alert(
        kind=AlertKind.RTO_MISSED,
        subject=f"restore of {summary['backup_id']}",
        summary=f"restore took {summary['seconds'] / 3600:.2f} h, RTO {summary['rto_hours']} h",
        facts={"backup": str(summary["backup_id"]), "into": str(summary["into"]), "seconds": str(summary["seconds"])},
    )
    try:
        send([alert], config.dr.notification_emails, config.dr.smtp_conn_id)
    except Exception:  # noqa: BLE001 - the restore itself succeeded
        log.exception("could not mail the RTO_MISSED alert")


def build_restore_dag(config: BackupConfig) -> Any:
    from airflow.sdk import DAG, get_current_context, task

    from include.backup.alerts.callbacks import on_backup_failure, rto_deadline_for
    from include.backup.factory import deadline_alerts_enabled

    with DAG(
        dag_id="restore",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        params=_restore_params(config),
        tags=["backup", "dr", "restore"],
        doc_md=RESTORE_DOC,
        description="Restore a backup, a point in time, or some tables into a place you name",
        default_args={"owner": "backup", "retries": 0, "on_failure_callback": on_backup_failure},
        deadline=rto_deadline_for(config, "restore") if deadline_alerts_enabled() else None,
        render_template_as_native_obj=True,
    ) as dag:

        @task(task_id="validate_params")
        def validate_params() -> dict[str, Any]:
            from include.backup import tasks
            from include.backup.dr.params import parse_restore_params

            params = get_current_context()["params"]
            return parse_restore_params(params, tasks.load_config()).to_xcom()

        @task(task_id="restore")
        def restore(request: dict[str, Any]) -> dict[str, Any]:
            return run_restore(request)

        restore(validate_params())
    return dag


def register_dr_dags(namespace: dict[str, Any]) -> None:
    from include.backup.factory import _load

    config = _load(None).config
    dag = build_restore_dag(config)
    namespace[dag.dag_id] = dag
