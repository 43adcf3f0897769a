"""Each schedule on its own: its schema, and its references to targets and sources.

A schedule that names a broken target or source is broken too, and carries that entry's
issues, so each schedule's import error reads on its own. Cross-references are checked from
the raw item, so a schedule with a schema error still gets every problem in one pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from include.backup.config.messages import describe_all, kind_of, known_list
from include.backup.config.schema import NAME_PATTERN, BackupType, Schedule, supported_types


@dataclass
class Known:
    """What a schedule may refer to, and what it may not because it is broken."""

    targets: dict[str, Any]
    sources: dict[str, Any]
    broken_targets: dict[str, list[str]]
    broken_sources: dict[str, list[str]]


def _label(index: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return (
        f"schedules[{index}] ({name})"
        if isinstance(name, str) and name
        else f"schedules[{index}]"
    )


def _source_issues(
    label: str, source: Any, known: Known
) -> tuple[list[str], list[str]]:
    """(issues for the schedule, issues of the broken source it uses, to repeat)."""
    if not isinstance(source, str):
        return [], []
    if source in known.broken_sources:
        issue = (
            f"{label}.source: source {source!r} is invalid, so this schedule cannot run; "
            f"fix sources.{source} (see its error)"
        )
        return [issue], known.broken_sources[source]
    if source not in known.sources:
        issue = (
            f"{label}.source: unknown source {source!r}; {known_list(sorted(known.sources), 'sources')} "
            "— define it under sources: or fix the name"
        )
        return [issue], []
    return [], []


def _target_issues(
    label: str, targets: Any, known: Known
) -> tuple[list[str], list[str]]:
    if not isinstance(targets, list):
        return [], []
    issues: list[str] = []
    inherited: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(targets):
        if not isinstance(name, str):
            continue
        where = f"{label}.targets[{i}]"
        if name in seen:
            issues.append(
                f"{where}: target {name!r} is listed twice; list each target once"
            )
        elif name in known.broken_targets:
            issues.append(
                f"{where}: target {name!r} is invalid, so this schedule cannot run; "
                f"fix targets.{name} (see its error) or remove it from this schedule"
            )
            inherited += known.broken_targets[name]
        elif name not in known.targets:
            issues.append(
                f"{where}: unknown target {name!r}; {known_list(sorted(known.targets), 'targets')} "
                "— define it under targets: or fix the name"
            )
        seen.add(name)
    return issues, inherited


def _type_issue(label: str, item: dict[str, Any], known: Known) -> str | None:
    name = item.get("source")
    source = known.sources.get(name) if isinstance(name, str) else None
    if source is None:
        return None  # a missing or broken source is reported on its own
    try:
        backup_type = BackupType(item.get("type", BackupType.FULL.value))
    except (ValueError, TypeError):
        return None  # already reported by the schema
    supported = [t.value for t in BackupType if t in supported_types(source)]
    if backup_type.value in supported:
        return None
    fix = (
        f"use {' or '.join(supported)}"
        if supported
        else (
            f"no backup type is implemented for {source.type} sources yet — remove this schedule"
        )
    )
    return (
        f"{label}.type: {backup_type.value} backups of {source.type} sources are not "
        f"implemented in this version; {fix}"
    )


def _reference_issues(
    label: str, item: Any, known: Known
) -> tuple[list[str], list[str]]:
    """Cross-references, checked from the raw item so a schedule with a schema error still
    gets every problem reported in one pass."""
    if not isinstance(item, dict):
        return [], []
    src_issues, src_inherited = _source_issues(label, item.get("source"), known)
    tgt_issues, tgt_inherited = _target_issues(label, item.get("targets"), known)
    type_issue = [i for i in [_type_issue(label, item, known)] if i]
    return src_issues + tgt_issues + type_issue, src_inherited + tgt_inherited


def _schedule_key(index: int, item: Any, taken: set[str]) -> str:
    """The name a broken schedule is filed under: its own name when it is a usable, unique
    DAG name, else its position."""
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) and name not in taken:
        return name
    return f"schedules[{index}]"


def _check_schedule(
    index: int, item: Any, known: Known
) -> tuple[Schedule | None, list[str], list[str]]:
    """(the schedule if valid, its own issues, issues of broken things it uses)."""
    label = _label(index, item)
    if not isinstance(item, dict):
        return (
            None,
            [
                f"{label}: expected a mapping (name, source, type, cron, targets, …), got {kind_of(item)}"
            ],
            [],
        )
    issues: list[str] = []
    model: Schedule | None = None
    try:
        model = Schedule.model_validate(item)
    except ValidationError as exc:
        issues += describe_all(exc, Schedule, label)
    ref_issues, inherited = _reference_issues(label, item, known)
    issues += ref_issues
    return (model if not issues else None), issues, inherited


@dataclass
class ScheduleResult:
    valid: list[Schedule] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    broken: dict[str, list[str]] = field(default_factory=dict)


def validate_schedules(items: list[Any] | None, known: Known) -> ScheduleResult:
    result = ScheduleResult()
    first_index: dict[str, int] = {}
    for index, item in enumerate(items or []):
        schedule, issues, inherited = _check_schedule(index, item, known)
        name = item.get("name") if isinstance(item, dict) else None
        # The first schedule with a name keeps it (and keeps running); a later copy is
        # broken, because two DAGs cannot share an id.
        if isinstance(name, str) and name in first_index:
            issues.append(
                f"{_label(index, item)}.name: duplicate schedule name {name!r} (also schedules"
                f"[{first_index[name]}]); give each schedule a unique name"
            )
            schedule = None
        elif isinstance(name, str):
            first_index[name] = index
        if schedule is not None:
            result.valid.append(schedule)
            continue
        taken = {s.name for s in result.valid} | set(result.broken)
        result.broken[_schedule_key(index, item, taken)] = issues + inherited
        result.issues += issues
    return result
