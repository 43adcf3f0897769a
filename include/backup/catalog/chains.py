"""Backup chains over the manifests of one source: point-in-time selection, gaps.

A chain is a FULL (base) backup followed by the log / incremental backups that descend
from it through ``parent_id`` links. This module is source-agnostic: it only reads the
manifests' common fields plus the position keys below; sources supply a ``continuity``
function for what "the next backup starts where the previous ended" means for them.

Conventions (every source follows them):

- ``Manifest.position`` common keys: ``"start_time"`` and ``"end_time"``, ISO-8601 UTC
  strings: the time range of changes the backup covers. For a FULL/base backup the
  consistent point is ``end_time`` (``start_time`` may equal it). When a manifest lacks
  them, ``started_at`` / ``finished_at`` stand in.
- PostgreSQL adds ``"start_lsn"``, ``"end_lsn"``, ``"timeline"``, ``"wal_first"``,
  ``"wal_last"`` (WAL segment file names). MongoDB adds ``"oplog_start"`` /
  ``"oplog_end"`` (``{"t": seconds, "i": increment}``).
- Log / incremental backups name their parent (``parent_id``): the previous log backup of
  the chain, or the base/full for the first one.

Public API::

    check_chain(manifests, rules, continuity=None)   # before a restore writes anything
    ChainRules(base_format, link_format, ...)       # what a source accepts, its wording
    BrokenChain                                     # a chain that does not link up
    pitr_chain(backups, until, continuity=None) -> list[Manifest]
    latest_chain(backups) -> list[Manifest]
    find_gaps(backups, continuity=None) -> list[str]
    reachable_windows(backups) -> list[tuple[datetime, datetime]]
    start_time(manifest) / end_time(manifest) -> datetime
    format_time(moment) -> str      # "2026-01-02T03:04:05.123456Z"

``continuity(prev, cur)`` returns ``None`` when ``cur`` starts exactly where ``prev``
ended, else a one-line description of the problem (e.g. the missing range).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

from include.backup.catalog.catalog import STANDALONE_TYPES, as_utc, sort_key
from include.backup.catalog.manifest import Manifest
from include.backup.errors import IntegrityError, RestoreRefused

Continuity = Callable[[Manifest, Manifest], "str | None"]

# Types a point-in-time recovery can start from (a SCHEMA backup holds no data).
BASE_TYPES = frozenset({"FULL"})


class BrokenChain(IntegrityError, RestoreRefused):
    """A chain that does not link up: it starts with a backup that needs a parent, a member
    names another parent than the one before it, mixes sources, or leaves a gap.

    Both an IntegrityError (the held manifests do not form a chain) and a RestoreRefused
    (it is raised before a restore touches anything): callers catch either."""


# --- positions -------------------------------------------------------------------------


def _parse(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str) and value:
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        try:
            return as_utc(datetime.fromisoformat(text))
        except ValueError:
            return None
    return None


def end_time(manifest: Manifest) -> datetime:
    """The newest moment the backup covers (``position["end_time"]``, else finished_at,
    else started_at)."""
    moment = _parse(manifest.position.get("end_time"))
    if moment is not None:
        return moment
    return as_utc(manifest.finished_at or manifest.started_at)


def start_time(manifest: Manifest) -> datetime:
    """The oldest moment of change the backup covers (``position["start_time"]``, else
    started_at)."""
    moment = _parse(manifest.position.get("start_time"))
    if moment is not None:
        return moment
    return as_utc(manifest.started_at)


def format_time(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


def time_continuity(prev: Manifest, cur: Manifest) -> str | None:
    """A generic continuity check on the time range alone: ``cur`` must start no later
    than ``prev`` ended. Sources with real positions (LSN, oplog) should do better."""
    if start_time(cur) > end_time(prev):
        return (
            f"changes between {format_time(end_time(prev))} and "
            f"{format_time(start_time(cur))} are in no backup"
        )
    return None


# --- tree helpers ----------------------------------------------------------------------


def _sorted(backups: Iterable[Manifest]) -> list[Manifest]:
    return sorted(backups, key=sort_key)


def _children(backups: list[Manifest]) -> dict[str, list[Manifest]]:
    kids: dict[str, list[Manifest]] = {}
    for m in backups:  # already sorted: children come out in order
        if m.parent_id is not None:
            kids.setdefault(m.parent_id, []).append(m)
    return kids


def _source_name(backups: list[Manifest]) -> str:
    names = sorted({m.source for m in backups})
    return ", ".join(names) if names else "?"


def _descendant_paths(root: Manifest, kids: dict[str, list[Manifest]]) -> list[list[Manifest]]:
    """Every path root → … → node (one per node of the tree under root), depth first in
    backup order. Loops (damaged manifests) are cut."""
    paths: list[list[Manifest]] = []
    stack: list[list[Manifest]] = [[root]]
    while stack:
        path = stack.pop()
        paths.append(path)
        seen = {m.backup_id for m in path}
        for child in reversed(kids.get(path[-1].backup_id, [])):
            if child.backup_id not in seen and child.backup_type not in STANDALONE_TYPES:
                stack.append([*path, child])
    return paths


def reachable_windows(backups: Iterable[Manifest]) -> list[tuple[datetime, datetime]]:
    """The time ranges a point-in-time recovery can reach: for each FULL, from its end_time
    to the newest end_time among its descendants; overlapping ranges merged, oldest first.
    Continuity is not checked here (see :func:`find_gaps`)."""
    ordered = _sorted(backups)
    kids = _children(ordered)
    spans = []
    for base in ordered:
        if base.backup_type not in BASE_TYPES:
            continue
        last = max(end_time(p[-1]) for p in _descendant_paths(base, kids))
        spans.append((end_time(base), max(last, end_time(base))))
    spans.sort()
    merged: list[tuple[datetime, datetime]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _window_text(windows: list[tuple[datetime, datetime]]) -> str:
    if not windows:
        return "(none: no FULL backup)"
    return ", ".join(f"{format_time(lo)} – {format_time(hi)}" for lo, hi in windows)


_PITR_GAP = (
    "backup chain broken between {prev.backup_id} and {cur.backup_id} (source {cur.source}): "
    "{problem}; take a new FULL backup, or recover to a point before {prev_end_time}"
)


def _check_continuity(
    prev: Manifest, cur: Manifest, continuity: Continuity | None, template: str
) -> None:
    problem = continuity(prev, cur) if continuity is not None else None
    if problem:
        raise BrokenChain(
            template.format(
                prev=prev,
                cur=cur,
                problem=problem,
                prev_end=prev.position.get("end_time"),
                prev_end_time=format_time(end_time(prev)),
            )
        )


def _check(chain: list[Manifest], continuity: Continuity | None) -> None:
    for prev, cur in pairwise(chain):
        _check_continuity(prev, cur, continuity, _PITR_GAP)


# --- checking a chain before a restore -------------------------------------------------


@dataclass(frozen=True)
class ChainRules:
    """What one source's restore accepts as a chain, and how it words each refusal.

    A chain is a backup of ``start_types`` in ``base_format``, then backups of
    ``link_types`` in ``link_format``, each naming the one before it as its parent, all of
    one source (and of ``source_type`` when set). A start type outside :data:`BASE_TYPES`
    (a SCHEMA backup) holds no data and must stand alone.

    The messages are ``str.format`` templates over: ``first`` (the chain's first backup),
    ``m`` (a backup in the wrong format), ``prev`` and ``cur`` (neighbours), ``problem``
    (what ``continuity`` found) and ``prev_end`` (``prev``'s recorded end_time position).
    """

    base_format: str
    link_format: str
    source_type: str | None = None
    start_types: frozenset[str] = BASE_TYPES
    link_types: frozenset[str] | None = None  # None: the link format says enough
    empty: str = "nothing to restore: the chain is empty"
    wrong_format: str = (
        "backup {m.backup_id} is a {m.source_type} backup in format {m.payload_format!r}"
    )
    wrong_link_format: str | None = None  # None: wrong_format
    wrong_start: str = (
        "backup chain broken: it starts with {first.backup_id}, a {first.backup_type}; a "
        "restore starts from a FULL backup"
    )
    continues_dataless: str = (
        "backup chain broken: {cur.backup_id} continues the {first.backup_type} backup "
        "{first.backup_id}, which holds no data; restore from a FULL"
    )
    wrong_link: str = (
        "backup chain broken: {cur.backup_id} ({cur.backup_type}) cannot follow "
        "{prev.backup_id}; a chain is one FULL then log/incremental backups"
    )
    wrong_parent: str = (
        "backup chain broken: {cur.backup_id} names parent {cur.parent_id}, not "
        "{prev.backup_id}"
    )
    mixed_sources: str = (
        "backup chain mixes sources: {cur.backup_id} is from {cur.source!r}, "
        "{first.backup_id} from {first.source!r}"
    )
    gap: str = "backup chain broken between {prev.backup_id} and {cur.backup_id}: {problem}"


def check_chain(
    manifests: Sequence[Manifest],
    rules: ChainRules,
    continuity: Continuity | None = None,
) -> None:
    """Check, before a restore writes anything, that ``manifests`` (oldest first) form one
    chain ``rules`` accepts and (with ``continuity``) that each backup starts where the one
    before it ended. RestoreRefused for an empty chain or a backup in the wrong format;
    :class:`BrokenChain` for a chain that does not link up."""
    if not manifests:
        raise RestoreRefused(rules.empty)
    first = manifests[0]
    for i, m in enumerate(manifests):
        fmt, template = (
            (rules.base_format, rules.wrong_format)
            if i == 0
            else (rules.link_format, rules.wrong_link_format or rules.wrong_format)
        )
        if m.payload_format != fmt or rules.source_type not in (None, m.source_type):
            raise RestoreRefused(template.format(m=m, first=first))
    if first.backup_type not in rules.start_types:
        raise BrokenChain(rules.wrong_start.format(first=first))
    if first.backup_type not in BASE_TYPES and len(manifests) > 1:
        raise BrokenChain(rules.continues_dataless.format(first=first, cur=manifests[1]))
    for prev, cur in pairwise(manifests):
        _check_link(first, prev, cur, rules)
        _check_continuity(prev, cur, continuity, rules.gap)


def _check_link(first: Manifest, prev: Manifest, cur: Manifest, rules: ChainRules) -> None:
    fields = {"first": first, "prev": prev, "cur": cur}
    if rules.link_types is not None and cur.backup_type not in rules.link_types:
        raise BrokenChain(rules.wrong_link.format(**fields))
    if cur.parent_id != prev.backup_id:
        raise BrokenChain(rules.wrong_parent.format(**fields))
    if cur.source != first.source:
        raise BrokenChain(rules.mixed_sources.format(**fields))


# --- public ----------------------------------------------------------------------------


def pitr_chain(
    backups: list[Manifest],
    until: datetime,
    continuity: Continuity | None = None,
) -> list[Manifest]:
    """The backups to replay to reach ``until``: the newest FULL whose end_time <= until,
    then its descendants (parent_id links, in order) up to the first whose end_time >=
    until. RestoreRefused (naming the reachable window) when ``until`` cannot be reached;
    :class:`BrokenChain` (an IntegrityError) when ``continuity`` finds a gap inside the
    chosen chain."""
    target = as_utc(until)
    ordered = _sorted(backups)
    kids = _children(ordered)
    bases = [m for m in ordered if m.backup_type in BASE_TYPES and end_time(m) <= target]
    for base in reversed(bases):  # newest base first; older ones only as a fallback
        best: list[Manifest] | None = None
        for path in _descendant_paths(base, kids):
            if end_time(path[-1]) < target:
                continue
            if any(end_time(m) >= target for m in path[:-1]):
                continue  # a shorter path already reaches the target
            if best is None or (len(path), end_time(path[-1])) < (
                len(best),
                end_time(best[-1]),
            ):
                best = path
        if best is not None:
            _check(best, continuity)
            return best
    raise RestoreRefused(
        f"point in time {format_time(target)} is outside the reachable window "
        f"{_window_text(reachable_windows(ordered))} for source {_source_name(ordered)}"
    )


def latest_chain(backups: list[Manifest]) -> list[Manifest]:
    """The chain ending at the newest backup: its FULL (or SCHEMA) first, then each
    descendant in order. BrokenChain when a parent is missing or the root needs one."""
    ordered = _sorted(backups)
    if not ordered:
        raise RestoreRefused("no backups to restore")
    by_id = {m.backup_id: m for m in ordered}
    chain = [ordered[-1]]
    seen = {chain[0].backup_id}
    while chain[-1].parent_id is not None:
        parent_id = chain[-1].parent_id
        if parent_id in seen:
            raise BrokenChain(
                f"backup chain of {chain[0].backup_id} loops through {parent_id}; the "
                "manifests are damaged — restore another backup"
            )
        if parent_id not in by_id:
            raise BrokenChain(
                f"backup chain broken: {chain[-1].backup_id} needs parent {parent_id}, "
                "which is not among the backups held"
            )
        seen.add(parent_id)
        chain.append(by_id[parent_id])
    if chain[-1].backup_type not in STANDALONE_TYPES:
        raise BrokenChain(
            f"backup chain broken: {chain[-1].backup_id} is {chain[-1].backup_type} but "
            f"names no parent, so {chain[0].backup_id} cannot be restored"
        )
    chain.reverse()
    return chain


def find_gaps(backups: list[Manifest], continuity: Continuity | None = None) -> list[str]:
    """One line per break in the chains of ``backups``: a missing parent, a log or
    incremental without a parent, or (with ``continuity``) a range no backup covers."""
    ordered = _sorted(backups)
    by_id = {m.backup_id: m for m in ordered}
    problems: list[str] = []
    for m in ordered:
        if m.parent_id is None:
            if m.backup_type not in STANDALONE_TYPES:
                problems.append(f"{m.backup_id} ({m.backup_type}) names no parent")
            continue
        parent = by_id.get(m.parent_id)
        if parent is None:
            problems.append(
                f"{m.backup_id} ({m.backup_type}) needs parent {m.parent_id}, which is not "
                "held"
            )
            continue
        if continuity is not None:
            problem = continuity(parent, m)
            if problem:
                problems.append(f"gap between {parent.backup_id} and {m.backup_id}: {problem}")
    return problems

