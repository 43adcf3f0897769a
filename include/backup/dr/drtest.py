"""DR tests (the ``dr_test`` DAG): params, the four test types, and the report.

- BACKUP_VERIFICATION: the newest backup of the source (or of every scheduled source) at
  every target of its schedules is re-hashed against its manifest and deep-verified
  (decrypted and decompressed to the end). Nothing is written but the report.
- RESTORE_TEST: the newest backup (and its chain) of ``source`` is restored into
  ``target_environment``, then checked against the manifest's recorded stats (row counts
  per table for PostgreSQL logical dumps, documents per collection for MongoDB, file /
  directory / symlink counts for files) and the ``smoke_queries`` (PostgreSQL: each must
  return at least one row).
- FAILOVER_TEST: the failover plan (:mod:`include.backup.dr.failover`) against
  ``target_environment``: assess, the switch in dry-run (production is never switched),
  a real restore into ``target_environment``, verify.
- RECOVERY_TIME_TEST: like RESTORE_TEST, and the measured RTO must be within
  ``dr.rto_hours``.

Every test yields one :class:`~include.backup.dr.reports.DRTestReport` per source
(``measured_rto_seconds``: the restore's duration; ``measured_rpo_seconds``: the age of
the backup tested, at test time), written next to the backups at every target of the
source's schedules. A DR test never writes over a non-empty destination unless
``overwrite`` is passed, and never restores into the source's own connection.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from include.backup.config.schema import BackupConfig
from include.backup.dr import smoke as smoke_mod
from include.backup.dr.params import check_destination, text_param
from include.backup.dr.reports import TEST_TYPES, DRTestReport, write_report
from include.backup.errors import BackupError, RestoreRefused

log = logging.getLogger(__name__)

CONN_PREFIX = "conn:"
# What people type from the seed documents' API ("FAILOVER", "RESTORE") is accepted too.
_ALIASES = {
    "BACKUP": "BACKUP_VERIFICATION",
    "VERIFY": "BACKUP_VERIFICATION",
    "VERIFICATION": "BACKUP_VERIFICATION",
    "RESTORE": "RESTORE_TEST",
    "FAILOVER": "FAILOVER_TEST",
    "RECOVERY_TIME": "RECOVERY_TIME_TEST",
    "RTO": "RECOVERY_TIME_TEST",
}
NEEDS_ENVIRONMENT = ("RESTORE_TEST", "FAILOVER_TEST", "RECOVERY_TIME_TEST")
MAX_SMOKE_QUERIES = 50


# --- params ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DRTestRequest:
    test_type: str
    source: str | None
    target_environment: str | None
    notify_on_completion: bool
    participants: list[str] = field(default_factory=list)
    notes: str = ""
    smoke_queries: list[str] = field(default_factory=list)
    target: str | None = None
    overwrite: bool = False

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> DRTestRequest:
        return cls(**dict(data))


_text = text_param  # one string-param rule for every manual DAG (dr/params.py)


def _bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RestoreRefused(f"param {name!r} must be true or false, got {value!r}")
    return value


def _list(params: Mapping[str, Any], name: str, *, split: str | None = ",") -> list[str]:
    value = params.get(name)
    if value in (None, "", []):
        return []
    items = value if not isinstance(value, str) else (value.split(split) if split else [value])
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise RestoreRefused(f"param {name!r} must be a list of strings")
    return [i.strip() for i in items if i.strip()]


def normalise_test_type(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RestoreRefused(f"param 'test_type' is required: one of {', '.join(TEST_TYPES)}")
    name = value.strip().upper().replace("-", "_").replace(" ", "_")
    name = _ALIASES.get(name, name)
    if name not in TEST_TYPES:
        raise RestoreRefused(
            f"param 'test_type' {value!r} is not a DR test type; use one of {', '.join(TEST_TYPES)}"
        )
    return name


def scheduled_sources(config: BackupConfig) -> list[str]:
    """Sources with an active schedule, in config order."""
    seen: list[str] = []
    for s in config.schedules:
        if s.active and s.source not in seen:
            seen.append(s.source)
    return seen


def source_targets(config: BackupConfig, source: str) -> list[str]:
    """Every target of the source's schedules (active or not), in schedule order."""
    names: list[str] = []
    for s in config.schedules:
        if s.source == source:
            names += [t for t in s.targets if t not in names and t in config.targets]
    return names


def own_connection(config: BackupConfig, source: str) -> str | None:
    return getattr(config.sources[source], "conn_id", None)


def check_not_production(config: BackupConfig, source: str, where: str, param: str) -> None:
    """Refuse to restore into the source itself (its own connection, its own paths), and a
    destination that is not a plain path, database name or conn:<id> (params.check_destination)."""
    check_destination(where.strip(), param)
    cfg = config.sources[source]
    conn_id = getattr(cfg, "conn_id", None)
    value = where.strip()
    if conn_id and value in (f"{CONN_PREFIX}{conn_id}", conn_id):
        raise RestoreRefused(
            f"param {param!r} {where!r} is the production connection of source {source!r}; "
            "name a staging connection (conn:<conn_id>) or a new database"
        )
    if cfg.type == "files":
        if not value.startswith("/"):
            raise RestoreRefused(f"param {param!r} must be an absolute directory for files source {source!r}")
        norm = value.rstrip("/") or "/"
        for p in cfg.paths:
            p = p.rstrip("/") or "/"
            if norm == p or norm.startswith(p + "/") or p.startswith(norm + "/") or norm == "/":
                raise RestoreRefused(
                    f"param {param!r} {where!r} overlaps the backed-up path {p!r} of source "
                    f"{source!r}; restore into a separate directory"
                )


def check_not_same_database(config: BackupConfig, source: str, into: str) -> None:
    """PostgreSQL: refuse ``into`` when it resolves to the source's own database (same
    host, port and database name), whatever it is called."""
    cfg = config.sources[source]
    if cfg.type != "postgres":
        return
    from include.backup.sources.postgres import params_from_connection

    prod = params_from_connection(cfg.conn_id, cfg.database)
    if into.startswith(CONN_PREFIX):
        dest = params_from_connection(into[len(CONN_PREFIX) :])
    else:
        dest = prod.with_db(into)
    # localhost, 127.0.0.1, ::1 and a socket directory are one server, however spelled.
    if (smoke_mod.server_key(dest.host, dest.port), dest.dbname) == (
        smoke_mod.server_key(prod.host, prod.port),
        prod.dbname,
    ):
        raise RestoreRefused(
            f"{into!r} is the production database of source {source!r} "
            f"({prod.describe()}); restore into a staging database"
        )


def parse_dr_test_params(params: Mapping[str, Any], config: BackupConfig) -> DRTestRequest:  # noqa: C901
    """Check the params of the ``dr_test`` DAG before anything is touched."""
    test_type = normalise_test_type(params.get("test_type"))
    source = _text(params, "source")
    env = _text(params, "target_environment")
    target = _text(params, "target")
    if source is not None and source not in config.sources:
        raise RestoreRefused(
            f"param 'source': no source named {source!r}; known: {', '.join(config.sources) or 'none'}"
        )
    if target is not None and target not in config.targets:
        raise RestoreRefused(
            f"param 'target': no target named {target!r}; known: {', '.join(config.targets)}"
        )
    if test_type == "BACKUP_VERIFICATION":
        if source is None and not scheduled_sources(config):
            raise RestoreRefused("no source has an active schedule: name one with param 'source'")
    else:
        if source is None:
            raise RestoreRefused(f"param 'source' is required for {test_type}")
        if env is None and test_type == "FAILOVER_TEST":
            fo = config.dr.failover.get(source)
            env = fo.test_environment if fo else None
        if env is None:
            raise RestoreRefused(
                f"param 'target_environment' is required for {test_type}: a staging "
                "connection (conn:<conn_id> or its id), a new database name, or an absolute "
                "directory for files sources"
            )
        check_not_production(config, source, env, "target_environment")
    if source is not None and not source_targets(config, source):
        raise RestoreRefused(f"source {source!r} has no schedule with a target: there is nothing to test")
    smoke = _smoke_param(params, config, test_type, source, env)
    notes = params.get("notes") or ""
    if not isinstance(notes, str):
        raise RestoreRefused("param 'notes' must be a string")
    return DRTestRequest(
        test_type=test_type,
        source=source,
        target_environment=env,
        notify_on_completion=_bool(params, "notify_on_completion", True),
        participants=_list(params, "participants"),
        notes=notes.strip(),
        smoke_queries=smoke,
        target=target,
        overwrite=_bool(params, "overwrite", False),
    )


def _smoke_param(
    params: Mapping[str, Any], config: BackupConfig, test_type: str, source: str | None, env: str | None
) -> list[str]:
    """``smoke_queries``, refused before anything is restored unless every query is one
    read-only statement and the copy they would run in is not on the source's server."""
    raw = params.get("smoke_queries")
    if isinstance(raw, list) and not all(isinstance(q, str) for q in raw):
        raise RestoreRefused("param 'smoke_queries' must be a list of SQL strings")
    smoke = _list(params, "smoke_queries", split=None)
    if not smoke:
        return []
    if test_type not in ("RESTORE_TEST", "RECOVERY_TIME_TEST"):
        raise RestoreRefused(
            f"param 'smoke_queries' applies to RESTORE_TEST and RECOVERY_TIME_TEST, not {test_type}"
        )
    if source is None or config.sources[source].type != "postgres":
        raise RestoreRefused("param 'smoke_queries' only applies to postgres sources")
    if len(smoke) > MAX_SMOKE_QUERIES:
        raise RestoreRefused(f"param 'smoke_queries': at most {MAX_SMOKE_QUERIES} queries")
    checked = smoke_mod.check_smoke_queries(smoke)
    physical = getattr(config.sources[source], "method", "logical") == "physical"
    problem = smoke_mod.smoke_place_problem(resolve_environment(config, source, env or ""), physical=physical)
    if problem:
        raise RestoreRefused(problem)
    return checked


# --- integrity checks ------------------------------------------------------------------


def resolve_environment(config: BackupConfig, source: str, env: str) -> str:
    """``into`` for restore_backup: ``conn:<id>`` as is; for a database source, a bare
    name that is an Airflow connection becomes ``conn:<name>``, else it is a database on
    the source's server; a directory as is."""
    value = env.strip()
    cfg = config.sources[source]
    if value.startswith(CONN_PREFIX) or cfg.type == "files" or value.startswith("/"):
        return value
    try:
        from airflow.sdk import BaseHook

        BaseHook.get_connection(value)
    except Exception:  # noqa: BLE001 - no such connection: a database name
        return value
    return f"{CONN_PREFIX}{value}"


def compare_with_manifest(  # noqa: C901 - one rule per source type
    source_type: str,
    recorded: Mapping[str, Any],
    restored: Mapping[str, Any],
    *,
    chain_length: int = 1,
    only: bool = False,
) -> tuple[list[str], list[str]]:
    """(issues, notes): what the restore gave back against what the manifest recorded."""
    issues: list[str] = []
    notes: list[str] = []
    if source_type == "postgres":
        want = recorded.get("tables")
        got = restored.get("tables")
        if not isinstance(want, dict) or not isinstance(got, dict):
            notes.append("no per-table row counts to compare (physical backup)")
            return issues, notes
        method = recorded.get("row_count_method", "exact")
        for table, n in sorted(want.items()):
            if table not in got:
                issues.append(f"table {table} missing after restore (the backup recorded {n} rows)")
            elif method in ("exact", "schema-only") and int(got[table]) != int(n):
                issues.append(f"table {table}: {got[table]} rows restored, the backup recorded {n}")
        if method not in ("exact", "schema-only"):
            notes.append(f"row counts recorded as {method}: only tables compared")
        extra = sorted(set(got) - set(want))
        if extra:
            notes.append(f"tables not in the manifest: {', '.join(extra)}")
        return issues, notes
    if source_type == "mongo":
        want = recorded.get("collections") or {}
        got = restored.get("collections") or {}
        for name, n in sorted(want.items()):
            if name not in got:
                issues.append(f"collection {name} missing after restore (the backup recorded {n})")
            elif chain_length == 1 and int(got[name]) != int(n):
                issues.append(f"collection {name}: {got[name]} documents restored, the backup recorded {n}")
        if chain_length > 1:
            notes.append("chain with oplog: document counts not comparable, collections checked")
        return issues, notes
    if source_type == "files":
        if only:
            notes.append("partial restore: file counts not compared")
            return issues, notes
        for kind in ("files", "dirs", "symlinks"):
            want_n = recorded.get(f"tree_{kind}")
            if want_n is None:
                continue
            got_n = restored.get(kind)
            if got_n is None or int(got_n) != int(want_n):
                issues.append(f"{kind}: {got_n} restored, the backup recorded {want_n}")
        return issues, notes
    notes.append(f"no integrity rule for source type {source_type}")
    return issues, notes


def run_smoke_queries(
    into: str, source_cfg: Any, queries: list[str], stats: Mapping[str, Any] | None = None
) -> list[str]:
    """Each query must return at least one row in the restored copy; the issues. Only in
    the copy (never the source's connection or server), read-only, with a statement
    timeout, each query checked again first: see :mod:`include.backup.dr.smoke`."""
    smoke_mod.check_smoke_queries(queries)  # before looking anything up
    params = smoke_mod.smoke_connection(source_cfg, into, stats or {})
    return smoke_mod.run_smoke_queries(params, queries)


# --- the tests -------------------------------------------------------------------------


def new_test_id(now: datetime) -> str:
    return f"dr-{now.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _error(exc: BaseException) -> str:
    from include.backup.alerts.notify import redact

    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BackupError) else str(exc)
    return redact(" ".join(text.split()))


def restore_and_check(
    config: BackupConfig,
    source: str,
    into_param: str,
    *,
    target: str | None = None,
    overwrite: bool = False,
    smoke_queries: list[str] | None = None,
    keys: Any = None,
    backup_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Restore the newest chain of ``source`` (or ``backup_id``) into ``into_param`` and
    check it against the manifest. Never raises for a failed restore or check: returns
    ``{ok, issues, notes, backup_id, seconds, rpo_seconds, ...}``."""
    from include.backup import tasks
    from include.backup.dr.restore import locate, restore_backup

    issues: list[str] = []
    notes: list[str] = []
    out: dict[str, Any] = {"backup_id": backup_id, "seconds": None, "rpo_seconds": None}
    started = time.monotonic()
    try:
        into = resolve_environment(config, source, into_param)
        check_not_production(config, source, into, "target_environment")
        check_not_same_database(config, source, into)
        out["into"] = into
        result = restore_backup(
            config,
            backup_id,
            into,
            keys=keys if keys is not None else tasks.load_keys(config),
            target_name=target,
            overwrite=overwrite,
            source_name=source,
        )
    except Exception as exc:  # noqa: BLE001 - the test's finding, reported
        log.exception("DR test restore of %s failed", source)
        out["seconds"] = round(time.monotonic() - started, 3)
        out.update(ok=False, issues=[f"restore failed: {_error(exc)}"], notes=notes)
        return out
    out.update(
        backup_id=result.backup_id,
        target=result.target,
        chain=result.chain,
        seconds=round(result.seconds, 3),
        stats=_small(result.stats),
    )
    try:
        _, manifest = locate(config, result.backup_id, result.target)
        moment = now or datetime.now(UTC)
        started_at = (
            manifest.started_at if manifest.started_at.tzinfo else manifest.started_at.replace(tzinfo=UTC)
        )
        out["rpo_seconds"] = max(0.0, round((moment - started_at).total_seconds(), 3))
        out["backup_started_at"] = started_at.isoformat()
        found, more = compare_with_manifest(
            manifest.source_type, manifest.stats, result.stats, chain_length=len(result.chain)
        )
        issues += found
        notes += more
        if smoke_queries:
            issues += run_smoke_queries(into, config.sources[source], smoke_queries, result.stats)
    except Exception as exc:  # noqa: BLE001
        log.exception("DR test check of %s failed", source)
        issues.append(f"integrity check failed: {_error(exc)}")
    out.update(ok=not issues, issues=issues, notes=notes)
    return out


def _small(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Restore stats for XCom: the counts, not long lists."""
    return {k: v for k, v in stats.items() if not isinstance(v, list)}


def verify_latest(config: BackupConfig, source: str, now: datetime | None = None) -> dict[str, Any]:
    """BACKUP_VERIFICATION of one source: the newest backup at each of its targets,
    re-hashed and deep-verified. ``{ok, issues, notes, backup_id, rpo_seconds, checked}``."""
    from include.backup.catalog.catalog import as_utc, list_backups, verify_object
    from include.backup.targets import build_target
    from include.backup.tasks import deep_verify

    moment = now or datetime.now(UTC)
    issues: list[str] = []
    notes: list[str] = []
    checked: dict[str, str] = {}
    newest: Any = None
    for name in source_targets(config, source):
        try:
            target = build_target(name, config.targets[name])
            backups = list_backups(target, source)
        except Exception as exc:  # noqa: BLE001
            issues.append(f"target {name}: cannot list backups: {_error(exc)}")
            continue
        if not backups:
            issues.append(f"target {name}: holds no backup of {source}")
            continue
        manifest = backups[-1]
        problems: list[str] = []
        try:
            for obj in manifest.objects:
                ok, detail = verify_object(target, manifest, obj.name)
                if not ok:
                    problems.append(detail)
            if not problems:
                problems += deep_verify(config, target, manifest)
        except Exception as exc:  # noqa: BLE001
            problems.append(_error(exc))
        if problems:
            issues.append(f"target {name}: backup {manifest.backup_id}: {'; '.join(problems)}")
            checked[name] = f"{manifest.backup_id}: FAILED"
        else:
            checked[name] = f"{manifest.backup_id}: ok (deep)"
        if newest is None or as_utc(manifest.started_at) > as_utc(newest.started_at):
            newest = manifest
    rpo = None
    if newest is not None:
        rpo = max(0.0, round((moment - as_utc(newest.started_at)).total_seconds(), 3))
    notes.append(
        "checked: " + ", ".join(f"{k}={v}" for k, v in checked.items()) if checked else "nothing checked"
    )
    return {
        "ok": not issues,
        "issues": issues,
        "notes": notes,
        "backup_id": newest.backup_id if newest is not None else None,
        "rpo_seconds": rpo,
        "seconds": None,
        "checked": checked,
    }


def run_dr_test(
    request: DRTestRequest,
    config: BackupConfig,
    *,
    dag_run_id: str | None = None,
    keys: Any = None,
    now: datetime | None = None,
) -> list[DRTestReport]:
    """Run the test; one report per source tested (not yet written anywhere)."""
    started = now or datetime.now(UTC)
    sources = [request.source] if request.source else scheduled_sources(config)
    reports = []
    for source in sources:
        test_started = datetime.now(UTC) if now is None else started
        outcome = _run_one(request, config, source, keys=keys, now=test_started)
        notes = "\n".join(n for n in [request.notes, *outcome.get("notes", [])] if n)
        reports.append(
            DRTestReport(
                test_id=new_test_id(test_started),
                test_type=request.test_type,  # type: ignore[arg-type]
                source=source,
                target_environment=request.target_environment or "",
                started_at=test_started,
                finished_at=datetime.now(UTC) if now is None else test_started,
                success=bool(outcome["ok"]),
                measured_rto_seconds=outcome.get("seconds"),
                measured_rpo_seconds=outcome.get("rpo_seconds"),
                issues=list(outcome["issues"]),
                notes=notes,
                participants=list(request.participants),
                backup_id=outcome.get("backup_id"),
                dag_run_id=dag_run_id,
            )
        )
    return reports


def _run_one(
    request: DRTestRequest, config: BackupConfig, source: str, *, keys: Any, now: datetime
) -> dict[str, Any]:
    kind = request.test_type
    if kind == "BACKUP_VERIFICATION":
        return verify_latest(config, source, now)
    env = request.target_environment or ""
    if kind == "FAILOVER_TEST":
        from include.backup.dr.failover import rehearse

        return rehearse(
            config, source, env, target=request.target, overwrite=request.overwrite, keys=keys, now=now
        )
    outcome = restore_and_check(
        config,
        source,
        env,
        target=request.target,
        overwrite=request.overwrite,
        smoke_queries=request.smoke_queries,
        keys=keys,
        now=now,
    )
    if kind == "RECOVERY_TIME_TEST":
        rto = config.dr.rto_hours * 3600
        seconds = outcome.get("seconds")
        if seconds is not None and seconds > rto:
            outcome["issues"].append(
                f"measured RTO {seconds / 3600:.2f} h exceeds the objective "
                f"dr.rto_hours {config.dr.rto_hours:g} h"
            )
            outcome["ok"] = False
        elif seconds is not None:
            outcome["notes"].append(
                f"measured RTO {seconds:.1f} s within dr.rto_hours {config.dr.rto_hours:g} h"
            )
    return outcome


# --- publishing ------------------------------------------------------------------------


def store_reports(config: BackupConfig, reports: list[DRTestReport]) -> dict[str, list[str]]:
    """Write each report at every target of its source's schedules. Returns
    ``{target: [key, ...]}``; a target that cannot be written is logged and skipped
    (TargetError), and raises only when no target took a report."""
    from include.backup.targets import build_target

    written: dict[str, list[str]] = {}
    failures: list[str] = []
    for report in reports:
        for name in source_targets(config, report.source):
            try:
                key = write_report(build_target(name, config.targets[name]), report)
            except Exception as exc:  # noqa: BLE001 - the other targets still get it
                log.error(
                    "could not write DR test report %s at target %s: %s", report.test_id, name, _error(exc)
                )
                failures.append(f"{name}: {_error(exc)}")
                continue
            written.setdefault(name, []).append(key)
    if reports and not written:
        raise BackupError("the DR test report could not be written at any target: " + "; ".join(failures))
    return written


def summary(report: DRTestReport) -> dict[str, Any]:
    """Metadata for XCom, the asset event's extra and the mail."""
    return {
        "test_id": report.test_id,
        "test_type": report.test_type,
        "source": report.source,
        "target_environment": report.target_environment,
        "success": report.success,
        "measured_rto_seconds": report.measured_rto_seconds,
        "measured_rpo_seconds": report.measured_rpo_seconds,
        "issues": list(report.issues),
        "backup_id": report.backup_id,
        "started_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat() if report.finished_at else None,
        "participants": list(report.participants),
        "notes": report.notes,
        "dag_run_id": report.dag_run_id,
    }


def result_alert(report: DRTestReport, dag_id: str | None = None, run_id: str | None = None) -> Any:
    from include.backup.alerts.notify import Alert, AlertKind, Severity

    def fmt(seconds: float | None) -> str:
        return "not measured" if seconds is None else f"{seconds:.1f} s ({seconds / 3600:.2f} h)"

    facts = {
        "test": report.test_type,
        "source": report.source,
        "environment": report.target_environment or "-",
        "result": "PASSED" if report.success else "FAILED",
        "measured RTO": fmt(report.measured_rto_seconds),
        "measured RPO": fmt(report.measured_rpo_seconds),
        "backup": report.backup_id or "-",
        "report": report.key,
    }
    for i, issue in enumerate(report.issues[:10], 1):
        facts[f"issue {i}"] = issue
    if report.participants:
        facts["participants"] = ", ".join(report.participants)
    return Alert(
        AlertKind.DR_TEST_RESULT,
        report.source,
        summary=f"{report.test_type} {'passed' if report.success else 'FAILED'}"
        + (f" ({len(report.issues)} issue(s))" if report.issues else ""),
        facts=facts,
        severity=None if report.success else Severity.WARNING,
        key=f"DR_TEST_RESULT:{report.test_id}",
        dag_id=dag_id,
        run_id=run_id,
    )


def report_recipients(config: BackupConfig) -> list[str]:
    """Who gets a DR test result: ``dr.notification_emails`` and nobody else. Whoever
    triggers the DAG chooses ``participants``; were they recipients, a run could mail the
    result (sources, backup ids, issues) to any address. They stay names in the report."""
    return list(config.dr.notification_emails)


def mail_reports(
    config: BackupConfig,
    reports: list[DRTestReport],
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    state_path: Any = None,
) -> int:
    from include.backup.alerts.notify import send

    recipients = report_recipients(config)
    if not recipients:
        log.warning("notify_on_completion: dr.notification_emails is empty: the DR test result is not mailed")
        return 0
    return send(
        [result_alert(r, dag_id, run_id) for r in reports],
        recipients,
        config.dr.smtp_conn_id,
        state_path=state_path,
    )
