"""The DR DAGs: ``restore``, ``dr_test``, ``failover`` (manual, triggered from the UI or
the REST API with a JSON ``conf``) and ``dr_monitor`` (every 15 minutes). docs/dr.md.

``restore``: params ``source``, ``backup_id`` or ``point_in_time``, ``into``, ``target``,
``tables`` / ``collections`` / ``paths``, ``overwrite``. The params are validated before
anything is touched; the restore task records how long the restore took (the measured RTO)
and mails on-call when it overran ``dr.rto_hours``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup import audit, runtime
from include.backup.alerts.deadlines import rto_deadline_for
from include.backup.alerts.notify import Alert, AlertKind, send
from include.backup.config.schema import BackupConfig
from include.backup.dag_defaults import dag_defaults
from include.backup.dr import access, autofailover, failover
from include.backup.dr.drills import plan_drills
from include.backup.dr.drtest import (
    TEST_TYPE_ALIASES,
    DRTestRequest,
    mail_reports,
    parse_dr_test_params,
    run_dr_test,
    store_reports,
    summary,
)
from include.backup.dr.failover import parse_failover_params
from include.backup.dr.monitor import notify_report, run_monitor, sweep_targets
from include.backup.dr.params import RestoreRequest, parse_restore_params
from include.backup.dr.reports import TEST_TYPES, DRTestReport
from include.backup.dr.restore import (
    THAW_TIMEOUT_S,
    may_freeze,
    restore_backup,
    thaw_for_restore,
    thaw_poke_interval_s,
)
from include.backup.errors import BackupError, RestoreRefused
from include.backup.factory import _load, deadline_alerts_enabled
from include.backup.metrics import emit_monitor_report, emit_restore
from include.backup.staging import sweep_configured_staging

log = logging.getLogger(__name__)

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
"""  # noqa: E501 - markdown table rows cannot be wrapped


def _restore_params(config: BackupConfig) -> dict[str, Any]:
    from airflow.sdk import Param  # lazy: Airflow: not loaded by the CLI and config checks

    sources = ", ".join(config.sources) or "none configured"
    targets = ", ".join(config.targets) or "none configured"
    nullable_text = ["null", "string"]
    return {
        "source": Param(None, type=nullable_text, description=f"source name: {sources}"),
        "backup_id": Param(
            None, type=nullable_text, description="a backup id (python -m include.backup list)"
        ),
        "point_in_time": Param(None, type=nullable_text, description="ISO-8601, e.g. 2026-11-22T14:05:00Z"),
        "into": Param("", type="string", description="where to restore: database, conn:<id>, or directory"),
        "target": Param(None, type=nullable_text, description=f"target name: {targets}"),
        "tables": Param(
            None, type=["null", "array", "string"], description="only these tables / collections / paths"
        ),
        "overwrite": Param(False, type="boolean", description="restore over a non-empty destination"),
    }


def run_restore(request_data: dict[str, Any]) -> dict[str, Any]:
    """The restore task: keys from the connection, then restore_backup; measured RTO."""

    config = runtime.load_config()
    request = RestoreRequest.from_xcom(request_data)
    with audit.recorded(config, "restore", source=request.source, target=request.target,
                        backup_ids=[request.backup_id] if request.backup_id else []) as audited:  # fmt: skip
        result = restore_backup(
            config,
            request.backup_id,
            request.into,
            keys=runtime.load_keys(config),
            target_name=request.target,
            only=request.only,
            overwrite=request.overwrite,
            until=request.point_in_time,
            source_name=request.source,
        )
        audited.source, audited.backup_ids, audited.target = result.source, result.chain, result.target

    emit_restore(result, rto_hours=config.dr.rto_hours)  # never raises
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
    log.info(
        "restored %s into %s in %.1f s (RTO %s h)",
        result.backup_id,
        result.into,
        result.seconds,
        config.dr.rto_hours,
    )
    if not summary["rto_met"]:
        _mail_rto_missed(config, summary)
    return summary


def _mail_rto_missed(config: BackupConfig, summary: dict[str, Any]) -> None:
    """An overrun is on-call's business, but must not turn a good restore into a failure."""

    alert = Alert(
        kind=AlertKind.RTO_MISSED,
        subject=f"restore of {summary['backup_id']}",
        summary=f"restore took {summary['seconds'] / 3600:.2f} h, RTO {summary['rto_hours']} h",
        facts={
            "backup": str(summary["backup_id"]),
            "into": str(summary["into"]),
            "seconds": str(summary["seconds"]),
        },
    )
    try:
        send([alert], config.dr.notification_emails, config.dr.smtp_conn_id)
    except Exception:  # noqa: BLE001 - the restore itself succeeded
        log.exception("could not mail the RTO_MISSED alert")


def build_restore_dag(config: BackupConfig) -> Any:
    from airflow.sdk import (  # lazy: Airflow: not loaded by the CLI and config checks
        DAG,
        get_current_context,
        task,
    )

    with DAG(
        dag_id="restore",
        schedule=None,
        is_paused_upon_creation=False,  # runs only when triggered: a REST trigger must not sit queued
        params=_restore_params(config),
        doc_md=RESTORE_DOC,
        description="Restore a backup, a point in time, or some tables into a place you name",
        # A half-done restore is not retried blindly.
        **dag_defaults("dr", "restore", retries=0, max_active_runs=None),
        deadline=rto_deadline_for(config, "restore") if deadline_alerts_enabled() else None,
        render_template_as_native_obj=True,
        access_control=access.fab_access_control(config),  # dr.operator_roles
    ) as dag:

        @task(task_id="validate_params", multiple_outputs=False)
        def validate_params() -> dict[str, Any]:
            ctx, loaded = get_current_context(), runtime.load_config()
            access.refuse_unless_operator(loaded, ctx, "restore")  # dr.operator_roles
            return parse_restore_params(ctx["params"], loaded).to_xcom()

        @task(task_id="restore", multiple_outputs=False)
        def restore(request: dict[str, Any]) -> dict[str, Any]:
            return run_restore(request)

        # TaskFlow: an XComArg stands for the upstream return value (apache/airflow#39514).
        request = validate_params()
        restored = restore(request)  # type: ignore[arg-type]
        if may_freeze(config):  # archive tiers: wait for thaws without holding a worker slot
            # Retries, unlike the restore's: a poke only looks and asks for thaws once, and
            # Airflow 3.3 may fail a reschedule-mode sensor whose previous poke's executor
            # event is processed late (apache/airflow#71172).
            thaw = task.sensor(task_id="thaw", mode="reschedule", poke_interval=thaw_poke_interval_s(),
                               timeout=THAW_TIMEOUT_S, retries=3,
                               retry_delay=timedelta(seconds=thaw_poke_interval_s()))(run_thaw)  # fmt: skip
            thaw(request) >> restored  # type: ignore[arg-type]
    return dag


def run_thaw(request_data: dict[str, Any]) -> Any:
    """The thaw sensor's poke: request the thaw of every frozen payload of the chain once,
    done when all can be read (the XCom says what was frozen)."""
    from airflow.sdk import PokeReturnValue  # lazy: Airflow: not loaded by the CLI and config checks

    config = runtime.load_config()
    request = RestoreRequest.from_xcom(request_data)
    status = thaw_for_restore(
        config, request.backup_id, keys=runtime.load_keys(config), target_name=request.target,
        until=request.point_in_time, source_name=request.source,
    )  # fmt: skip
    return PokeReturnValue(is_done=status.ready, xcom_value=status.to_xcom())


DR_TEST_DOC = """### DR test
Trigger with a config (REST: `POST /api/v2/dags/dr_test/dagRuns {"logical_date": null, "conf": {...}}`).

| param | meaning |
|---|---|
| `test_type` | BACKUP_VERIFICATION, RESTORE_TEST, FAILOVER_TEST or RECOVERY_TIME_TEST |
| `source` | the source to test (BACKUP_VERIFICATION: default every scheduled source) |
| `target_environment` | where to restore: `conn:<conn_id>` (or a connection id), a new database name, a directory |
| `smoke_queries` | PostgreSQL: SQL that must return at least one row after the restore |
| `target` | restore from this target (default: the first holding the backup) |
| `overwrite` | restore over a non-empty target environment (default false) |
| `notify_on_completion` | mail the result (DR_TEST_RESULT) |
| `participants`, `notes` | kept in the report |

The report (success, measured RTO and RPO, issues) is written next to the backups at every
target of the source (`_dr_tests/<source>/`), returned as XCom by `run_test`, recorded as an
asset event on `dr_test://<source>`; the `result` task fails when the test failed.
See docs/dr.md.
"""  # noqa: E501

FAILOVER_DOC = """### Failover
assess → switch → restore → verify → notify (DR_ACTIVATED). Set `confirm` to the source
name (refused otherwise, before anything is touched). `dry_run`: the switch is only
described; the restore into the secondary is real. A `promote_standby` switch restores
nothing: verify checks the (promoted) standby. See docs/dr.md.

| param | meaning |
|---|---|
| `source` | the source to fail over |
| `confirm` | the source name again |
| `secondary` | where to restore (default `dr.failover.<source>.secondary`) |
| `target` | restore from this target |
| `dry_run` | do not run the switch action |
| `overwrite` | restore over a non-empty secondary |
"""

DR_MONITOR_DOC = """### DR monitor
Every 15 minutes: newest verified backup per source against the RPO, late schedules,
backups running much longer than usual, overdue DR tests, key rotation, free space and
reachability of the targets. Mails each violation once until it clears (docs/alerts.md);
sends the figures as Airflow metrics (docs/metrics.md). Also sweeps the staging area for
plaintext of dead runs and, every few hours per target, removes orphans at the targets
(docs/concurrency.md). XCom: the report's metadata, with what the sweep removed (`swept`).

`dr_actions` then triggers what is due without a human (docs/dr.md): a scheduled drill
(`dr_test` into `dr.drills.<source>.into`) and, after `dr.failover_after_checks` failed
checks of a primary, the `failover` DAG (`dr.auto_failover: true`) or a
FAILOVER_RECOMMENDED mail; `trigger_dr_runs` starts those runs.
"""


def _dr_test_params(config: BackupConfig) -> dict[str, Any]:
    from airflow.sdk import Param  # lazy: Airflow: not loaded by the CLI and config checks

    sources = ", ".join(config.sources) or "none configured"
    nullable_text = ["null", "string"]
    return {
        "test_type": Param("RESTORE_TEST", type="string", enum=[*TEST_TYPES, *TEST_TYPE_ALIASES],
                           description="what to test (aliases such as RESTORE, FAILOVER, RTO are accepted)"),
        "source": Param(None, type=nullable_text, description=f"source name: {sources}"),
        "target_environment": Param(
            None, type=nullable_text, description="conn:<conn_id>, a new database name, or a directory"
        ),
        "smoke_queries": Param([], type=["null", "array"], description="PostgreSQL: SQL returning >= 1 row"),
        "target": Param(None, type=nullable_text, description="restore from this target"),
        "overwrite": Param(False, type="boolean", description="restore over a non-empty environment"),
        "notify_on_completion": Param(True, type="boolean", description="mail the result"),
        "participants": Param([], type=["null", "array", "string"], description="who took part"),
        "notes": Param("", type=["null", "string"], description="free text kept in the report"),
    }


def _failover_params(config: BackupConfig) -> dict[str, Any]:
    from airflow.sdk import Param  # lazy: Airflow: not loaded by the CLI and config checks

    sources = ", ".join(config.sources) or "none configured"
    nullable_text = ["null", "string"]
    return {
        "source": Param(None, type=nullable_text, description=f"source to fail over: {sources}"),
        "confirm": Param(None, type=nullable_text, description="type the source name to confirm"),
        "secondary": Param(
            None, type=nullable_text, description="conn:<conn_id>, database or directory (default: config)"
        ),
        "target": Param(None, type=nullable_text, description="restore from this target"),
        "dry_run": Param(False, type="boolean", description="describe the switch instead of doing it"),
        "overwrite": Param(False, type="boolean", description="restore over a non-empty secondary"),
        "notes": Param("", type=["null", "string"], description="free text for the notification"),
    }


DR_TEST_ALIAS = "dr_test"


def run_dr_test_task(request_data: dict[str, Any], dag_run_id: str | None = None) -> dict[str, Any]:
    """The run_test task: run the test, write the report(s) at the targets. Does not fail
    for a failed test (the report says so; the result task fails)."""

    config = runtime.load_config()
    request = DRTestRequest.from_xcom(request_data)
    reports = run_dr_test(request, config, dag_run_id=dag_run_id)
    written = store_reports(config, reports)
    for r in reports:  # one audit record per source tested
        audit.note(config, "dr_test", source=r.source, result="ok" if r.success else "failed",
                   backup_ids=[r.backup_id] if r.backup_id else [],
                   reason="; ".join(map(str, r.issues))[:500], run_id=dag_run_id)  # fmt: skip
    for r in reports:
        log.info("DR test %s of %s: %s, RTO %s s, RPO %s s, issues: %s", r.test_type, r.source,
                 "PASSED" if r.success else "FAILED", r.measured_rto_seconds,
                 r.measured_rpo_seconds, r.issues or "none")
    return {
        "success": all(r.success for r in reports),
        "reports": [summary(r) for r in reports],
        "written": written,
        "notify_on_completion": request.notify_on_completion,
    }


def publish_dr_test(result: dict[str, Any], *, dag_id: str | None = None, run_id: str | None = None,
                    outlet_events: Any = None) -> dict[str, Any]:
    """Asset event per report (dr_test://<source>) and the DR_TEST_RESULT mail."""

    if outlet_events is not None:
        from airflow.sdk import Asset, AssetAlias  # lazy: Airflow: not loaded by the CLI and config checks

        for s in result["reports"]:
            extra = {k: s[k] for k in ("test_id", "test_type", "success", "measured_rto_seconds",
                                       "measured_rpo_seconds", "backup_id", "target_environment")}
            extra["issues"] = len(s["issues"])
            outlet_events[AssetAlias(DR_TEST_ALIAS)].add(Asset(f"dr_test://{s['source']}"), extra=extra)
    mailed = 0
    if result.get("notify_on_completion"):
        config = runtime.load_config()
        reports = [DRTestReport.model_validate(s) for s in result["reports"]]
        try:
            mailed = mail_reports(config, reports, dag_id=dag_id, run_id=run_id)
        except Exception:  # noqa: BLE001 - the report is written; the mail is best effort
            log.exception("could not mail the DR test result")
    return {**result, "mailed": mailed}


def check_dr_test_result(result: dict[str, Any]) -> dict[str, Any]:
    if not result["success"]:
        failed = [
            f"{s['source']}: {'; '.join(s['issues']) or 'failed'}"
            for s in result["reports"]
            if not s["success"]
        ]
        raise BackupError("DR test failed: " + " | ".join(failed))
    return {"success": True, "tests": [s["test_id"] for s in result["reports"]]}


def build_dr_test_dag(config: BackupConfig) -> Any:
    from airflow.sdk import (  # lazy: Airflow: not loaded by the CLI and config checks
        DAG,
        AssetAlias,
        get_current_context,
        task,
    )

    with DAG(
        dag_id="dr_test",
        schedule=None,
        is_paused_upon_creation=False,  # runs only when triggered: a REST trigger must not sit queued
        params=_dr_test_params(config),
        doc_md=DR_TEST_DOC,
        description="DR test: verify backups, restore into staging, rehearse failover, measure RTO",
        **dag_defaults("dr", "dr_test", retries=0, max_active_runs=None),
        render_template_as_native_obj=True,
        access_control=access.fab_access_control(config),  # dr.operator_roles
    ) as dag:

        @task(task_id="validate_params", multiple_outputs=False)
        def validate_params() -> dict[str, Any]:
            ctx, loaded = get_current_context(), runtime.load_config()
            access.refuse_unless_operator(loaded, ctx, "dr_test")  # dr.operator_roles
            return parse_dr_test_params(ctx["params"], loaded).to_xcom()

        @task(task_id="run_test", multiple_outputs=False)
        def run_test(request: dict[str, Any]) -> dict[str, Any]:
            return run_dr_test_task(request, get_current_context().get("run_id"))

        @task(task_id="publish", outlets=[AssetAlias(DR_TEST_ALIAS)], multiple_outputs=False)
        def publish(result: dict[str, Any]) -> dict[str, Any]:
            ctx = get_current_context()
            return publish_dr_test(result, dag_id="dr_test", run_id=ctx.get("run_id"),
                                   outlet_events=ctx.get("outlet_events"))

        @task(task_id="result", multiple_outputs=False)
        def result(published: dict[str, Any]) -> dict[str, Any]:
            return check_dr_test_result(published)

        result(publish(run_test(validate_params())))  # type: ignore[arg-type]  # XComArg at parse time (apache/airflow#39514)
    return dag


def build_failover_dag(config: BackupConfig) -> Any:
    from airflow.sdk import (  # lazy: Airflow: not loaded by the CLI and config checks
        DAG,
        get_current_context,
        task,
    )

    with DAG(
        dag_id="failover",
        schedule=None,
        is_paused_upon_creation=False,  # runs only when triggered: a REST trigger must not sit queued
        params=_failover_params(config),
        doc_md=FAILOVER_DOC,
        description="Fail over a source: assess, switch, restore the latest backup, verify, notify",
        **dag_defaults("dr", "failover", retries=0),
        deadline=rto_deadline_for(config, "failover") if deadline_alerts_enabled() else None,
        render_template_as_native_obj=True,
        access_control=access.fab_access_control(config),  # dr.operator_roles
    ) as dag:

        @task(task_id="validate_params", multiple_outputs=False)
        def validate_params() -> dict[str, Any]:
            ctx, loaded = get_current_context(), runtime.load_config()
            access.refuse_unless_operator(loaded, ctx, "failover")  # dr.operator_roles
            return parse_failover_params(ctx["params"], loaded).to_xcom()

        @task(task_id="assess", multiple_outputs=False)
        def assess(request: dict[str, Any]) -> dict[str, Any]:
            req = failover.FailoverRequest.from_xcom(request)
            return failover.assess(runtime.load_config(), req.source, req.target)

        @task(task_id="switch", multiple_outputs=False)
        def switch(request: dict[str, Any], assessed: dict[str, Any]) -> dict[str, Any]:
            req = failover.FailoverRequest.from_xcom(request)
            return failover.switch(runtime.load_config(), req.source, req.secondary,
                                   backup_id=assessed["backup_id"], dry_run=req.dry_run)

        @task(task_id="restore", multiple_outputs=False)
        def restore(
            request: dict[str, Any], assessed: dict[str, Any], switched: dict[str, Any]
        ) -> dict[str, Any]:
            req = failover.FailoverRequest.from_xcom(request)
            return failover.restore_secondary(runtime.load_config(), req.source, req.secondary,
                                              backup_id=assessed["backup_id"], target=assessed["target"],
                                              overwrite=req.overwrite, switched=switched)

        @task(task_id="verify", multiple_outputs=False)
        def verify(restored: dict[str, Any]) -> dict[str, Any]:
            return failover.verify_secondary(runtime.load_config(), restored)

        @task(task_id="notify", trigger_rule="all_done", multiple_outputs=False)
        def notify(request: dict[str, Any] | None) -> dict[str, Any]:
            ctx = get_current_context()
            if request is None:  # validate_params refused: nothing was touched, nothing to announce
                audit.note(runtime.load_config(), "failover", result="refused",
                           reason="refused by validate_params (its XCom 'refusal' says why)")  # fmt: skip
                raise RestoreRefused("failover refused by validate_params (its XCom 'refusal' says why); "
                                     "nothing was done")
            ti = ctx["ti"]
            outcomes = {step: ti.xcom_pull(task_ids=step) for step in failover.STEPS}
            req = failover.FailoverRequest.from_xcom(request)
            config = runtime.load_config()
            alert = failover.activated_alert(req, outcomes, dag_id="failover", run_id=ctx.get("run_id"))
            for step in failover.STEPS:
                log.info("failover step %s: %s", step, alert.facts.get(step))
            try:
                send([alert], list(config.dr.notification_emails), config.dr.smtp_conn_id)
            except Exception:  # noqa: BLE001 - report the steps' outcome regardless
                log.exception("could not mail the DR_ACTIVATED notification")
            incomplete = [s for s in failover.STEPS if outcomes[s] is None]
            # The measured data-loss window goes into the record: the DR page shows it
            # from the targets (dr/cockpit/actions.py), with Airflow's database gone too.
            from include.backup.dr.cockpit.actions import failover_window  # lazy: the task's, not the parse's

            audit.note(config, "failover", source=req.source, result="failed" if incomplete else "ok",
                       reason=f"steps not done: {', '.join(incomplete)}" if incomplete else
                       ("dry run" if req.dry_run else ""), extra=failover_window(outcomes))  # fmt: skip
            if any(outcomes[s] is None for s in failover.STEPS):
                raise BackupError("failover incomplete: " + "; ".join(
                    f"{s}: {alert.facts[s]}" for s in failover.STEPS))
            return {"source": req.source, "dry_run": req.dry_run, "steps": alert.facts}

        request = validate_params()
        assessed = assess(request)  # type: ignore[arg-type]  # XComArg at parse time (apache/airflow#39514)
        switched = switch(request, assessed)  # type: ignore[arg-type]  # XComArg at parse time (apache/airflow#39514)
        restored = restore(request, assessed, switched)  # type: ignore[arg-type]  # XComArg at parse time (apache/airflow#39514)
        verified = verify(restored)  # type: ignore[arg-type]  # XComArg at parse time (apache/airflow#39514)
        notify(request).set_upstream(verified)  # type: ignore[arg-type]  # XComArg at parse time (apache/airflow#39514)
    return dag


def build_dr_monitor_dag(config: BackupConfig) -> Any:
    from airflow.providers.standard.operators.trigger_dagrun import (
        TriggerDagRunOperator,  # lazy: Airflow: not loaded by the CLI and config checks
    )
    from airflow.sdk import DAG, task  # lazy: Airflow: not loaded by the CLI and config checks

    with DAG(
        dag_id="dr_monitor",
        schedule="*/15 * * * *",

        doc_md=DR_MONITOR_DOC,
        description="RPO, late backups, overdue DR tests, key rotation, storage: mail on-call",
        # Retried once; runs again in 15 minutes (no failure callback).
        **dag_defaults("dr", "monitor", retries=1, alert_on_failure=False),
    ) as dag:

        @task(task_id="monitor", multiple_outputs=False)
        def monitor() -> dict[str, Any]:
            config = runtime.load_config()
            sweep_configured_staging(config)  # plaintext of dead runs (include/backup/staging.py)
            report = run_monitor(config)
            sweep_targets(config, report)  # orphans at the targets (schedule_retention.py)
            emit_monitor_report(report, rto_hours=config.dr.rto_hours)  # before mail: SMTP may raise
            sent = notify_report(report, config)
            log.info("monitor: %d alert(s), %d issue(s), %d mail(s) sent",
                     len(report.alerts), len(report.issues), sent)
            return report.to_json()

        @task(task_id="dr_actions", multiple_outputs=False)
        def dr_actions(report: dict[str, Any]) -> list[dict[str, Any]]:
            return run_dr_actions(report)

        # One mapped run per drill or failover due; none mapped: skipped. A run id that
        # exists already (today's drill, this outage's failover) is not started twice.
        TriggerDagRunOperator.partial(
            task_id="trigger_dr_runs", skip_when_already_exists=True, retries=0
        ).expand_kwargs(dr_actions(monitor()))  # type: ignore[arg-type]  # XComArg at parse time (apache/airflow#39514)
    return dag


def run_dr_actions(report: dict[str, Any], *, state_path: Any = None,
                   checker: autofailover.Checker = autofailover.check_primary) -> list[dict[str, Any]]:
    """dr_monitor's second task: the drills due and the auto-failover checks. Returns the
    TriggerDagRunOperator kwargs of the runs to start; mails FAILOVER_RECOMMENDED."""
    config = runtime.load_config()
    now = datetime.now(UTC)
    triggers: list[dict[str, Any]] = []
    for drill in plan_drills(config, report.get("sources", {}), now):
        if drill.warning:
            log.warning("%s", drill.warning)
        elif drill.trigger():
            log.info("DR drill of %s due (%s): triggering dr_test run %s",
                     drill.source, drill.reason, drill.run_id)
            triggers.append(drill.trigger())  # type: ignore[arg-type]  # not None: checked above
    decisions = autofailover.check_all(config, now=now, path=state_path, checker=checker)
    alerts = [d.alert for d in decisions if d.alert is not None]
    triggers += [d.trigger for d in decisions if d.trigger is not None]
    if alerts:
        send(alerts, list(config.dr.notification_emails), config.dr.smtp_conn_id, state_path=state_path)
    return triggers


def register_dr_dags(namespace: dict[str, Any]) -> None:
    config = _load(None).config
    for build in (build_restore_dag, build_dr_test_dag, build_failover_dag, build_dr_monitor_dag):
        dag = build(config)
        namespace[dag.dag_id] = dag
