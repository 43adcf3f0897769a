"""``prune --dry-run``: a schedule's retention plan at each of its targets, readable.

Per target: how many backups are kept and deleted, counted by the rule that decided
(retention.py's reasons, grouped: "daily 2024-03-01" counts under "daily"), then the ids
that would go, one per line; or the same as JSON. Planned from the catalog index
(catalog/index.py), exactly as the cleanup step plans: runs in flight are spared and the
plan is re-checked against the listing, so what it prints is what a prune would delete.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from include.backup.catalog.index import optional_keys, summaries
from include.backup.catalog.inflight import read_inflight
from include.backup.catalog.manifest import utcnow
from include.backup.config.schema import BackupConfig, Schedule
from include.backup.retention import apply_retention, plan_retention
from include.backup.schedule_retention import schedule_targets, spare_in_flight
from include.backup.settings import staging_root

# Reasons that name one backup or one period, reduced to their rule.
_RULES = (
    (re.compile(r"^(daily|weekly|monthly|yearly) "), None),
    (re.compile(r"^parent of "), "parent of a kept backup"),
    (re.compile(r"^needed by .* still in flight$"), "needed by a run in flight"),
    (re.compile(r"^its run is still in flight"), "its run is still in flight"),
)


@dataclass
class TargetPlan:
    """The plan of one schedule at one target."""

    schedule: str
    target: str
    kept: Counter[str] = field(default_factory=Counter)  # rule -> backups it keeps
    deleted: Counter[str] = field(default_factory=Counter)  # reason -> backups it deletes
    keep_count: int = 0
    delete_ids: list[str] = field(default_factory=list)  # newest first, as a prune deletes

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "target": self.target,
            "keep": self.keep_count,
            "delete": len(self.delete_ids),
            "kept_by_rule": dict(self.kept.most_common()),
            "deleted_by_rule": dict(self.deleted.most_common()),
            "delete_ids": self.delete_ids,
        }


def rule_of(reason: str) -> str:
    """The rule behind one keep reason ("weekly 2024-W07" -> "weekly")."""
    for pattern, name in _RULES:
        match = pattern.match(reason)
        if match:
            return name or match.group(1)
    return reason


def plan_schedule(config: BackupConfig, schedule: Schedule) -> list[TargetPlan]:
    """What a prune of ``schedule`` would do at each of its targets (nothing is deleted,
    no lock is taken: like the cleanup step's plan, but read-only)."""
    keys = optional_keys(config)
    in_flight = read_inflight(staging_root(config), schedule.source)
    plans: list[TargetPlan] = []
    for name, target in schedule_targets(config, schedule).items():
        backups = summaries(target, schedule.source, keys)
        plan = plan_retention(
            backups, gfs=schedule.retention, retention_days=schedule.retention_days,
            now=utcnow(), schedule=schedule.name,
        )  # fmt: skip
        spare_in_flight(plan, backups, in_flight, target_name=name)
        doomed = apply_retention(target, schedule.source, schedule.name, plan, dry_run=True, current=backups)
        out = TargetPlan(schedule.name, name, delete_ids=doomed)
        gone = set(doomed)
        for reasons in plan.keep.values():
            out.kept.update({rule_of(r) for r in reasons})
        for backup_id, reason in plan.delete.items():
            if backup_id in gone:
                out.deleted[reason] += 1
            else:  # spared by the re-check (a backup something staying depends on)
                out.kept["needed by a backup that stays"] += 1
        out.keep_count = len(plan.keep) + len(plan.delete) - len(gone)
        plans.append(out)
    return plans


def render(plans: list[TargetPlan]) -> Iterator[str]:
    """The plan as lines of text."""
    for p in plans:
        yield (
            f"{p.target}: would delete {len(p.delete_ids)} backup(s), keep {p.keep_count} "
            f"(schedule {p.schedule})"
        )
        if p.kept:
            yield "  kept, by rule (a backup may be kept by several):"
            yield from (f"    {n:>7}  {rule}" for rule, n in p.kept.most_common())
        if p.deleted:
            yield "  deleted, by rule:"
            yield from (f"    {n:>7}  {rule}" for rule, n in p.deleted.most_common())
        if p.delete_ids:
            yield "  would delete:"
            yield from (f"    {backup_id}" for backup_id in p.delete_ids)


def render_json(plans: list[TargetPlan]) -> str:
    return json.dumps({"plans": [p.to_json() for p in plans]}, indent=1)
