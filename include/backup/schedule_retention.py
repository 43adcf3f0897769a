"""A schedule's retention at its targets: the cleanup step's second half, and the CLI's
``prune`` verb. Backups that runs still in flight need are spared (docs/concurrency.md);
objects of uploads that never got their manifest are swept once old enough."""

from __future__ import annotations

import logging
from datetime import timedelta

from include.backup.catalog.catalog import list_backups
from include.backup.catalog.inflight import InFlight, read_inflight, source_lock
from include.backup.catalog.manifest import Manifest, utcnow
from include.backup.config.schema import BackupConfig, Schedule
from include.backup.errors import TargetError
from include.backup.retention import (
    RetentionPlan,
    ancestor_keep,
    apply_retention,
    plan_retention,
    sweep_orphans,
)
from include.backup.settings import ORPHAN_GRACE_HOURS, staging_root
from include.backup.targets import build_target
from include.backup.targets.base import Target

log = logging.getLogger(__name__)


def schedule_targets(config: BackupConfig, schedule: Schedule) -> dict[str, Target]:
    """The schedule's targets, built (no connection is made until one is used)."""
    return {name: build_target(name, config.targets[name]) for name in schedule.targets}


def sweep_schedule_orphans(
    config: BackupConfig, schedule: Schedule, *, dry_run: bool = False
) -> dict[str, list[str]]:
    """Remove, at each of the schedule's targets, the objects of the source's backups that
    never got a manifest (an upload whose manifest write failed) once their id is older
    than ORPHAN_GRACE_HOURS and no run of the source is in flight with that id. An
    unreachable target is skipped with a warning: the next cleanup tries again."""

    root = staging_root(config)
    removed: dict[str, list[str]] = {}
    for name, target in schedule_targets(config, schedule).items():
        try:
            removed[name] = sweep_orphans(
                target,
                schedule.source,
                now=utcnow(),
                grace=timedelta(hours=ORPHAN_GRACE_HOURS),
                in_flight=lambda: {r.backup_id for r in read_inflight(root, schedule.source)},
                dry_run=dry_run,
            )
        except TargetError as exc:
            log.warning("orphan sweep at target %s skipped: %s", name, exc)
    return removed


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
    for name, target in schedule_targets(config, schedule).items():
        # The whole source's listing, not just this schedule's: an incremental of another
        # schedule may depend on one of ours, and that must keep it.
        backups = list_backups(target, schedule.source)
        plan = plan_retention(
            backups,
            gfs=schedule.retention,
            retention_days=schedule.retention_days,
            now=utcnow(),
            schedule=schedule.name,
        )
        spare_in_flight(plan, backups, in_flight, target_name=name)
        deleted[name] = apply_retention(target, schedule.source, schedule.name, plan, dry_run=dry_run)
    return deleted


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
