"""``archive_after_days``: move the payloads of backups older than that many days to the
target's archive class (``archive_storage_class``, default GLACIER / Archive / ARCHIVE).

Runs in the cleanup step after the schedule's retention (so nothing about to be deleted
is moved first) and in the ``prune`` verb; for the schedule's source at each of its
targets that sets ``archive_after_days``. Only payloads move: manifests, the catalog
index, audit and run records stay in the hot class, so listing and planning never wait
on a thaw. The move is the store's own (targets/tiers.py): S3 copy-in-place with a new
StorageClass, Azure set tier, GCS rewrite. A payload already in the archive class (or a
colder one) is left alone; one frozen in a colder upload class cannot be copied without a
thaw and is left where it is, said in the log.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from include.backup.catalog.catalog import as_utc
from include.backup.catalog.index import optional_keys, summaries
from include.backup.catalog.manifest import PAYLOAD_NAME, Manifest, backup_prefix, utcnow
from include.backup.config.schema import BackupConfig, Schedule
from include.backup.errors import TargetError
from include.backup.targets import build_target
from include.backup.targets.tiers import STORAGE_CLASSES, is_colder, move_to_class, tier_state

log = logging.getLogger(__name__)


def archive_schedule_payloads(
    config: BackupConfig, schedule: Schedule, *, dry_run: bool = False, now: datetime | None = None
) -> dict[str, list[str]]:
    """The backup ids whose payloads were moved (or would be, with ``dry_run``) per
    target of ``schedule`` that archives; a target that does not archive is left out."""
    now = now or utcnow()
    moved: dict[str, list[str]] = {}
    for name in schedule.targets:
        cfg = config.targets.get(name)
        archive = _archive_class(cfg)
        days = getattr(cfg, "archive_after_days", None)
        if cfg is None or archive is None or days is None:
            continue
        target = build_target(name, cfg)
        cutoff = now - timedelta(days=days)
        backups = summaries(target, schedule.source, optional_keys(config))
        old = [m for m in backups if _started(m) < cutoff]
        moved[name] = [m.backup_id for m in old if _archive_one(target, cfg.type, m, archive, dry_run)]
    return moved


def _archive_class(cfg: Any) -> str | None:
    archive_class = getattr(cfg, "archive_class", None)
    return archive_class() if callable(archive_class) else None


def _started(m: Manifest) -> datetime:
    return as_utc(m.started_at)


def _archive_one(target: Any, kind: str, m: Manifest, archive: str, dry_run: bool) -> bool:
    key = f"{backup_prefix(m.source, m.backup_id)}/{PAYLOAD_NAME}"
    state = tier_state(target, key)
    if state is None or state.storage_class not in STORAGE_CLASSES[kind]:
        return False  # no payload (or a class this version does not know): nothing to move
    if state.storage_class == archive or is_colder(kind, state.storage_class, archive):
        return False  # already archived
    if state.frozen:
        log.warning(
            "archive at target %s: %s stays in %s: a frozen object cannot be moved to %s "
            "without a thaw", target.name, m.backup_id, state.storage_class, archive,
        )  # fmt: skip
        return False
    if dry_run:
        log.info("archive at target %s: would move %s from %s to %s", target.name, m.backup_id,
                 state.storage_class, archive)  # fmt: skip
        return True
    try:
        move_to_class(target, key, archive)
    except TargetError as exc:  # one payload that cannot move does not stop the others
        log.warning("archive at target %s: %s not moved to %s: %s", target.name, m.backup_id, archive, exc)
        return False
    log.info("archive at target %s: moved %s from %s to %s (older than archive_after_days)",
             target.name, m.backup_id, state.storage_class, archive)  # fmt: skip
    return True
