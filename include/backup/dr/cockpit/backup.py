"""One backup in detail (``/dr/backup/<source>/<backup_id>`` and its JSON twin): the
manifest's fields, its lineage (parent chain and children from the catalog index, the
WAL/oplog position range, verification per target from each target's manifest), the DR
tests that used it and its audit records.

Only this backup's manifests are read (one per target holding it); everything else comes
from the index rows, the report cache and the audit cache. Metadata only: no file index,
no wrapped key, no MAC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from include.backup.alerts.notify import redact
from include.backup.catalog.catalog import as_utc, read_manifest
from include.backup.catalog.manifest import Manifest
from include.backup.dr.reports import DRTestReport
from include.backup.targets import build_target

# position keys that bound a backup's log range (PostgreSQL WAL, MongoDB oplog)
RANGE_KEYS = ("start_time", "end_time", "start_lsn", "end_lsn", "timeline", "wal_first", "wal_last",
              "oplog_start", "oplog_end", "lsn")  # fmt: skip


class BackupNotFound(LookupError):
    """No target of the config holds that backup (the message says what to do)."""


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    """The top-level numbers, texts and flags of ``values`` (per-table detail left out)."""
    return {k: v for k, v in values.items() if isinstance(v, str | int | float | bool) or v is None}


def _iso(value: Any) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def lineage(rows: Sequence[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    """Parent chain (root first, ending with this backup) and direct children, from the
    index rows of the source; a parent the targets no longer hold is named as missing."""
    by_id = {r["backup_id"]: r for r in rows if r["source"] == row["source"]}
    chain: list[dict[str, Any]] = []
    current: dict[str, Any] | None = row
    missing: str | None = None
    seen: set[str] = set()
    while current is not None and current["backup_id"] not in seen:
        seen.add(current["backup_id"])
        chain.append({k: current[k] for k in ("backup_id", "type", "started_at", "verified")})
        parent = current.get("parent_id")
        current = by_id.get(parent) if parent else None
        if parent and current is None:
            missing = parent
    chain.reverse()
    children = sorted(
        (r["backup_id"] for r in by_id.values() if r.get("parent_id") == row["backup_id"]),
    )
    return {"chain": chain, "missing_parent": missing, "children": children}


def manifest_fields(m: Manifest) -> dict[str, Any]:
    return {
        "backup_id": m.backup_id,
        "source": m.source,
        "source_type": m.source_type,
        "schedule": m.schedule,
        "type": m.backup_type,
        "parent_id": m.parent_id,
        "started_at": _iso(m.started_at),
        "finished_at": _iso(m.finished_at),
        "duration_seconds": (as_utc(m.finished_at) - as_utc(m.started_at)).total_seconds()
        if m.finished_at else None,
        "payload_format": m.payload_format,
        "raw_size": m.raw_size,
        "compressed_size": m.compressed_size,
        "stored_size": m.stored_size,
        "compression": m.compression,
        "encryption": {"algorithm": m.encryption.algorithm, "key_id": m.encryption.key_id}
        if m.encryption else None,
        "signed_with": m.auth.key_id if m.auth else None,
        "objects": len(m.objects),
        "incomplete": m.incomplete,
        "dag_run_id": m.dag_run_id,
        "logical_date": _iso(m.logical_date),
        "format_version": m.format_version,
        "stats": _scalars(m.stats),
    }  # fmt: skip


def backup_detail(
    config: Any,
    rows: Sequence[dict[str, Any]],
    reports: Sequence[DRTestReport],
    audit_rows: Sequence[dict[str, Any]],
    source: str,
    backup_id: str,
    *,
    build: Any = build_target,
) -> dict[str, Any]:
    """Everything the backup page shows, JSON-ready. BackupNotFound when no target holds it."""
    row = next((r for r in rows if r["source"] == source and r["backup_id"] == backup_id), None)
    if row is None:
        raise BackupNotFound(
            f"no target holds backup {backup_id!r} of source {source!r}; the DR page lists "
            "the backups the targets hold (/dr/api/backups?source=...)"
        )
    manifest: Manifest | None = None
    verification: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name in row["targets"]:
        try:
            m = read_manifest(build(name, config.targets[name]), source, backup_id)
        except Exception as exc:  # noqa: BLE001 - the other targets' copies still tell
            problems.append(f"target '{name}': {redact(exc)}")
            verification[name] = {
                "ok": None,
                "verified_at": None,
                "deep": False,
                "detail": "manifest unreadable",
            }
            continue
        manifest = manifest or m
        v = m.verification.get(name)
        verification[name] = (
            {"ok": v.ok, "verified_at": _iso(v.verified_at), "deep": v.deep, "detail": v.detail}
            if v
            else {"ok": None, "verified_at": None, "deep": False, "detail": "not verified yet"}
        )
    position = dict(manifest.position) if manifest else {}
    return {
        "backup_id": backup_id,
        "source": source,
        "manifest": manifest_fields(manifest) if manifest else None,
        "position": position,
        "log_range": {k: position[k] for k in RANGE_KEYS if k in position},
        "lineage": lineage(rows, row),
        "targets": row["targets"],
        "verification": verification,
        "drills": [
            {
                "test_id": r.test_id,
                "test_type": r.test_type,
                "success": r.success,
                "started_at": _iso(r.started_at),
                "finished_at": _iso(r.finished_at),
                "measured_rto_seconds": r.measured_rto_seconds,
                "measured_rpo_seconds": r.measured_rpo_seconds,
                "target_environment": r.target_environment,
                "issues": list(r.issues[:5]),
            }
            for r in reports
            if r.backup_id == backup_id and r.source == source
        ],
        "audit": [
            {
                k: r.get(k)
                for k in ("time", "actor", "action", "target", "result", "reason", "run_id", "stored_at")
            }
            for r in audit_rows
            if backup_id in (r.get("backup_ids") or [])
        ],
        "problems": problems,
    }
