"""Failover (the ``failover`` DAG), following the documented DR plan::

    assess ─► switch ─► restore ─► verify ─► notify

- ``assess``: the newest *verified* backup of the source (SCHEMA backups excepted) at any
  target of its schedules, and its age against ``dr.rpo_hours``. No backup: no failover.
- ``switch``: the action configured in ``dr.failover.<source>.switch`` (docs/dr.md):
  ``command`` (a program and its arguments, no shell: promote a standby, flip DNS, ...),
  ``airflow_variable`` (set a Variable to the secondary's value) or ``airflow_connection``
  (record in the Variable ``backup_failover__<source>`` which connection to use from now
  on: Airflow 3's Task SDK lets a task set Variables but not write connections), or
  ``promote_standby`` (``pg_promote()`` on a PostgreSQL hot standby, after recording how
  far its replay was behind: :mod:`include.backup.dr.standby`). With ``dry_run`` the
  action is only described.
- ``restore``: that backup (and its chain) into the secondary (the ``secondary`` param,
  else ``dr.failover.<source>.secondary``): a database name, ``conn:<conn_id>``, or a
  directory for files sources. Never into the source itself. With ``promote_standby``
  nothing is restored: the standby holds the data (and newer data than any backup).
- ``verify``: the restored data against the manifest's recorded stats
  (:func:`include.backup.dr.integrity.compare_with_manifest`); after ``promote_standby``, the
  promoted server: out of recovery, takes a write, holds every table of the latest backup,
  and how far it was behind the primary and the backup
  (:func:`include.backup.dr.standby.verify_standby`).
- ``notify``: a DR_ACTIVATED mail to ``dr.notification_emails`` with every step's outcome.

The DAG refuses to start without ``confirm`` equal to the source name (unless
``dr.auto_failover`` is on), before anything is touched. FAILOVER_TEST DR tests run the
same steps through :func:`rehearse`, with the switch in dry-run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from include.backup.alerts.notify import Alert, AlertKind, Severity, redact
from include.backup.catalog.catalog import as_utc, latest
from include.backup.config.schema import BackupConfig, FailoverSwitch
from include.backup.dr.integrity import compare_with_manifest, error_text
from include.backup.dr.params import (
    CONN_PREFIX,
    bool_param,
    check_not_production,
    check_not_same_database,
    resolve_environment,
    source_targets,
    text_param,
)
from include.backup.dr.restore import locate, restore_backup
from include.backup.dr.standby import promote_standby, standby_holds_the_data, verify_standby
from include.backup.errors import BackupError, RestoreRefused
from include.backup.runtime import load_keys
from include.backup.targets import build_target

log = logging.getLogger(__name__)

CHAIN_TYPES = ("FULL", "INCREMENTAL", "TRANSACTION_LOG")
VARIABLE_PREFIX = "backup_failover__"
STEPS = ("assess", "switch", "restore", "verify")
PROMOTE_STANDBY = "promote_standby"


@dataclass(frozen=True)
class FailoverRequest:
    source: str
    secondary: str
    target: str | None
    dry_run: bool
    overwrite: bool
    notes: str = ""

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> FailoverRequest:
        return cls(**dict(data))


def failover_variable(source: str) -> str:
    return f"{VARIABLE_PREFIX}{source}"


def parse_failover_params(params: Mapping[str, Any], config: BackupConfig) -> FailoverRequest:
    """Check the params of the ``failover`` DAG before anything is touched."""
    source = text_param(params, "source")
    if source is None:
        raise RestoreRefused(
            f"param 'source' is required: the source to fail over ({', '.join(config.sources) or 'none'})"
        )
    if source not in config.sources:
        raise RestoreRefused(
            f"param 'source': no source named {source!r}; known: {', '.join(config.sources) or 'none'}"
        )
    confirm = text_param(params, "confirm")
    if confirm != source and not config.dr.auto_failover:
        raise RestoreRefused(
            f"failover of {source!r} refused: set param 'confirm' to {source!r} to confirm "
            "(a failover switches production to the secondary); nothing was touched"
        )
    settings = config.dr.failover.get(source)
    secondary = _secondary(params, config, source)
    check_not_production(config, source, secondary, "secondary")
    target = text_param(params, "target") or (settings.target if settings else None)
    if target is not None and target not in config.targets:
        raise RestoreRefused(
            f"param 'target': no target named {target!r}; known: {', '.join(config.targets)}"
        )
    if not source_targets(config, source):
        raise RestoreRefused(f"source {source!r} has no schedule with a target: no backup to fail over to")
    notes = params.get("notes") or ""
    if not isinstance(notes, str):
        raise RestoreRefused("param 'notes' must be a string")
    return FailoverRequest(
        source=source,
        secondary=secondary,
        target=target,
        dry_run=bool_param(params, "dry_run", False),
        overwrite=bool_param(params, "overwrite", False),
        notes=notes.strip(),
    )


def _secondary(params: Mapping[str, Any], config: BackupConfig, source: str) -> str:
    """The ``secondary`` param, else the configured one; with ``promote_standby`` it can
    only be that standby (``conn:<conn_id>``, also the default)."""
    settings = config.dr.failover.get(source)
    promote = promote_switch(config, source)
    default = settings.secondary if settings else None
    if promote is not None:
        kind = config.sources[source].type
        if kind != "postgres":
            raise RestoreRefused(
                f"dr.failover.{source}.switch: kind promote_standby promotes a PostgreSQL standby "
                f"but {source!r} is a {kind} source; use kind command for its own tooling"
            )
        default = default or f"{CONN_PREFIX}{promote.conn_id}"
    secondary = text_param(params, "secondary") or default
    if not secondary:
        raise RestoreRefused(
            f"no secondary for {source!r}: pass param 'secondary' (conn:<conn_id>, a database "
            f"name, or a directory) or set dr.failover.{source}.secondary in the config"
        )
    if promote is not None and secondary.strip() not in (promote.conn_id, f"{CONN_PREFIX}{promote.conn_id}"):
        raise RestoreRefused(
            f"param 'secondary' {secondary!r}: the switch of {source!r} promotes the standby "
            f"{CONN_PREFIX}{promote.conn_id}, which then holds the data; leave 'secondary' empty "
            f"or set it to {CONN_PREFIX}{promote.conn_id}"
        )
    return secondary


def promote_switch(config: BackupConfig, source: str) -> FailoverSwitch | None:
    """The source's switch when it is ``promote_standby``, else None."""
    settings = config.dr.failover.get(source)
    action = settings.switch if settings else None
    return action if action is not None and action.kind == PROMOTE_STANDBY else None


# --- the steps -------------------------------------------------------------------------


def assess(
    config: BackupConfig, source: str, target: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The newest verified backup of ``source`` (at ``target``, else any target of its
    schedules) and its age. Raises BackupError when there is none."""
    moment = now or datetime.now(UTC)
    names = [target] if target else source_targets(config, source)
    best: tuple[Any, str] | None = None
    unreachable: list[str] = []
    for name in names:
        try:
            found = latest(
                build_target(name, config.targets[name]), source, types=CHAIN_TYPES, verified_only=True
            )
        except Exception as exc:  # noqa: BLE001 - another target may hold it
            unreachable.append(f"{name}: {exc}")
            continue
        if found is not None and (best is None or as_utc(found.started_at) > as_utc(best[0].started_at)):
            best = (found, name)
    if best is None:
        raise BackupError(
            f"no verified backup of {source!r} at {', '.join(names) or 'any target'}"
            + (f" (unreachable: {'; '.join(unreachable)})" if unreachable else "")
            + ": there is nothing to fail over to"
        )
    manifest, name = best
    age = (moment - as_utc(manifest.started_at)).total_seconds()
    result = {
        "source": source,
        "backup_id": manifest.backup_id,
        "backup_type": manifest.backup_type,
        "target": name,
        "backup_started_at": as_utc(manifest.started_at).isoformat(),
        "age_seconds": round(max(age, 0.0), 3),
        "age_hours": round(max(age, 0.0) / 3600, 3),
        "rpo_hours": config.dr.rpo_hours,
        "rpo_ok": age <= config.dr.rpo_hours * 3600,
        "unreachable_targets": unreachable,
    }
    log.info(
        "assess %s: latest verified backup %s at %s, %.2f h old (RPO %s h)",
        source,
        manifest.backup_id,
        name,
        result["age_hours"],
        config.dr.rpo_hours,
    )
    return result


def switch(
    config: BackupConfig, source: str, secondary: str, *, backup_id: str | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Run the configured switch action (or describe it, with ``dry_run``)."""
    settings = config.dr.failover.get(source)
    action = settings.switch if settings else None
    if action is None:
        return {
            "action": "none",
            "dry_run": dry_run,
            "done": False,
            "detail": f"no switch configured (dr.failover.{source}.switch): only the restore "
            "into the secondary is done; repoint clients by hand",
        }
    if action.kind == PROMOTE_STANDBY:
        return _switch_promote(action, dry_run=dry_run)
    if action.kind == "command":
        what = f"run {action.command!r}"
    elif action.kind == "airflow_variable":
        what = f"set Variable {action.variable!r} to {(action.value or secondary)!r}"
    else:
        what = f"set Variable {failover_variable(source)!r} to connection {action.conn_id!r}"
    if dry_run:
        log.info("failover switch (dry run): would %s", what)
        return {"action": action.kind, "dry_run": True, "done": False, "detail": f"dry run: would {what}"}
    if action.kind == "command":
        env = {
            **os.environ,
            "BACKUP_FAILOVER_SOURCE": source,
            "BACKUP_FAILOVER_SECONDARY": secondary,
            "BACKUP_FAILOVER_BACKUP_ID": backup_id or "",
        }
        try:
            proc = subprocess.run(  # noqa: S603 - a configured argv, no shell
                list(action.command or []),
                env=env,
                capture_output=True,
                text=True,
                timeout=action.timeout_seconds,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackupError(f"failover switch: {what} failed: {redact(exc)}") from None
        tail = redact((proc.stdout + proc.stderr).strip()[-1000:])
        if tail:
            log.info("switch command output:\n%s", tail)
        if proc.returncode != 0:
            raise BackupError(f"failover switch: {what} exited with {proc.returncode}: {tail[-300:]}")
        detail = f"ran {action.command[0] if action.command else ''} (exit 0)"
    else:
        from airflow.sdk import (
            Variable,  # lazy: Airflow's Task SDK: heavy, only for this switch kind
        )

        if action.kind == "airflow_variable":
            if not action.variable:  # the config schema requires it; say so if it slipped
                raise BackupError("failover switch: kind airflow_variable needs `variable:` in the config")
            Variable.set(action.variable, action.value or secondary)
        else:
            Variable.set(
                failover_variable(source),
                action.conn_id,
                description=f"failover of {source}: the connection to use now",
            )
        detail = what
    log.info("failover switch done: %s", detail)
    return {"action": action.kind, "dry_run": False, "done": True, "detail": detail}


def _switch_promote(action: FailoverSwitch, *, dry_run: bool) -> dict[str, Any]:
    conn_id = str(action.conn_id)
    base = {"action": PROMOTE_STANDBY, "conn_id": conn_id}
    if dry_run:
        what = (
            f"promote the standby behind connection {conn_id!r} (pg_promote, waiting up to "
            f"{action.timeout_seconds} s); no backup would be restored over it"
        )
        log.info("failover switch (dry run): would %s", what)
        return {**base, "dry_run": True, "done": False, "detail": f"dry run: would {what}"}
    return {**base, **promote_standby(conn_id, action.timeout_seconds), "dry_run": False, "done": True}


def restore_secondary(
    config: BackupConfig,
    source: str,
    secondary: str,
    *,
    backup_id: str | None,
    target: str | None,
    overwrite: bool = False,
    keys: Any = None,
    switched: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore ``backup_id`` (and its chain) into the secondary; raises on failure. When
    the switch promotes a standby (``switched``: its result), nothing is restored: see
    :func:`include.backup.dr.standby.standby_holds_the_data`."""
    promote = promote_switch(config, source)
    if promote is not None:
        return standby_holds_the_data(str(promote.conn_id), backup_id, target, switched)
    into = resolve_environment(config, source, secondary)
    check_not_production(config, source, into, "secondary")
    check_not_same_database(config, source, into)
    result = restore_backup(
        config,
        backup_id,
        into,
        keys=keys if keys is not None else load_keys(config),
        target_name=target,
        overwrite=overwrite,
        source_name=source,
    )
    log.info("restored %s into %s in %.1f s", result.backup_id, into, result.seconds)
    return {
        "backup_id": result.backup_id,
        "target": result.target,
        "into": into,
        "chain": result.chain,
        "seconds": round(result.seconds, 3),
        "stats": {k: v for k, v in result.stats.items() if not isinstance(v, list)},
    }


def verify_secondary(config: BackupConfig, restored: Mapping[str, Any]) -> dict[str, Any]:
    """Compare what the restore gave back with the manifest; raises when they differ.
    After promote_standby (the restore was skipped) the standby is checked instead."""
    if restored.get("skipped") and restored.get("standby_conn_id"):
        return verify_standby(config, restored)
    _, manifest = locate(config, restored["backup_id"], restored.get("target"))
    issues, notes = compare_with_manifest(
        manifest.source_type,
        manifest.stats,
        restored.get("stats") or {},
        chain_length=len(restored.get("chain") or [1]),
    )
    if issues:
        raise BackupError(f"verification of the secondary failed: {'; '.join(issues)}")
    return {"ok": True, "backup_id": manifest.backup_id, "notes": notes}


def rehearse(
    config: BackupConfig,
    source: str,
    environment: str,
    *,
    target: str | None = None,
    overwrite: bool = False,
    keys: Any = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """FAILOVER_TEST: the failover steps against ``environment``, the switch in dry-run.
    Returns ``{ok, issues, notes, backup_id, seconds, rpo_seconds, steps}``; never raises
    for a failed step (it is the test's finding)."""
    started = time.monotonic()
    steps: dict[str, str] = {}
    out: dict[str, Any] = {
        "ok": False,
        "issues": [],
        "notes": [],
        "backup_id": None,
        "seconds": None,
        "rpo_seconds": None,
    }
    try:
        a = assess(config, source, target, now)
        out.update(backup_id=a["backup_id"], rpo_seconds=a["age_seconds"])
        steps["assess"] = f"ok: {a['backup_id']} at {a['target']}, {a['age_hours']:.2f} h old"
        s = switch(config, source, environment, backup_id=a["backup_id"], dry_run=True)
        steps["switch"] = s["detail"]
        r = restore_secondary(
            config,
            source,
            environment,
            backup_id=a["backup_id"],
            target=a["target"],
            overwrite=overwrite,
            keys=keys,
            switched=s,
        )
        steps["restore"] = (
            r["detail"]
            if r.get("skipped")
            else f"ok: {r['backup_id']} into {r['into']} in {r['seconds']:.1f} s"
        )
        v = verify_secondary(config, r)
        steps["verify"] = "ok" + (f" ({'; '.join(v['notes'])})" if v["notes"] else "")
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the test's finding
        failed = next(s for s in STEPS if s not in steps)
        steps[failed] = f"FAILED: {error_text(exc)}"
        out["issues"].append(f"failover step {failed} failed: {error_text(exc)}")
    out["seconds"] = round(time.monotonic() - started, 3)
    out["steps"] = steps
    out["notes"].append("failover steps: " + "; ".join(f"{k}: {v}" for k, v in steps.items()))
    return out


# --- notification ----------------------------------------------------------------------


def activated_alert(
    request: FailoverRequest,
    outcomes: Mapping[str, Any],
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
) -> Any:
    """The DR_ACTIVATED alert: every step's outcome (None: the step did not finish)."""
    facts: dict[str, str] = {
        "source": request.source,
        "secondary": request.secondary,
        "mode": "DRY RUN" if request.dry_run else "live",
    }
    ok = True
    for step in STEPS:
        value = outcomes.get(step)
        if value is None:
            ok = False
            facts[step] = "did not complete (see the task log)"
        elif step == "assess":
            facts[step] = (
                f"backup {value['backup_id']} at {value['target']}, "
                f"{value['age_hours']:.2f} h old (RPO {value['rpo_hours']:g} h)"
            )
        elif step == "switch" or (step == "restore" and value.get("skipped")):
            facts[step] = str(value.get("detail"))
        elif step == "restore":
            facts[step] = f"{value['backup_id']} into {value['into']} in {value['seconds']:.1f} s"
        else:
            facts[step] = "ok" + (f" ({'; '.join(value.get('notes') or [])})" if value.get("notes") else "")
    if request.notes:
        facts["notes"] = request.notes
    state = "completed" if ok else "INCOMPLETE"
    return Alert(
        AlertKind.DR_ACTIVATED,
        request.source,
        summary=f"{'dry-run ' if request.dry_run else ''}failover to {request.secondary} {state}",
        facts=facts,
        severity=Severity.INFO if request.dry_run and ok else None,
        key=f"DR_ACTIVATED:{request.source}:{run_id or datetime.now(UTC).isoformat()}",
        dag_id=dag_id,
        run_id=run_id,
    )
