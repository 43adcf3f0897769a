"""Retention: which backups to keep (grandfather-father-son) and deleting the rest.

:func:`plan_retention` is pure (manifests and a clock in, a plan out) so the policy can be
tested over thousands of generated histories; :func:`apply_retention` carries a plan out at
one target and re-checks it against what the target holds right now.

Rules, in order (a backup is kept when any rule keeps it):

1. GFS, per standalone type (FULL and SCHEMA separately), with restic's ``forget
   --keep-daily/weekly/monthly/yearly`` semantics: walking from the newest backup, keep the
   newest backup of each of the last ``daily`` distinct days that have one, of the last
   ``weekly`` ISO weeks, ``monthly`` months and ``yearly`` years (UTC calendar).
2. ``retention_days``: keep every backup younger than that many days. ``window_days``
   (``dr.backup_retention_days`` for a schedule that sets no ``retention_days``): keep
   every standalone backup (FULL, SCHEMA) younger than that many days.
3. Incrementals and log backups younger than ``incremental_max_age_days`` (7, the source
   guide's cleanup rule) are kept; older ones go unless rule 5 or 6 keeps them.
   With ``full_max_age_days``, a standalone backup older than that keeps only its monthly
   and yearly GFS reasons (the guide's "30 days, full, exclude monthly").
4. Safety: the newest backup, the newest verified backup and the newest ``min_backups``
   backups are always kept.
5. Safety: every ancestor (parent, grandparent, … up to the FULL) of a kept backup is
   kept, so nothing kept ever becomes unrestorable.
6. Transaction logs: a TRANSACTION_LOG backup is kept exactly as long as the base (the
   FULL at the root of its chain) is retained, so point-in-time recovery from every
   retained base reaches every moment up to the next base; the logs of a base that is
   gone (or of a chain with no base left) go. ``retained_bases``: the ids of other
   schedules' backups their own plans keep (None: every backup no plan here governs
   counts as retained).

Apart from the policy, :func:`sweep_target` removes what is not a backup at all, once old
enough and not from a run in flight: the objects of a folder with no manifest (an upload
whose manifest write failed, a delete cut short: :func:`sweep_orphans`), and what killed
uploads left (temporary files, open multipart uploads: :func:`sweep_partial_uploads`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from include.backup import faults
from include.backup.catalog.catalog import (
    as_utc,
    list_backups,
    manifest_key,
    sort_key,
)
from include.backup.catalog.index import record_deleted
from include.backup.catalog.manifest import MANIFEST_NAME, Manifest, backup_prefix
from include.backup.config.schema import GFSRetention
from include.backup.targets.base import PartialUpload, SweepsPartialUploads, Target

logger = logging.getLogger(__name__)

DEFAULT_GFS = GFSRetention()  # 7 daily, 4 weekly, 12 monthly, 7 yearly (the source guide)
TIERS = ("daily", "weekly", "monthly", "yearly")
# Backups that are useless without their parent chain; everything else stands alone.
DEPENDENT_TYPES = frozenset({"INCREMENTAL", "TRANSACTION_LOG"})
# Tiers that outlive ``full_max_age_days``.
LONG_TIERS = ("monthly", "yearly")


@dataclass
class RetentionPlan:
    keep: dict[str, list[str]] = field(default_factory=dict)  # backup id -> why
    delete: dict[str, str] = field(default_factory=dict)  # backup id -> why

    def summary(self) -> str:
        return f"keep {len(self.keep)}, delete {len(self.delete)}"


# --- planning --------------------------------------------------------------------------


def plan_retention(
    backups: list[Manifest],
    *,
    gfs: GFSRetention | None,
    retention_days: int | None,
    now: datetime,
    incremental_max_age_days: int = 7,
    full_max_age_days: int | None = None,
    schedule: str | None = None,
    window_days: int | None = None,
    min_backups: int = 0,
    retained_bases: set[str] | None = None,
) -> RetentionPlan:
    """Decide, for each backup, keep (with every reason) or delete (with the reason).

    Pass every backup of the source and ``schedule`` to plan for one schedule: only that
    schedule's backups are then kept or deleted, and the others still protect the parents
    they depend on (an incremental schedule chained onto a full schedule)."""
    now = as_utc(now)
    if gfs is None and retention_days is None:
        gfs = DEFAULT_GFS
    ordered = sorted(backups, key=sort_key)
    governed = [m for m in ordered if schedule is None or m.schedule == schedule]
    reasons: dict[str, list[str]] = {m.backup_id: [] for m in governed}

    if gfs is not None:
        for group in _standalone_groups(governed):
            _merge(reasons, gfs_keep(group, gfs))
    dropped = _cap_full_age(governed, reasons, now, full_max_age_days)
    _keep_young(governed, reasons, now, retention_days, incremental_max_age_days)
    _keep_window(governed, reasons, now, window_days)
    _keep_newest(governed, reasons, min_backups)
    by_id = {m.backup_id: m for m in ordered}
    # Backups this plan does not govern are never deleted by it, so they protect their
    # ancestors just like kept ones.
    roots = [m for m in ordered if m.backup_id not in reasons or reasons[m.backup_id]]
    _merge(reasons, ancestor_keep(roots, by_id))
    logs = _keep_logs_of_retained_bases(governed, reasons, by_id, retained_bases)
    _merge(reasons, ancestor_keep(logs, by_id))  # a log may sit on an INCREMENTAL

    plan = RetentionPlan()
    for m in governed:
        if reasons[m.backup_id]:
            plan.keep[m.backup_id] = reasons[m.backup_id]
        else:
            plan.delete[m.backup_id] = _delete_reason(
                m, gfs, retention_days, incremental_max_age_days, full_max_age_days,
                m.backup_id in dropped, window_days,
            )
    return plan


def _standalone_groups(backups: list[Manifest]) -> list[list[Manifest]]:
    groups: dict[str, list[Manifest]] = {}
    for m in backups:
        if m.backup_type not in DEPENDENT_TYPES:
            groups.setdefault(m.backup_type, []).append(m)
    return list(groups.values())


def bucket(tier: str, moment: datetime) -> str:
    """The calendar period (UTC) of ``moment`` for a GFS tier, e.g. '2024-W07'."""
    moment = as_utc(moment)
    if tier == "daily":
        return moment.date().isoformat()
    if tier == "weekly":
        iso = moment.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if tier == "monthly":
        return f"{moment.year:04d}-{moment.month:02d}"
    if tier == "yearly":
        return f"{moment.year:04d}"
    raise ValueError(f"unknown GFS tier {tier!r}; expected one of {', '.join(TIERS)}")


def gfs_keep(backups: Iterable[Manifest], gfs: GFSRetention) -> dict[str, list[str]]:
    """restic's keep-daily/weekly/monthly/yearly over one group of backups: walk from the
    newest; a tier keeps a backup whenever it opens a period that tier has not seen yet,
    until the tier's count is used up. Tiers are independent, so one backup may be, say,
    the daily, weekly and monthly keep at once."""
    newest_first = sorted(backups, key=sort_key, reverse=True)
    keep: dict[str, list[str]] = {}
    for tier in TIERS:
        left = getattr(gfs, tier)
        last: str | None = None
        for m in newest_first:
            if left <= 0:
                break
            period = bucket(tier, m.started_at)
            if period != last:
                keep.setdefault(m.backup_id, []).append(f"{tier} {period}")
                last = period
                left -= 1
    return keep


def _cap_full_age(
    backups: list[Manifest],
    reasons: dict[str, list[str]],
    now: datetime,
    full_max_age_days: int | None,
) -> set[str]:
    """Drop daily/weekly reasons of standalone backups older than ``full_max_age_days``;
    returns the ids that lost every reason that way (for the delete message)."""
    if full_max_age_days is None:
        return set()
    limit = timedelta(days=full_max_age_days)
    dropped: set[str] = set()
    for m in backups:
        if m.backup_type in DEPENDENT_TYPES or now - as_utc(m.started_at) <= limit:
            continue
        had = reasons[m.backup_id]
        reasons[m.backup_id] = [r for r in had if r.split(" ", 1)[0] in LONG_TIERS]
        if had and not reasons[m.backup_id]:
            dropped.add(m.backup_id)
    return dropped


def _keep_young(
    backups: list[Manifest],
    reasons: dict[str, list[str]],
    now: datetime,
    retention_days: int | None,
    incremental_max_age_days: int,
) -> None:
    for m in backups:
        age = now - as_utc(m.started_at)
        if retention_days is not None and age < timedelta(days=retention_days):
            reasons[m.backup_id].append(f"younger than {retention_days} days")
        if m.backup_type in DEPENDENT_TYPES and age < timedelta(days=incremental_max_age_days):
            reasons[m.backup_id].append(
                f"{m.backup_type} younger than {incremental_max_age_days} days"
            )


def _keep_window(
    backups: list[Manifest], reasons: dict[str, list[str]], now: datetime, window_days: int | None
) -> None:
    """``dr.backup_retention_days``: a standalone backup no GFS tier keeps still stays
    until it is that old."""
    if window_days is None:
        return
    for m in backups:
        if m.backup_type not in DEPENDENT_TYPES and now - as_utc(m.started_at) < timedelta(days=window_days):
            reasons[m.backup_id].append(f"younger than {window_days} days (backup_retention_days)")


def _keep_newest(backups: list[Manifest], reasons: dict[str, list[str]], min_backups: int = 0) -> None:
    """Never delete the last good backup: a run whose every backup is old (the schedule
    was paused, or failed for weeks) must still leave one to restore; nor any of the
    newest ``min_backups``."""
    if not backups:
        return
    reasons[backups[-1].backup_id].append("newest backup")
    verified = [m for m in backups if m.verified]
    if verified:
        reasons[verified[-1].backup_id].append("newest verified backup")
    for m in backups[-min_backups:] if min_backups > 0 else []:
        reasons[m.backup_id].append(f"one of the newest {min_backups} (min_backups)")


def chain_base(m: Manifest, by_id: Mapping[str, Manifest]) -> Manifest | None:
    """The standalone backup at the root of ``m``'s chain; None when the chain is broken
    (an ancestor is missing) before reaching one."""
    current: Manifest | None = m
    seen: set[str] = set()
    while current is not None and current.backup_type in DEPENDENT_TYPES:
        if current.backup_id in seen or not current.parent_id:
            return None
        seen.add(current.backup_id)
        current = by_id.get(current.parent_id)
    return current


def _keep_logs_of_retained_bases(
    backups: list[Manifest],
    reasons: dict[str, list[str]],
    by_id: Mapping[str, Manifest],
    retained_bases: set[str] | None,
) -> list[Manifest]:
    """Rule 6: a log stays while its chain's base does (whoever governs the base).
    Returns the logs this rule kept."""
    kept: list[Manifest] = []
    for m in backups:
        if m.backup_type != "TRANSACTION_LOG" or reasons[m.backup_id]:
            continue
        base = chain_base(m, by_id)
        if base is None:
            continue
        if base.backup_id in reasons:
            retained = bool(reasons[base.backup_id])
        else:
            retained = retained_bases is None or base.backup_id in retained_bases
        if retained:
            reasons[m.backup_id].append(f"log of retained base {base.backup_id} (point-in-time recovery)")
            kept.append(m)
    return kept


def ancestor_keep(
    kept: Iterable[Manifest], by_id: Mapping[str, Manifest]
) -> dict[str, list[str]]:
    """'parent of <child>' for every ancestor of every backup in ``kept``. Each chain is
    walked once: a backup already walked has had its ancestors marked."""
    reasons: dict[str, list[str]] = {}
    walked: set[str] = set()
    for m in kept:
        current = m
        while current.backup_id not in walked:
            walked.add(current.backup_id)
            parent = by_id.get(current.parent_id) if current.parent_id else None
            if parent is None:
                break  # a chain root, or a broken chain (nothing here to protect)
            reasons.setdefault(parent.backup_id, []).append(f"parent of {current.backup_id}")
            current = parent
    return reasons


def _merge(into: dict[str, list[str]], more: Mapping[str, list[str]]) -> None:
    for backup_id, why in more.items():
        if backup_id in into:
            into[backup_id].extend(why)


def _delete_reason(
    m: Manifest,
    gfs: GFSRetention | None,
    retention_days: int | None,
    incremental_max_age_days: int,
    full_max_age_days: int | None,
    capped: bool,
    window_days: int | None = None,
) -> str:
    window = f", older than {retention_days} days" if retention_days is not None else ""
    if m.backup_type not in DEPENDENT_TYPES and retention_days is None and window_days is not None:
        window = f", older than {window_days} days (backup_retention_days)"
    if m.backup_type == "TRANSACTION_LOG":
        return (
            f"TRANSACTION_LOG older than {incremental_max_age_days} days{window}, its base is not "
            "retained (no retained base can use it) and no kept backup depends on it"
        )
    if m.backup_type in DEPENDENT_TYPES:
        return (
            f"{m.backup_type} older than {incremental_max_age_days} days{window}, "
            "and no kept backup depends on it"
        )
    if capped:
        return (
            f"{m.backup_type} older than {full_max_age_days} days and not a monthly or "
            f"yearly keep{window}"
        )
    if gfs is None:
        return f"older than {retention_days} days"
    return (
        f"{m.backup_type} not kept by any GFS tier ({gfs.daily} daily, {gfs.weekly} weekly, "
        f"{gfs.monthly} monthly, {gfs.yearly} yearly){window}"
    )


# --- applying --------------------------------------------------------------------------


def apply_retention(
    target: Target,
    source: str,
    schedule_name: str,
    plan: RetentionPlan,
    *,
    dry_run: bool = False,
    log: logging.Logger | logging.LoggerAdapter = logger,  # type: ignore[type-arg]
    current: list[Manifest] | None = None,
) -> list[str]:
    """Delete the backups ``plan`` condemns that belong to ``schedule_name`` at ``target``;
    returns their ids (the ones that would go, with ``dry_run``).

    The plan is re-checked against the target's current listing (``current``, when the
    caller just read it from the catalog index; else the manifests): a backup that
    something staying at the target depends on is kept (the plan may predate a new
    incremental, or have been made without another schedule's backups)."""
    if current is None:
        current = list_backups(target, source)
    by_id = {m.backup_id: m for m in current}
    doomed = _doomed(current, plan, schedule_name)
    spared = _spared(current, doomed, by_id, schedule_name)
    for backup_id, why in spared.items():
        log.info("retention at target %s: keeping %s (%s)", target.name, backup_id, why)
        doomed.discard(backup_id)

    deleted: list[str] = []
    # Newest first, so an interrupted run never leaves a listed backup whose parent is gone.
    for m in sorted((by_id[b] for b in doomed), key=sort_key, reverse=True):
        reason = plan.delete[m.backup_id]
        if dry_run:
            log.info("retention at target %s: would delete %s (%s)", target.name, m.backup_id, reason)
        else:
            _delete_backup(target, m)
            log.info("retention at target %s: deleted %s (%s)", target.name, m.backup_id, reason)
        deleted.append(m.backup_id)
    return deleted


def _doomed(current: list[Manifest], plan: RetentionPlan, schedule_name: str) -> set[str]:
    return {
        m.backup_id
        for m in current
        if m.backup_id in plan.delete and m.schedule == schedule_name
    }


def _spared(
    current: list[Manifest],
    doomed: set[str],
    by_id: Mapping[str, Manifest],
    schedule_name: str,
) -> dict[str, str]:
    survivors = [m for m in current if m.backup_id not in doomed]
    spared = {
        backup_id: why[0]
        for backup_id, why in ancestor_keep(survivors, by_id).items()
        if backup_id in doomed
    }
    # Never empty a schedule at a target, whatever plan was handed in.
    own = [m for m in current if m.schedule == schedule_name]
    if own and all(m.backup_id in doomed for m in own):
        spared.setdefault(own[-1].backup_id, "the schedule's last backup at this target")
        for backup_id, why in ancestor_keep([own[-1]], by_id).items():
            if backup_id in doomed:
                spared.setdefault(backup_id, why[0])
    return spared


def _delete_backup(target: Target, manifest: Manifest) -> None:
    """The manifest goes first, the payload after it.

    Of the two orders this is the safe one: a delete cut short between the two (the task
    killed, the target gone) leaves an orphan payload (no manifest, so no longer listed,
    chosen as a parent or restored), which :func:`sweep_orphans` removes once the grace is
    over; the other order would leave a listed backup whose data is gone, which every
    reader (list, restore, PITR, the DR page's figures) would still take for a backup."""
    target.delete(manifest_key(manifest.source, manifest.backup_id))
    record_deleted(target, manifest.source, manifest.backup_id)  # out of the catalog index
    faults.hit("retention.between-deletes")  # a test hook: the delete cut short here
    prefix = backup_prefix(manifest.source, manifest.backup_id) + "/"
    for info in list(target.list(prefix)):
        target.delete(info.key)


# --- orphans ---------------------------------------------------------------------------

# <schedule>-<UTC stamp>-<sha256(run id)[:6]>: only folders named like our backup ids are
# ever swept, whatever else shares the target.
_ORPHAN_ID_RE = re.compile(r".+-(?P<stamp>\d{8}T\d{6}Z)-[0-9a-f]{6}")


def find_orphans(
    target: Target,
    source: str,
    *,
    now: datetime,
    grace: timedelta,
    in_flight: Callable[[], set[str]],
) -> dict[str, list[str]]:
    """The objects of each backup folder of ``source`` at ``target`` that has no manifest
    (a run whose manifest upload failed, or a delete cut short), by backup id.

    A folder is an orphan only when its id's time (the run's logical date) is older than
    ``grace`` and no run in flight has that id. ``in_flight`` is called after the listing,
    so a run that starts meanwhile is seen."""
    folders: dict[str, list[str]] = {}
    with_manifest: set[str] = set()
    for info in target.list(f"{source}/"):
        parts = info.key.split("/")
        if len(parts) < 3:
            continue
        folders.setdefault(parts[1], []).append(info.key)
        if len(parts) == 3 and parts[2] == MANIFEST_NAME:
            with_manifest.add(parts[1])
    cutoff = as_utc(now) - grace
    candidates = {
        backup_id: keys
        for backup_id, keys in folders.items()
        if backup_id not in with_manifest
        and _ours(backup_id)
        and _id_time(backup_id, default=cutoff) < cutoff
    }
    if not candidates:
        return {}
    running = in_flight()
    return {b: sorted(keys) for b, keys in sorted(candidates.items()) if b not in running}


def _ours(folder: str) -> bool:
    """Whether a folder under a source is one of our backups' (never ``_catalog`` and the
    other ``_``-folders, never a name that is not one of our ids)."""
    return not folder.startswith("_") and _ORPHAN_ID_RE.fullmatch(folder) is not None


def id_time(backup_id: str) -> datetime | None:
    """The time in a backup id (its run's start); None for a name that is not one of ours."""
    match = _ORPHAN_ID_RE.fullmatch(backup_id)
    return None if match is None else datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _id_time(backup_id: str, *, default: datetime) -> datetime:
    """The time in a backup id; ``default`` for a name that is not one of our ids."""
    match = _ORPHAN_ID_RE.fullmatch(backup_id)
    if match is None:
        return default
    return datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def sweep_orphans(
    target: Target,
    source: str,
    *,
    now: datetime,
    grace: timedelta,
    in_flight: Callable[[], set[str]],
    dry_run: bool = False,
    log: logging.Logger | logging.LoggerAdapter = logger,  # type: ignore[type-arg]
) -> list[str]:
    """Delete every orphan :func:`find_orphans` names (with ``dry_run``, only log them);
    returns their backup ids. Nothing with a manifest is ever touched: an object without
    one is not a backup, and no restore can use it."""
    orphans = find_orphans(target, source, now=now, grace=grace, in_flight=in_flight)
    for backup_id, keys in orphans.items():
        if dry_run:
            log.info("orphans at target %s: would delete %s (%d object(s) and no manifest)",
                     target.name, backup_id, len(keys))
            continue
        for key in keys:
            target.delete(key)
        log.info("orphans at target %s: deleted %s (%d object(s), no manifest, older than %s)",
                 target.name, backup_id, len(keys), _hours(grace))
    return list(orphans)


# --- leftovers of killed uploads -------------------------------------------------------


def find_partial_uploads(
    target: Target,
    source: str,
    *,
    now: datetime,
    grace: timedelta,
    in_flight: Callable[[], set[str]],
) -> list[PartialUpload]:
    """What killed puts left in ``source``'s backup folders at ``target`` (temporary files,
    open multipart uploads: never listed, so retention never sees them), whatever became of
    the backup since (published, deleted, never finished).

    One is stale when both its own time (last write of a temp file, start of a multipart
    upload, when the store tells it) and its backup id's time are older than ``grace``,
    and no run in flight has its backup id; ``in_flight`` is called after the listing. (Both
    times: a store's clock or its answer may be off, as moto's fixed multipart start time is;
    a young id alone keeps a live upload of a current run safe.)"""
    if not (target.capabilities.partial_uploads and isinstance(target, SweepsPartialUploads)):
        return []  # the store expires them itself (Azure, GCS): docs/targets.md
    cutoff = as_utc(now) - grace
    stale: list[tuple[str, PartialUpload]] = []
    for upload in target.list_partial_uploads(f"{source}/"):
        parts = upload.key.split("/")
        if len(parts) < 3 or not _ours(parts[1]):
            continue
        latest = _id_time(parts[1], default=cutoff)
        if upload.started_at is not None:
            latest = max(latest, as_utc(upload.started_at))
        if latest < cutoff:
            stale.append((parts[1], upload))
    if not stale:
        return []
    running = in_flight()
    return [upload for backup_id, upload in stale if backup_id not in running]


def sweep_partial_uploads(
    target: Target,
    source: str,
    *,
    now: datetime,
    grace: timedelta,
    in_flight: Callable[[], set[str]],
    dry_run: bool = False,
    log: logging.Logger | logging.LoggerAdapter = logger,  # type: ignore[type-arg]
) -> list[str]:
    """Remove every leftover :func:`find_partial_uploads` names (with ``dry_run``, only log
    them); returns their keys."""
    found = find_partial_uploads(target, source, now=now, grace=grace, in_flight=in_flight)
    if not isinstance(target, SweepsPartialUploads):
        return []  # find_partial_uploads found none
    for upload in found:
        what = _describe(upload)
        if dry_run:
            log.info("orphans at target %s: would remove %s", target.name, what)
            continue
        target.remove_partial_upload(upload)
        log.info("orphans at target %s: removed %s (older than %s, no run in flight)",
                 target.name, what, _hours(grace))
    return [u.key for u in found]


def _hours(grace: timedelta) -> str:
    return f"{grace.total_seconds() / 3600:g} hours"


def _describe(upload: PartialUpload) -> str:
    when = f"{as_utc(upload.started_at):%Y-%m-%d %H:%M} UTC" if upload.started_at else "an unknown time"
    size = f", {upload.size} bytes" if upload.size is not None else ""
    if upload.upload_id:
        return f"the unfinished multipart upload of '{upload.key}' (started {when})"
    return f"the temporary upload file '{upload.key}' (last written {when}{size})"


@dataclass
class Swept:
    """What one sweep of a source at a target removed (or would, with ``dry_run``)."""

    orphans: list[str] = field(default_factory=list)  # backup ids: folders with no manifest
    partial_uploads: list[str] = field(default_factory=list)  # keys of killed uploads' leftovers

    def __bool__(self) -> bool:
        return bool(self.orphans or self.partial_uploads)

    def to_json(self) -> dict[str, list[str]]:
        return {"orphans": list(self.orphans), "partial_uploads": list(self.partial_uploads)}


def sweep_target(
    target: Target,
    source: str,
    *,
    now: datetime,
    grace: timedelta,
    in_flight: Callable[[], set[str]],
    dry_run: bool = False,
    log: logging.Logger | logging.LoggerAdapter = logger,  # type: ignore[type-arg]
) -> Swept:
    """The orphan sweep of ``source`` at ``target``: leftovers of killed uploads first, then
    the folders with no manifest. Only folders named like our backup ids are looked at,
    never ``_``-folders (the catalog index), and nothing with a manifest is removed but the
    temporary files beside it."""
    partial = sweep_partial_uploads(
        target, source, now=now, grace=grace, in_flight=in_flight, dry_run=dry_run, log=log
    )
    orphans = sweep_orphans(
        target, source, now=now, grace=grace, in_flight=in_flight, dry_run=dry_run, log=log
    )
    return Swept(orphans=orphans, partial_uploads=partial)
