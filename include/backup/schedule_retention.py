"""A schedule's retention at its targets: the cleanup step's second half, and the CLI's
``prune`` verb. Backups that runs still in flight need are spared (docs/concurrency.md).
The orphan sweep (objects of uploads that never got their manifest, leftovers of killed
uploads) runs here too, once old enough: for the schedule's source at its targets after
each cleanup, and for every source at every target from ``dr_monitor``."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from include.backup import audit, audit_read
from include.backup.catalog.catalog import as_utc
from include.backup.catalog.index import optional_keys, reconcile, summaries
from include.backup.catalog.inflight import InFlight, read_inflight, source_lock
from include.backup.catalog.manifest import Manifest, utcnow
from include.backup.config.schema import BackupConfig, Schedule
from include.backup.errors import TargetError
from include.backup.keys import KeyRing
from include.backup.retention import (
    DEFAULT_GFS,
    DEPENDENT_TYPES,
    RetentionPlan,
    Swept,
    ancestor_keep,
    apply_retention,
    plan_retention,
    sweep_target,
)
from include.backup.run_records import prune_failed_runs
from include.backup.settings import ORPHAN_GRACE_HOURS, staging_root
from include.backup.targets import build_target
from include.backup.targets.base import Target
from include.backup.wal.archive import prune_before_oldest_base

log = logging.getLogger(__name__)

# dr_monitor runs every 15 minutes; against a 48-hour grace a sweep of every target every
# few hours is plenty, and spares the listings (and S3 requests) in between.
MONITOR_SWEEP_EVERY = timedelta(hours=6)
SWEEP_STATE_NAME = ".orphan-sweep.json"  # in the staging root: when dr_monitor last swept


def retention_policy(config: BackupConfig, schedule: Schedule) -> dict[str, Any]:
    """The keyword arguments of :func:`plan_retention` for ``schedule``: its ``retention``
    (GFS tiers) or its ``retention_days``; a schedule that sets neither gets the default
    retention: every FULL and SCHEMA backup younger than ``dr.backup_retention_days``, and
    past that the seed's GFS keeps (with ``full_max_age_days``, only monthly and yearly
    ones). Plus its ``cleanup_rules``."""
    rules = schedule.cleanup_rules
    default = schedule.retention is None and schedule.retention_days is None
    return {
        "gfs": DEFAULT_GFS if default else schedule.retention,
        "retention_days": schedule.retention_days,
        "window_days": config.dr.backup_retention_days if default else None,
        "incremental_max_age_days": rules.incremental_max_age_days,
        "full_max_age_days": rules.full_max_age_days,
        "min_backups": rules.min_backups,
    }


def plan_schedule_retention(
    config: BackupConfig, schedule: Schedule, backups: list[Manifest], *, now: datetime
) -> RetentionPlan:
    """``schedule``'s plan over the whole source's listing at one target. The bases other
    schedules of the source retain (their own plans, their own policies; a schedule gone
    from the config deletes nothing, so all of its backups stay) decide which of this
    schedule's transaction logs stay (retention.py, rule 6)."""
    retained: set[str] = set()
    others = {s.name: s for s in config.schedules if s.source == schedule.source and s.name != schedule.name}
    for m in backups:
        if m.schedule != schedule.name and m.schedule not in others and m.backup_type not in DEPENDENT_TYPES:
            retained.add(m.backup_id)
    own_logs = {
        m.backup_id for m in backups if m.backup_type == "TRANSACTION_LOG" and m.schedule == schedule.name
    }
    if own_logs:
        # Without this schedule's logs: each of them would keep its base as a parent, and
        # no log would ever go. (A log that stays keeps its base at that schedule's next pass.)
        rest = [m for m in backups if m.backup_id not in own_logs]
        for other in others.values():
            plan = plan_retention(rest, now=now, schedule=other.name, **retention_policy(config, other))
            retained |= plan.keep.keys()
    return plan_retention(
        backups, now=now, schedule=schedule.name, retained_bases=retained,
        **retention_policy(config, schedule),
    )  # fmt: skip


def schedule_targets(config: BackupConfig, schedule: Schedule) -> dict[str, Target]:
    """The schedule's targets, built (no connection is made until one is used)."""
    return {name: build_target(name, config.targets[name]) for name in schedule.targets}


def sweep_source(
    target: Target, source: str, root: Path, *, dry_run: bool = False, now: datetime | None = None
) -> Swept:
    """The orphan sweep of ``source`` at ``target`` (include/backup/retention.py): what is
    older than ORPHAN_GRACE_HOURS and from no run in flight under the staging ``root``."""
    return sweep_target(
        target,
        source,
        now=now or utcnow(),
        grace=timedelta(hours=ORPHAN_GRACE_HOURS),
        in_flight=lambda: {r.backup_id for r in read_inflight(root, source)},
        dry_run=dry_run,
    )


def sweep_schedule_orphans(
    config: BackupConfig, schedule: Schedule, *, dry_run: bool = False
) -> dict[str, Swept]:
    """Remove, at each of the schedule's targets, the objects of the source's backups that
    never got a manifest (an upload whose manifest write failed, a delete cut short) and
    the leftovers of killed uploads (temporary files, open multipart uploads), once older
    than ORPHAN_GRACE_HOURS and from no run of the source in flight. An unreachable target
    is skipped with a warning: the next cleanup tries again."""

    root = staging_root(config)
    removed: dict[str, Swept] = {}
    for name, target in schedule_targets(config, schedule).items():
        try:
            removed[name] = sweep_source(target, schedule.source, root, dry_run=dry_run)
        except TargetError as exc:
            log.warning("orphan sweep at target %s skipped: %s", name, exc)
    return removed


def orphan_report(swept: dict[str, Swept]) -> dict[str, dict[str, list[str]]]:
    """The cleanup step's XCom fields for a sweep: ``orphans`` (target -> backup ids whose
    manifest-less folder went) and ``partial_uploads`` (target -> keys of killed uploads'
    leftovers removed)."""
    return {
        "orphans": {name: s.orphans for name, s in swept.items()},
        "partial_uploads": {name: s.partial_uploads for name, s in swept.items()},
    }


def sweep_all_targets(
    config: BackupConfig,
    *,
    now: datetime | None = None,
    targets: dict[str, Target] | None = None,
    every: timedelta = MONITOR_SWEEP_EVERY,
    keys: KeyRing | None = None,
) -> dict[str, dict[str, Swept]]:
    """``dr_monitor``'s sweep: every source of the config at every target (a target may
    hold a source's backups from a schedule since edited), at most once per ``every``
    per target. Returns what was removed: target -> source -> :class:`Swept`, only where
    something was. A target that cannot be swept is logged and tried the next round.
    With ``keys``, each source's catalog index is also reconciled with its manifests
    (catalog/index.py): a record a publish or a delete failed to write is fixed here."""
    now = as_utc(now) if now else utcnow()
    root = staging_root(config)
    state = _read_sweep_state(root)
    names = list(targets) if targets is not None else list(config.targets)
    removed: dict[str, dict[str, Swept]] = {}
    for name in names:
        last = state.get(name)
        if last is not None and now - last < every:
            continue
        try:
            target = targets[name] if targets is not None else build_target(name, config.targets[name])
            for source in config.sources:
                swept = sweep_source(target, source, root, now=now)
                if swept:
                    removed.setdefault(name, {})[source] = swept
                if keys is not None:
                    _reconcile(target, source, keys)
            if keys is not None:  # the audit trail's own retention (docs/audit.md)
                days = config.dr.audit_retention_days
                audit_read.sweep_retention(target, config.sources, keys, days=days, now=now)
        except Exception as exc:  # noqa: BLE001 - a bad target, TargetError, SDK errors: the others still go
            log.warning("orphan sweep at target %s skipped: %s", name, exc)
            continue
        state[name] = now
    _write_sweep_state(root, state)
    return removed


def _reconcile(target: Target, source: str, keys: KeyRing) -> None:
    added, gone = reconcile(target, source, keys)
    if added or gone:
        log.warning(
            "catalog index of %s at target %s: %d backup(s) added and %d removed to match "
            "the manifests (an index write had failed)", source, target.name, added, gone,
        )  # fmt: skip


def _read_sweep_state(root: Path) -> dict[str, datetime]:
    try:
        data = json.loads((root / SWEEP_STATE_NAME).read_text())
        return {str(k): as_utc(datetime.fromisoformat(v)) for k, v in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # none yet, or damaged: sweep everything now


def _write_sweep_state(root: Path, state: dict[str, datetime]) -> None:
    path = root / SWEEP_STATE_NAME
    if not root.is_dir():
        return  # no staging yet (it is created 0700 by the first dump, not here)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps({k: v.isoformat() for k, v in sorted(state.items())}))
        os.replace(tmp, path)
    except OSError as exc:  # the next round sweeps again: harmless
        log.warning("orphan sweep: cannot record the sweep time in %s: %s", path, exc)


def apply_schedule_retention(
    config: BackupConfig, schedule: Schedule, *, dry_run: bool = False
) -> dict[str, list[str]]:
    """The schedule's retention at each of its targets; returns the ids deleted (or that
    would be, with ``dry_run``) per target. Each decision is logged with its reason."""

    root = staging_root(config)
    if dry_run:  # deletes nothing: no need to keep the runs in flight waiting
        return _retention_pass(config, schedule, read_inflight(root, schedule.source), dry_run=True)
    # Under the source's lock, which the dump takes to choose a parent: see _choose_parent.
    with source_lock(root, schedule.source, purpose=f"retention of schedule {schedule.name}"):
        return _retention_pass(config, schedule, read_inflight(root, schedule.source), dry_run=False)


def _retention_pass(
    config: BackupConfig, schedule: Schedule, in_flight: list[InFlight], *, dry_run: bool
) -> dict[str, list[str]]:
    deleted: dict[str, list[str]] = {}
    keys = optional_keys(config)
    built = schedule_targets(config, schedule)
    audit_at: dict[str, Target] | None = None  # built on the first delete, reused for the rest
    for name, target in built.items():
        # The whole source's listing, not just this schedule's: an incremental of another
        # schedule may depend on one of ours, and that must keep it. From the catalog
        # index: records only, never the file indexes.
        backups = summaries(target, schedule.source, keys)
        plan = plan_schedule_retention(config, schedule, backups, now=utcnow())
        spare_in_flight(plan, backups, in_flight, target_name=name)
        deleted[name] = apply_retention(
            target, schedule.source, schedule.name, plan, dry_run=dry_run, current=backups
        )
        # The failed-run records (run_records.py) go with the backups beside them.
        days = schedule.retention_days or config.dr.backup_retention_days
        prune_failed_runs(target, schedule.source, now=utcnow(), older_than_days=days, dry_run=dry_run)
        kept = [m for m in backups if m.backup_id not in plan.delete]  # pushed WAL: wal/archive.py
        prune_before_oldest_base(target, schedule.source, kept, dry_run=dry_run)
        for backup_id in [] if dry_run else deleted[name]:  # each delete leaves an audit record
            if audit_at is None:
                audit_at = _audit_targets(config, schedule.source, built)
            why = plan.delete.get(backup_id, "")
            audit.note(config, "delete", source=schedule.source, backup_ids=[backup_id], target=name,
                       keys=keys, targets=audit_at, reason=why,
                       extra={"schedule": schedule.name})  # fmt: skip
    return deleted


def _audit_targets(config: BackupConfig, source: str, built: dict[str, Target]) -> dict[str, Target]:
    """Where the source's audit records go, each target built once (an object-store client
    costs seconds to make; a prune of many backups would make one per record)."""
    names = audit.audit_targets(config, source)
    return {n: built.get(n) or build_target(n, config.targets[n]) for n in names}


def spare_in_flight(
    plan: RetentionPlan, backups: list[Manifest], in_flight: list[InFlight], *, target_name: str
) -> None:
    """Move out of ``plan.delete`` every backup a run in flight needs: its own backup, its
    parent and the parent's ancestors (a published incremental protects its chain through
    its manifest; one still in flight only through its in-flight record)."""

    by_id = {m.backup_id: m for m in backups}
    for record in in_flight:
        roots = [by_id[i] for i in sorted(record.protects()) if i in by_id]
        needed = {m.backup_id for m in roots} | set(ancestor_keep(roots, by_id))
        for backup_id in sorted(needed & plan.delete.keys()):
            why = (
                f"its run is still in flight (staging {record.backup_id} exists)"
                if backup_id == record.backup_id
                else f"needed by {record.backup_id} of schedule {record.schedule}, still in flight"
            )
            del plan.delete[backup_id]
            plan.keep[backup_id] = [why]
            log.info("retention at target %s: keeping %s (%s)", target_name, backup_id, why)
