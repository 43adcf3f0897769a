"""``prune --dry-run``: a schedule's retention plan at each of its targets, readable.

Per target: how many backups are kept and deleted, counted by the rule that decided
(retention.py's reasons, grouped: "daily 2024-03-01" counts under "daily"), then every
backup of the schedule, newest first, with ``keep`` or ``delete`` and the rules that
decided it; or the same as JSON. Planned from the catalog index
(catalog/index.py), exactly as the cleanup step plans: runs in flight are spared and the
plan is re-checked against the listing, so what it prints is what a prune would delete.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from include.backup.catalog.catalog import as_utc, sort_key
from include.backup.catalog.index import optional_keys, summaries
from include.backup.catalog.inflight import read_inflight
from include.backup.catalog.manifest import Manifest, utcnow
from include.backup.config.schema import BackupConfig, Schedule
from include.backup.retention import RetentionPlan, apply_retention
from include.backup.schedule_retention import (
    plan_schedule_retention,
    retention_policy,
    schedule_targets,
    spare_in_flight,
)
from include.backup.settings import staging_root

# The plan is the output (one line per backup): the per-backup log lines a prune writes
# would repeat it, and would break --json where logging goes to stdout.
_QUIET = logging.getLogger(__name__ + ".plan")
_QUIET.setLevel(logging.WARNING)

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
    decisions: list[Decision] = field(default_factory=list)  # every backup, newest first

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "target": self.target,
            "keep": self.keep_count,
            "delete": len(self.delete_ids),
            "kept_by_rule": dict(self.kept.most_common()),
            "deleted_by_rule": dict(self.deleted.most_common()),
            "delete_ids": self.delete_ids,
            "backups": [d.to_json() for d in self.decisions],
        }


@dataclass
class Decision:
    """One backup of the schedule: kept or deleted, and every rule that says so."""

    backup_id: str
    backup_type: str
    started_at: str  # ISO-8601 UTC
    action: str  # "keep" | "delete"
    rules: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id, "type": self.backup_type, "started_at": self.started_at,
            "action": self.action, "rules": self.rules,
        }  # fmt: skip


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
        plan = plan_schedule_retention(config, schedule, backups, now=utcnow())
        spare_in_flight(plan, backups, in_flight, target_name=name)
        doomed = apply_retention(
            target, schedule.source, schedule.name, plan, dry_run=True, current=backups, log=_QUIET
        )  # fmt: skip
        out = TargetPlan(schedule.name, name, delete_ids=doomed)
        out.decisions = decisions(backups, plan, set(doomed))
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


def decisions(backups: list[Manifest], plan: RetentionPlan, doomed: set[str]) -> list[Decision]:
    """Every backup the plan governs, newest first, with what happens to it and why."""
    out: list[Decision] = []
    for m in sorted(backups, key=sort_key, reverse=True):
        if m.backup_id in doomed:
            action, rules = "delete", [plan.delete[m.backup_id]]
        elif m.backup_id in plan.keep:
            action, rules = "keep", list(plan.keep[m.backup_id])
        elif m.backup_id in plan.delete:  # spared by the re-check against the listing
            action, rules = "keep", ["needed by a backup that stays"]
        else:
            continue  # another schedule's backup: its own plan decides
        when = as_utc(m.started_at).strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append(Decision(m.backup_id, m.backup_type, when, action, rules))
    return out


def policy_line(config: BackupConfig, schedule: Schedule) -> str:
    """The policy the plan applies, in one line (every value the plan used)."""
    p = retention_policy(config, schedule)
    gfs = p["gfs"]
    parts = []
    if gfs is not None:
        tiers = f"{gfs.daily} daily, {gfs.weekly} weekly, {gfs.monthly} monthly, {gfs.yearly} yearly"
        parts.append(f"GFS {tiers}")
    if p["retention_days"] is not None:
        parts.append(f"retention_days {p['retention_days']}")
    if p["window_days"] is not None:
        parts.append(f"backup_retention_days {p['window_days']} (FULL/SCHEMA)")
    parts += [
        f"incrementals after {p['incremental_max_age_days']} days",
        f"fulls after {p['full_max_age_days']} days except monthly/yearly",
        "logs while their base is retained",
        f"min_backups {p['min_backups']}",
    ]
    return "; ".join(parts)


def render(plans: list[TargetPlan], policy: str | None = None) -> Iterator[str]:
    """The plan as lines of text: ``policy`` (see :func:`policy_line`) first, when given."""
    if policy:
        yield f"policy: {policy}"
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
        if p.decisions:
            yield "  every backup, newest first (action, id, type, started, rule):"
            width = max(len(d.backup_id) for d in p.decisions)
            for d in p.decisions:
                yield (
                    f"    {d.action:<6}  {d.backup_id:<{width}}  {d.backup_type:<15}  {d.started_at}  "
                    + "; ".join(d.rules)
                )
        elif p.delete_ids:
            yield "  would delete:"
            yield from (f"    {backup_id}" for backup_id in p.delete_ids)


def render_json(plans: list[TargetPlan]) -> str:
    return json.dumps({"plans": [p.to_json() for p in plans]}, indent=1)
