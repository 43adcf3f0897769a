"""Airflow callbacks that mail on-call: task/DAG failure callbacks and deadline alerts.

Failure callbacks (``on_failure_callback=on_backup_failure``) run where Airflow runs them
(the worker for a task, the DAG processor for a DAG) with the task context.

Deadline alerts are Airflow 3's successor to SLAs (``airflow.sdk.DeadlineAlert``). The
scheduler computes ``reference + interval`` for each run; when the run has not finished
by then it queues the alert's callback. An :class:`~airflow.sdk.AsyncCallback` runs in the
**triggerer**, which awaits ``deadline_missed(**kwargs, context=…)`` where ``kwargs`` are
the ones given here (JSON, stored in the serialized DAG) and ``context`` is
``{"dag_run": <the DAG run as the REST API returns it>, "deadline": {"id", "deadline_time"}}``
(airflow/models/deadline.py ``Deadline.handle_miss``, airflow/triggers/callback.py).
The triggerer runs in any deployment with deferrable tasks, whatever the executor, which is
why these are async callbacks rather than SyncCallbacks (executor-run; Celery needs a
provider version that supports callbacks).

Choice of deadlines (docs/alerts.md):

- backup DAGs: reference ``DAGRUN_QUEUED_AT`` (set for scheduled and manual runs alike),
  interval ``min(RPO, cron interval)``. A run that has not finished one cron interval
  after it was queued overlaps the next one (BACKUP_LATE, warning); one that has not
  finished an RPO after it was queued leaves the source without a backup newer than the
  RPO, since the previous one is older than the queue time (RPO_MISSED, critical). The
  smaller interval fires first, so it names the kind. :func:`deadlines_for` returns both
  when they differ.
- restore / failover: ``DAGRUN_QUEUED_AT`` + ``rto_hours`` -> RTO_MISSED.

Every callback catches everything: an alerting fault must never fail a backup or wedge
the triggerer; it is logged instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from include.backup import metrics
from include.backup.alerts.deadlines import (  # re-exported: they lived here (DAGs use deadlines.py)
    DEADLINE_CALLBACK_PATH,  # noqa: F401
    deadline_for,  # noqa: F401
    deadlines_for,  # noqa: F401
    rto_deadline_for,  # noqa: F401
)
from include.backup.alerts.notify import Alert, AlertKind, redact, send
from include.backup.catalog.catalog import as_utc, verified_at
from include.backup.catalog.index import optional_keys, summaries
from include.backup.errors import IntegrityError, RestoreRefused
from include.backup.run_records import record_failed_run
from include.backup.staging import FAILED_MARKER, remove_plaintext, write_private
from include.backup.targets import build_targets
from include.backup.tasks import load_config, make_backup_id, run_started_at, staging_dir

log = logging.getLogger(__name__)

BACKUP_DAG_PREFIX = "backup__"  # Schedule.dag_id
ERROR_MAX_CHARS = 600


# --- helpers ---------------------------------------------------------------------------


def _load_config() -> Any:
    return load_config()


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _as_dt(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _fmt(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "unknown"


def _fmt_delta(delta: timedelta) -> str:
    s = delta.total_seconds()
    if s < 60:  # a deadline callback fires seconds after the deadline: not "0 min"
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def schedule_of(config: Any, dag_id: str | None) -> Any:
    """The schedule a ``backup__<name>`` DAG was built from, or None."""
    if not dag_id or config is None:
        return None
    for s in getattr(config, "schedules", []):
        if s.dag_id == dag_id:
            return s
    return None


def last_good_backup(config: Any, schedule: Any) -> tuple[str, datetime] | None:
    """(id, started_at) of the newest verified backup of the schedule's source at any of
    its targets; None when there is none or the targets cannot be read (best effort)."""

    best: tuple[str, datetime] | None = None
    try:
        targets = build_targets(config, schedule.targets)
    except Exception:  # noqa: BLE001
        return None
    keys = optional_keys(config)
    for target in targets:
        try:
            manifests = summaries(target, schedule.source, keys)  # catalog index records
        except Exception as exc:  # noqa: BLE001 - an unreachable target: use the others
            log.warning("last good backup: cannot list target '%s' (%s)", target.name, redact(exc))
            continue
        for m in manifests:
            if m.backup_type == "SCHEMA" or not verified_at(m, target.name):
                continue
            started = as_utc(m.started_at)
            if best is None or started > best[1]:
                best = (m.backup_id, started)
    return best


# --- failure callback ------------------------------------------------------------------


def failure_alert(context: Mapping[str, Any], config: Any = None) -> Alert:
    """The BACKUP_FAILED alert for a task or DAG failure ``context``."""
    ti = context.get("task_instance") or context.get("ti")
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = _get(ti, "dag_id") or _get(dag_run, "dag_id") or _get(dag, "dag_id") or "unknown"
    run_id = context.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id") or "unknown"
    task_id = _get(ti, "task_id")
    map_index = _get(ti, "map_index", -1)
    try_number = _get(ti, "try_number")
    exc = context.get("exception")
    reason = context.get("reason")
    if exc is not None:
        error = f"{type(exc).__name__}: {exc}"
    elif reason:
        error = str(reason)
    else:
        error = "no error message in the callback context; see the task log"
    error = redact(" ".join(error.split()))
    if len(error) > ERROR_MAX_CHARS:
        error = error[: ERROR_MAX_CHARS - 1] + "…"

    facts: dict[str, str] = {"DAG": dag_id, "run": run_id}
    if task_id:
        facts["task"] = task_id if map_index in (None, -1) else f"{task_id}[{map_index}]"
    if try_number is not None:
        facts["try"] = str(try_number)
    schedule = schedule_of(config, dag_id)
    if schedule is not None:
        facts.update(
            schedule=schedule.name,
            source=schedule.source,
            type=schedule.type.value,
            targets=", ".join(schedule.targets),
        )
        good = last_good_backup(config, schedule)
        if good is not None:
            age = datetime.now(UTC) - good[1]
            facts["last good backup"] = f"{good[0]} ({_fmt(good[1])}, {_fmt_delta(age)} ago)"
            facts["RPO"] = f"{config.dr.rpo_hours:g} h"
        else:
            facts["last good backup"] = "none found at the schedule's targets"
    logical = _as_dt(context.get("logical_date") or _get(dag_run, "logical_date"))
    if logical:
        facts["logical date"] = _fmt(logical)
    facts["error"] = error
    what = schedule.source if schedule is not None else dag_id
    where = f"task {facts['task']}" if task_id else "the run"
    return Alert(
        AlertKind.BACKUP_FAILED,
        what,
        summary=f"{dag_id} failed in {where}",
        facts=facts,
        key=f"{AlertKind.BACKUP_FAILED.value}:{dag_id}:{run_id}",
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
    )


def failed_stage(config: Any, schedule_name: str, context: Mapping[str, Any]) -> Path | None:
    """The staging directory of the failed run in ``context``, if it is still there. The
    backup id is rebuilt the way the dump task built it."""

    ti = context.get("task_instance") or context.get("ti")
    dag_run = context.get("dag_run")
    run_id = context.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id")
    when = run_started_at(context)  # what the dump task named the backup by
    if not run_id or when is None:
        return None
    stage = staging_dir(config, make_backup_id(schedule_name, when, str(run_id)))
    return stage if stage.is_dir() else None  # a failed dump removes its staging itself


def mark_staging_failed(config: Any, schedule: Any, context: Mapping[str, Any]) -> Path | None:
    """Write the monitor's FAILED_MARKER into the failed run's staging directory, if it
    is still there, so that ``dr_monitor`` does not take the failed run for a slow one
    (BACKUP_SLOW). Returns the marker's path, or None."""

    stage = failed_stage(config, schedule.name, context)
    if stage is None:
        return None
    ti = context.get("task_instance") or context.get("ti")
    dag_run = context.get("dag_run")
    marker = stage / FAILED_MARKER
    write_private(
        marker,
        json.dumps(
            {
                "failed_at": datetime.now(UTC).isoformat(),
                "dag_id": _get(ti, "dag_id") or _get(dag_run, "dag_id"),
                "run_id": str(context.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id")),
                "task_id": _get(ti, "task_id"),
            }
        ).encode(),
    )
    return marker


def remove_failed_plaintext(config: Any, dag_id: str | None, context: Mapping[str, Any]) -> list[Path]:
    """Remove the plaintext dump of the failed run in ``context`` from its staging
    (include/backup/staging.py). Works from the DAG id, so also for a schedule that an
    edit has removed from the config since the run began."""

    if not dag_id or not dag_id.startswith(BACKUP_DAG_PREFIX):
        return []
    stage = failed_stage(config, dag_id[len(BACKUP_DAG_PREFIX):], context)
    if stage is None:
        return []
    task_id = _get(context.get("task_instance") or context.get("ti"), "task_id")
    return remove_plaintext(stage, f"task {task_id} of its run failed")


def _record_failure(context: Mapping[str, Any], config: Any) -> None:
    """For a task of a backup DAG that failed for good: its run's plaintext removed, the
    failure's metrics (``backup.run.<schedule>.failure`` / ``last_run_ok``) and the
    staging marker; best effort."""
    ti = context.get("task_instance") or context.get("ti")
    dag_id = _get(ti, "dag_id") or _get(context.get("dag_run"), "dag_id")
    dag_id = dag_id or _get(context.get("dag"), "dag_id")
    task_failed = _get(ti, "task_id") is not None
    if task_failed:  # the task callback runs on a worker, where the staging is
        try:
            remove_failed_plaintext(config, dag_id, context)
        except Exception as exc:  # noqa: BLE001 - the sweep catches what this misses
            log.warning("could not remove the failed run's plaintext: %s", redact(exc))
    schedule = schedule_of(config, dag_id)
    if schedule is None:
        return

    metrics.emit_backup_failure(schedule.name, task_failed=task_failed)
    if task_failed:  # the task callback runs on a worker, where the staging is
        try:
            mark_staging_failed(config, schedule, context)
        except Exception as exc:  # noqa: BLE001 - the mail below matters more
            log.warning("could not mark the failed run's staging: %s", redact(exc))
        leave_failed_run_record(config, schedule, context)


def leave_failed_run_record(config: Any, schedule: Any, context: Mapping[str, Any]) -> None:
    """The signed failed-run record at the schedule's targets, so that the success rate
    counts this run (include/backup/run_records.py); best effort."""
    ti = context.get("task_instance") or context.get("ti")
    run_id = context.get("run_id") or _get(ti, "run_id") or _get(context.get("dag_run"), "run_id")
    when = run_started_at(context)
    keys = optional_keys(config)
    if not run_id or when is None or keys is None:
        return
    backup_id = make_backup_id(schedule.name, when, str(run_id))
    record_failed_run(config, schedule, backup_id, _get(ti, "task_id"), keys)


def on_backup_failure(
    context: Mapping[str, Any],
    *,
    config: Any = None,
    state_path: str | os.PathLike[str] | None = None,
) -> None:
    """Task / DAG ``on_failure_callback``: mail a BACKUP_FAILED alert to
    ``dr.notification_emails``. One mail per DAG run (the task and the DAG callback of one
    run share the dedupe key). Also, for a failed task, the removal of its run's plaintext
    dump from staging (:func:`remove_failed_plaintext`), the failure metrics, and the
    staging marker that tells ``dr_monitor`` the run is over (:func:`mark_staging_failed`).
    Never raises.

    A refusal (:func:`is_refusal`: a request refused before anything was touched) is no
    failure: :func:`on_refusal` reports it instead."""
    if is_refusal(context.get("exception")):
        on_refusal(context, config=config, state_path=state_path)
        return
    try:
        if config is None:
            try:
                config = _load_config()
            except Exception as exc:  # noqa: BLE001 - the mail matters more than the figures
                log.error("backup failure alert: cannot load the config (%s)", redact(exc))
                return
        try:
            _record_failure(context, config)
        except Exception as exc:  # noqa: BLE001 - the mail matters more than the figures
            log.warning("backup failure metrics not recorded: %s", redact(exc))
        alert = failure_alert(context, config)
        send(
            [alert],
            list(config.dr.notification_emails),
            config.dr.smtp_conn_id,
            state_path=state_path,
            window=timedelta(days=7),
        )
    except Exception as exc:  # noqa: BLE001 - a callback must never raise
        log.error("backup failure alert could not be mailed: %s", redact(exc))


# --- refusals --------------------------------------------------------------------------

REFUSAL_XCOM_KEY = "refusal"


def is_refusal(exc: BaseException | None) -> bool:
    """A request refused before anything was touched: a RestoreRefused (a bad or missing
    param, no confirmation, a non-empty destination), but not a broken chain, which is
    also an IntegrityError: that one is the backups' problem and pages on-call."""
    return isinstance(exc, RestoreRefused) and not isinstance(exc, IntegrityError)


def refusal_record(context: Mapping[str, Any]) -> dict[str, Any]:
    """What the failed task's ``refusal`` XCom holds (metadata only, redacted)."""
    ti = context.get("task_instance") or context.get("ti")
    dag_run = context.get("dag_run")
    reason = redact(" ".join(str(context.get("exception")).split()))
    if len(reason) > ERROR_MAX_CHARS:
        reason = reason[: ERROR_MAX_CHARS - 1] + "…"
    return {
        "reason": reason,
        "dag_id": _get(ti, "dag_id") or _get(dag_run, "dag_id"),
        "run_id": context.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id"),
        "task_id": _get(ti, "task_id"),
        "touched_nothing": True,
    }


def refusal_alert(record: Mapping[str, Any]) -> Alert:
    """The REQUEST_REFUSED alert (info): one per run, whichever of its tasks refused."""
    dag_id, run_id = str(record["dag_id"] or "unknown"), str(record["run_id"] or "unknown")
    facts = {"DAG": dag_id, "run": run_id, "task": str(record["task_id"]), "reason": record["reason"]}
    return Alert(
        AlertKind.REQUEST_REFUSED,
        dag_id,
        summary=f"{dag_id} refused the request before touching anything",
        facts=facts,
        key=f"{AlertKind.REQUEST_REFUSED.value}:{dag_id}:{run_id}",
        dag_id=dag_id,
        run_id=run_id,
        task_id=record["task_id"],
    )


def on_refusal(
    context: Mapping[str, Any],
    *,
    config: Any = None,
    state_path: str | os.PathLike[str] | None = None,
) -> None:
    """Make a refusal readable where automation looks: a plain error line in the task log
    (REST log readers drop the exception text of a structured record), the reason as the
    failed task's XCom ``refusal`` (``GET .../xcomEntries/refusal``), and one info mail
    per run saying "refused" — no BACKUP_FAILED page, no failure metrics. Never raises."""
    try:
        record = refusal_record(context)
        log.error("refused, nothing was touched: %s", record["reason"])
        ti = context.get("task_instance") or context.get("ti")
        try:
            ti.xcom_push(key=REFUSAL_XCOM_KEY, value=record)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the log line and the mail still tell
            log.warning("could not store the refusal as XCom: %s", redact(exc))
        config = config if config is not None else _load_config()
        send(
            [refusal_alert(record)],
            list(config.dr.notification_emails),
            config.dr.smtp_conn_id,
            state_path=state_path,
            window=timedelta(days=7),
        )
    except Exception as exc:  # noqa: BLE001 - a callback must never raise
        log.error("refusal could not be reported: %s", redact(exc))


# --- deadline alerts -------------------------------------------------------------------


def deadline_alert(  # noqa: C901 - a flat list of optional facts
    kind: str,
    context: Mapping[str, Any] | None,
    *,
    interval_seconds: float | None = None,
    schedule: str | None = None,
    source: str | None = None,
    operation: str | None = None,
    rpo_hours: float | None = None,
    rto_hours: float | None = None,
    config: Any = None,
    now: datetime | None = None,
) -> Alert:
    """The alert for a missed deadline, from the callback's kwargs and simple context."""
    kind_ = AlertKind(kind)
    context = context or {}
    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id = str(_get(dag_run, "dag_id") or "unknown")
    run_id = str(_get(dag_run, "dag_run_id") or _get(dag_run, "run_id") or "unknown")
    now = now or datetime.now(UTC)
    queued = _as_dt(_get(dag_run, "queued_at"))
    started = _as_dt(_get(dag_run, "start_date"))
    deadline_time = _as_dt(_get(deadline, "deadline_time"))
    facts: dict[str, str] = {"DAG": dag_id, "run": run_id}
    if schedule:
        facts["schedule"] = schedule
    if source:
        facts["source"] = source
    if operation:
        facts["operation"] = operation
    facts["queued at"] = _fmt(queued)
    if started:
        facts["started at"] = _fmt(started)
    facts["deadline"] = _fmt(deadline_time)
    if queued:
        facts["running for"] = _fmt_delta(now - queued)
    if interval_seconds is not None:
        facts["allowed"] = _fmt_delta(timedelta(seconds=float(interval_seconds)))
    if rpo_hours is not None:
        facts["RPO"] = f"{rpo_hours:g} h"
    if rto_hours is not None:
        facts["RTO"] = f"{rto_hours:g} h"
    state = _get(dag_run, "state")
    if state:
        facts["state"] = str(state)

    if config is not None and schedule:
        sched = next((s for s in config.schedules if s.name == schedule), None)
        if sched is not None:
            good = last_good_backup(config, sched)
            if good is not None:
                facts["last good backup"] = f"{good[0]} ({_fmt(good[1])}, {_fmt_delta(now - good[1])} ago)"
            else:
                facts["last good backup"] = "none found at the schedule's targets"

    late = f"{_fmt_delta(now - deadline_time)} past its deadline" if deadline_time else "past its deadline"
    summaries = {
        AlertKind.BACKUP_LATE: f"{dag_id} run not finished, {late}",
        AlertKind.RPO_MISSED: f"{dag_id} run not finished within the RPO ({late})",
        AlertKind.RTO_MISSED: f"{operation or dag_id} not finished within the RTO ({late})",
    }
    return Alert(
        kind_,
        source or schedule or operation or dag_id,
        summary=summaries.get(kind_, f"{dag_id}: deadline missed ({late})"),
        facts=facts,
        key=f"{kind_.value}:{dag_id}:{run_id}",
        dag_id=dag_id,
        run_id=run_id,
    )


def _send_deadline(kind: str, context: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> int:
    config = _load_config()
    alert = deadline_alert(kind, context, config=config, **kwargs)
    return send(
        [alert],
        list(config.dr.notification_emails),
        config.dr.smtp_conn_id,
        window=timedelta(days=7),  # the key names the run: once per run and kind
    )


async def deadline_missed(
    kind: str = AlertKind.BACKUP_LATE.value,
    context: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> str:
    """Deadline-alert callback (AsyncCallback, runs in the triggerer). Mails one alert of
    ``kind`` for the DAG run in ``context``; the dedupe key is kind + DAG + run, so a
    retried callback does not mail twice. Never raises; returns what happened."""
    allowed = {"interval_seconds", "schedule", "source", "operation", "rpo_hours", "rto_hours", "now"}
    extra = {k: v for k, v in kwargs.items() if k in allowed}
    try:
        sent = await asyncio.to_thread(_send_deadline, kind, context, extra)
    except Exception as exc:  # noqa: BLE001 - never wedge the triggerer
        message = f"deadline alert {kind} could not be mailed: {redact(exc)}"
        log.error("%s", message)
        return message
    return f"deadline alert {kind}: {sent} mail(s) sent"
