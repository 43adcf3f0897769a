"""DR tests (the ``dr_test`` DAG): params, the four test types, and the report.

Why about 500 lines: the four test types share the restore, the measurements and the
report; params live in dr/params.py, smoke queries in dr/smoke.py.

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
  ``dr.rto_hours`` and the measured RPO within ``dr.rpo_hours`` (scheduled drills,
  :mod:`include.backup.dr.drills`, run this one by default).

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

from include.backup.alerts.notify import Alert, AlertKind, Severity, send
from include.backup.catalog import index
from include.backup.catalog.catalog import as_utc, read_manifest, verify_object
from include.backup.config.schema import BackupConfig
from include.backup.dr import smoke as smoke_mod
from include.backup.dr.drills import objective_findings
from include.backup.dr.failover import rehearse
from include.backup.dr.integrity import compare_with_manifest, error_text
from include.backup.dr.params import (
    bool_param,
    check_not_production,
    check_not_same_database,
    list_param,
    resolve_environment,
    scheduled_sources,
    source_targets,
    text_param,
)
from include.backup.dr.reports import TEST_TYPES, DRTestReport, write_report
from include.backup.dr.restore import locate, restore_backup
from include.backup.errors import BackupError, RestoreRefused
from include.backup.runtime import load_keys
from include.backup.targets import build_target
from include.backup.tasks import deep_verify

log = logging.getLogger(__name__)

# What people type from the seed documents' API ("FAILOVER", "RESTORE") is accepted too.
TEST_TYPE_ALIASES = {
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


def normalise_test_type(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RestoreRefused(f"param 'test_type' is required: one of {', '.join(TEST_TYPES)}")
    name = value.strip().upper().replace("-", "_").replace(" ", "_")
    name = TEST_TYPE_ALIASES.get(name, name)
    if name not in TEST_TYPES:
        raise RestoreRefused(
            f"param 'test_type' {value!r} is not a DR test type; use one of {', '.join(TEST_TYPES)}"
        )
    return name


def parse_dr_test_params(params: Mapping[str, Any], config: BackupConfig) -> DRTestRequest:  # noqa: C901
    """Check the params of the ``dr_test`` DAG before anything is touched."""
    test_type = normalise_test_type(params.get("test_type"))
    source = text_param(params, "source")
    env = text_param(params, "target_environment")
    target = text_param(params, "target")
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
        notify_on_completion=bool_param(params, "notify_on_completion", True),
        participants=list_param(params, "participants"),
        notes=notes.strip(),
        smoke_queries=smoke,
        target=target,
        overwrite=bool_param(params, "overwrite", False),
    )


def _smoke_param(
    params: Mapping[str, Any], config: BackupConfig, test_type: str, source: str | None, env: str | None
) -> list[str]:
    """``smoke_queries``, refused before anything is restored unless every query is one
    read-only statement and the copy they would run in is not on the source's server."""
    raw = params.get("smoke_queries")
    if isinstance(raw, list) and not all(isinstance(q, str) for q in raw):
        raise RestoreRefused("param 'smoke_queries' must be a list of SQL strings")
    smoke = list_param(params, "smoke_queries", split=None)
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
            keys=keys if keys is not None else load_keys(config),
            target_name=target,
            overwrite=overwrite,
            source_name=source,
        )
    except Exception as exc:  # noqa: BLE001 - the test's finding, reported
        log.exception("DR test restore of %s failed", source)
        out["seconds"] = round(time.monotonic() - started, 3)
        out.update(ok=False, issues=[f"restore failed: {error_text(exc)}"], notes=notes)
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
        issues.append(f"integrity check failed: {error_text(exc)}")
    out.update(ok=not issues, issues=issues, notes=notes)
    return out


def _small(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Restore stats for XCom: the counts, not long lists."""
    return {k: v for k, v in stats.items() if not isinstance(v, list)}


def verify_latest(config: BackupConfig, source: str, now: datetime | None = None) -> dict[str, Any]:
    """BACKUP_VERIFICATION of one source: the newest backup at each of its targets,
    re-hashed and deep-verified. ``{ok, issues, notes, backup_id, rpo_seconds, checked}``."""

    moment = now or datetime.now(UTC)
    issues: list[str] = []
    notes: list[str] = []
    checked: dict[str, str] = {}
    newest: Any = None
    keys = index.optional_keys(config)
    for name in source_targets(config, source):
        try:
            target = build_target(name, config.targets[name])
            backups = index.summaries(target, source, keys)  # the catalog index: no manifest read
        except Exception as exc:  # noqa: BLE001
            issues.append(f"target {name}: cannot list backups: {error_text(exc)}")
            continue
        if not backups:
            issues.append(f"target {name}: holds no backup of {source}")
            continue
        manifest = backups[-1]  # a summary until its whole manifest is read below
        problems: list[str] = []
        try:
            manifest = read_manifest(target, source, manifest.backup_id)
            for obj in manifest.objects:
                ok, detail = verify_object(target, manifest, obj.name)
                if not ok:
                    problems.append(detail)
            if not problems:
                problems += deep_verify(config, target, manifest)
        except Exception as exc:  # noqa: BLE001
            problems.append(error_text(exc))
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
    if kind == "RECOVERY_TIME_TEST":  # scored: a missed RTO or RPO fails the test
        found = objective_findings(config, outcome.get("seconds"), outcome.get("rpo_seconds"))
        outcome["issues"].extend(found.issues)
        outcome["notes"].extend(found.notes)
        outcome["ok"] = outcome["ok"] and not found.issues
    return outcome


# --- publishing ------------------------------------------------------------------------


def store_reports(config: BackupConfig, reports: list[DRTestReport]) -> dict[str, list[str]]:
    """Write each report at every target of its source's schedules. Returns
    ``{target: [key, ...]}``; a target that cannot be written is logged and skipped
    (TargetError), and raises only when no target took a report."""

    written: dict[str, list[str]] = {}
    failures: list[str] = []
    for report in reports:
        for name in source_targets(config, report.source):
            try:
                key = write_report(build_target(name, config.targets[name]), report)
            except Exception as exc:  # noqa: BLE001 - the other targets still get it
                log.error(
                    "could not write DR test report %s at target %s: %s",
                    report.test_id,
                    name,
                    error_text(exc),
                )
                failures.append(f"{name}: {error_text(exc)}")
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
