"""Failed-run records at the targets: what lets the success rate count runs that published
nothing.

A backup run that fails for good (the backup DAG's failure callback) leaves one small
signed record at each of its schedule's targets::

    <source>/_runs/failed-<backup_id>.json   {"body": {...}, "key_id": ..., "mac": ...}

The body names the backup id the run would have published, its schedule, the failed task
and when; never the error text (it may quote a connection string). The MAC is
HMAC-SHA-256 under a key derived from the key ring (HKDF with its own label, as manifests
and the catalog index are signed), so a record nobody with the key ring wrote is ignored.

Readers (``dr_monitor``, the DR page, the API) count a record only while no backup of that
id is published (a run cleared and run again that succeeded is a success), and the cleanup
step removes records older than the schedule's retention window, like the backups they
stand beside. Writing never raises: a record that cannot be written is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from include.backup.catalog.catalog import as_utc
from include.backup.config.schema import BackupConfig, Schedule
from include.backup.errors import BackupError, KeyNotFoundError
from include.backup.keys import KeyRing
from include.backup.retention import id_time
from include.backup.targets import build_target
from include.backup.targets.base import Target

log = logging.getLogger(__name__)

RUNS_DIR = "_runs"
_PREFIX = "failed-"
_HKDF_INFO = b"airflow-backup run-record v1"


@dataclass(frozen=True)
class FailedRun:
    backup_id: str
    schedule: str
    source: str
    task_id: str | None
    failed_at: datetime


def runs_prefix(source: str) -> str:
    return f"{source}/{RUNS_DIR}/"


def record_key(source: str, backup_id: str) -> str:
    return f"{runs_prefix(source)}{_PREFIX}{backup_id}.json"


def _mac(kek: bytes, body: dict[str, object]) -> str:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(kek)
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def encode(run: FailedRun, keys: KeyRing) -> bytes:
    body: dict[str, object] = {
        "backup_id": run.backup_id, "schedule": run.schedule, "source": run.source,
        "task_id": run.task_id, "failed_at": as_utc(run.failed_at).isoformat(),
    }  # fmt: skip
    key_id, kek = keys.active()
    return json.dumps({"body": body, "key_id": key_id, "mac": _mac(kek, body)}).encode()


def decode(data: bytes, keys: KeyRing) -> FailedRun:
    """The record in ``data``; ValueError when it is malformed or its MAC does not check."""
    try:
        doc = json.loads(data)
        body, key_id, mac = doc["body"], doc["key_id"], doc["mac"]
        kek = keys.get(key_id)
    except (ValueError, KeyError, TypeError, KeyNotFoundError) as exc:
        raise ValueError(f"not a failed-run record ({type(exc).__name__}: {exc})") from None
    if not hmac.compare_digest(_mac(kek, body), str(mac)):
        raise ValueError("its MAC does not match (edited, or written without the key ring)")
    return FailedRun(
        backup_id=str(body["backup_id"]), schedule=str(body["schedule"]), source=str(body["source"]),
        task_id=body.get("task_id"), failed_at=as_utc(datetime.fromisoformat(body["failed_at"])),
    )  # fmt: skip


def record_failed_run(
    config: BackupConfig, schedule: Schedule, backup_id: str, task_id: str | None, keys: KeyRing,
    *, now: datetime | None = None,
) -> list[str]:  # fmt: skip
    """Leave the failed-run record of ``backup_id`` at each of the schedule's targets;
    returns the targets written. Never raises."""
    run = FailedRun(backup_id, schedule.name, schedule.source, task_id, now or datetime.now(UTC))
    data = encode(run, keys)
    written: list[str] = []
    for name in schedule.targets:
        try:
            build_target(name, config.targets[name]).put_bytes(record_key(schedule.source, backup_id), data)
            written.append(name)
        except Exception as exc:  # noqa: BLE001 - a target down must not hide the failure's mail
            log.warning("failed-run record of %s not written at target %s: %s", backup_id, name, exc)
    return written


def failed_runs(target: Target, source: str, keys: KeyRing | None) -> list[FailedRun]:
    """The authenticated failed-run records of ``source`` at ``target`` (one listing and a
    small read each). Without a key ring nothing can be checked: none."""
    if keys is None:
        return []
    out: list[FailedRun] = []
    for info in target.list(runs_prefix(source)):
        if not info.key.rsplit("/", 1)[-1].startswith(_PREFIX):
            continue
        try:
            out.append(decode(target.read_bytes(info.key), keys))
        except (ValueError, BackupError) as exc:
            log.warning("target %s: failed-run record %s ignored: %s", target.name, info.key, exc)
    return out


def unpublished(runs: Iterable[FailedRun], published: set[str]) -> dict[str, FailedRun]:
    """The failed runs whose backup never got published, by backup id (one per id,
    whatever number of targets hold its record)."""
    return {r.backup_id: r for r in runs if r.backup_id not in published}


def prune_failed_runs(
    target: Target, source: str, *, now: datetime, older_than_days: int, dry_run: bool = False
) -> list[str]:
    """Delete the failed-run records of ``source`` at ``target`` whose backup id's time is
    older than ``older_than_days`` (by their key: no read); returns the keys."""
    cutoff = as_utc(now) - timedelta(days=older_than_days)
    gone: list[str] = []
    for info in target.list(runs_prefix(source)):
        name = info.key.rsplit("/", 1)[-1]
        if not (name.startswith(_PREFIX) and name.endswith(".json")):
            continue
        when = id_time(name[len(_PREFIX) : -len(".json")])
        if when is not None and when < cutoff:
            if not dry_run:
                target.delete(info.key)
            gone.append(info.key)
    return gone
