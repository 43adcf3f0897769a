"""DR test reports, stored next to the backups so a target alone tells when DR was last tested.

Layout at a target (keys relative to its root)::

    _dr_tests/<source>/<YYYYmmddTHHMMSSZ>-<test_id>.json

``_dr_tests`` cannot clash with a source's folder: source names start with a letter or a
digit. The catalog only reads ``<source>/<id>/manifest.json``, so it never sees reports.

Report JSON (format_version 1)::

    {"format_version": 1,
     "test_id": "dr-20250101T020000Z-ab12cd",        # unique, [A-Za-z0-9_.-]
     "test_type": "RESTORE_TEST",                     # BACKUP_VERIFICATION | RESTORE_TEST |
                                                      # FAILOVER_TEST | RECOVERY_TIME_TEST
     "source": "events_pg",
     "target_environment": "staging_pg",              # a connection id, or "" if none
     "started_at": "2025-01-01T02:00:00+00:00",
     "finished_at": "2025-01-01T02:12:31+00:00",      # null while running
     "success": true,
     "measured_rto_seconds": 751.0,                   # null when not measured
     "measured_rpo_seconds": 3120.0,                  # null when not measured
     "issues": ["..."],
     "notes": "",
     "participants": ["Alice (DBA)"],
     "backup_id": "daily_full-20250101T010000Z-1a2b3c",   # optional: the backup tested
     "dag_run_id": "manual__2025-01-01T02:00:00+00:00"}   # optional

Metadata only: never a secret, never data.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from include.backup.errors import ObjectNotFound, TargetError
from include.backup.targets.base import Target

log = logging.getLogger(__name__)

REPORTS_PREFIX = "_dr_tests"
FORMAT_VERSION = 1
TEST_TYPES = ("BACKUP_VERIFICATION", "RESTORE_TEST", "FAILOVER_TEST", "RECOVERY_TIME_TEST")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


class DRTestReport(BaseModel):
    # Unknown fields are ignored on read, so a newer writer does not hide reports from an
    # older monitor.
    model_config = ConfigDict(extra="ignore")

    format_version: int = FORMAT_VERSION
    test_id: str
    test_type: Literal["BACKUP_VERIFICATION", "RESTORE_TEST", "FAILOVER_TEST", "RECOVERY_TIME_TEST"]
    source: str
    target_environment: str = ""
    started_at: datetime
    finished_at: datetime | None = None
    success: bool
    measured_rto_seconds: float | None = Field(default=None, ge=0)
    measured_rpo_seconds: float | None = Field(default=None, ge=0)
    issues: list[str] = Field(default_factory=list)
    notes: str = ""
    participants: list[str] = Field(default_factory=list)
    backup_id: str | None = None
    dag_run_id: str | None = None

    @field_validator("test_id", "source")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(
                f"{value!r} must be 1-200 characters of letters, digits, '_', '.', '-' "
                "(it becomes part of the report's key at the target)"
            )
        return value

    @field_validator("started_at", "finished_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def key(self) -> str:
        return report_key(self.source, self.test_id, self.started_at)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> DRTestReport:
        return cls.model_validate_json(data)


def report_key(source: str, test_id: str, started_at: datetime) -> str:
    stamp = started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{REPORTS_PREFIX}/{source}/{stamp}-{test_id}.json"


def write_report(target: Target, report: DRTestReport) -> str:
    """Store ``report`` at ``target`` (atomically, like every object); returns its key.
    Writing the same report again overwrites it (a retried task is harmless)."""
    key = report.key
    target.put_bytes(key, report.to_json())
    return key


def list_reports(target: Target, source: str | None = None) -> list[DRTestReport]:
    """Every readable DR test report at ``target`` (of ``source``), oldest first. A damaged
    report is logged and skipped; TargetError propagates (the target is unreachable)."""
    prefix = f"{REPORTS_PREFIX}/{source}/" if source else f"{REPORTS_PREFIX}/"
    reports: list[DRTestReport] = []
    for info in target.list(prefix):
        if not info.key.endswith(".json"):
            continue
        try:
            report = DRTestReport.from_json(target.read_bytes(info.key))
        except ObjectNotFound:
            continue
        except TargetError:
            raise
        except (ValidationError, ValueError) as exc:
            log.warning(
                "target '%s': DR test report %s is unreadable (%s); skipped",
                target.name,
                info.key,
                str(exc).splitlines()[0],
            )
            continue
        reports.append(report)
    reports.sort(key=lambda r: (r.started_at, r.test_id))
    return reports


def latest_report(target: Target, source: str, *, successful_only: bool = False) -> DRTestReport | None:
    for report in reversed(list_reports(target, source)):
        if successful_only and not report.success:
            continue
        return report
    return None
