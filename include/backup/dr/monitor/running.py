"""Backups in progress, read from the staging area (not Airflow's database): a directory
named by the backup id whose draft manifest gives ``started_at``, and the durations of a
schedule's finished backups that say what "usual" is (the BACKUP_SLOW rule)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from include.backup.catalog.catalog import as_utc, verified_at
from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME, Manifest
from include.backup.config.schema import Schedule
from include.backup.staging import BACKUP_ID_RE, DRAFT_NAME, FAILED_MARKER

SLOW_HISTORY = 20  # the newest this many finished backups give the usual duration


def finished_seconds(m: Manifest) -> float | None:
    """From ``started_at`` to ``finished_at`` (the checksum step), None while unfinished."""
    if m.finished_at is None:
        return None
    return max(0.0, (as_utc(m.finished_at) - as_utc(m.started_at)).total_seconds())


@dataclass
class StagedBackup:
    """A backup run's staging directory, as the monitor reads it."""

    backup_id: str
    schedule: str
    path: str
    started_at: datetime
    phase: str  # dump | encrypt | checksum | upload/verify
    failed: bool = False  # marked by the failure callback, nothing written since


def _stage_phase(names: set[str]) -> str:
    if MANIFEST_NAME in names:
        return "upload/verify"
    if PAYLOAD_NAME + ".partial" in names:
        return "encrypt"
    if PAYLOAD_NAME in names:
        return "checksum"
    return "encrypt" if DRAFT_NAME in names else "dump"


def read_stage(path: Path) -> StagedBackup | None:
    """The staged backup in ``path``, or None when the name is not a backup id's."""
    match = BACKUP_ID_RE.fullmatch(path.name)
    if match is None or not path.is_dir():
        return None
    entries = {p.name: p.stat().st_mtime for p in path.iterdir()}
    started: datetime | None = None
    if DRAFT_NAME in entries:
        try:
            started = as_utc(Manifest.from_json((path / DRAFT_NAME).read_bytes()).started_at)
        except ValueError:
            started = None  # half-written by hand; fall back on the directory's time
    if started is None:
        # The dump is still running (it writes the draft when it ends); the directory was
        # last changed when the dump created its partial file in it, i.e. when it started.
        started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    marked = entries.pop(FAILED_MARKER, None)
    # A failed run whose step was cleared and runs again writes newer files, or touches
    # the directory (the steps after the dump do, to keep it from looking stale).
    failed = marked is not None and all(t <= marked for t in [*entries.values(), path.stat().st_mtime])
    return StagedBackup(
        backup_id=path.name,
        schedule=match.group("schedule"),
        path=str(path),
        started_at=started,
        phase=_stage_phase(set(entries)),
        failed=failed,
    )


def staged_backups(root: Path) -> list[StagedBackup]:
    """Every backup staged under ``root`` (none when it does not exist). A directory that
    disappears while it is read (its run's cleanup) is skipped."""
    if not root.is_dir():
        return []
    found: list[StagedBackup] = []
    for path in sorted(root.iterdir()):
        try:
            staged = read_stage(path)
        except OSError:
            continue
        if staged is not None:
            found.append(staged)
    return found


def run_seconds(copies: Iterable[Manifest]) -> float | None:
    """How long a finished backup took end to end: from ``started_at`` to the last
    successful verification recorded at its targets (``copies``: its manifest at each), or
    to ``finished_at`` (the checksum step) when none is recorded."""
    copies = list(copies)
    if not copies:
        return None
    started = as_utc(copies[0].started_at)
    ends = [as_utc(v.verified_at) for m in copies for v in m.verification.values() if v.ok and v.verified_at]
    if ends:
        return max(0.0, (max(ends) - started).total_seconds())
    return finished_seconds(copies[0])


def in_progress(
    staged: Iterable[StagedBackup],
    schedule: Schedule,
    held: Iterable[tuple[str, Manifest]],
) -> StagedBackup | None:
    """The schedule's backup in progress: the newest staged one that is not marked
    failed, not yet verified at every target of the schedule, and not superseded by a
    later backup of the schedule at a target. ``held``: (target, manifest) of the schedule."""
    held = list(held)
    verified: dict[str, set[str]] = {}
    for tname, m in held:
        if verified_at(m, tname):
            verified.setdefault(m.backup_id, set()).add(tname)
    newest_done = max((as_utc(m.started_at) for _, m in held), default=None)
    candidates = [
        s
        for s in staged
        if s.schedule == schedule.name
        and not s.failed
        and not set(schedule.targets) <= verified.get(s.backup_id, set())
        and (newest_done is None or s.started_at >= newest_done or s.backup_id in verified)
    ]
    return max(candidates, key=lambda s: s.started_at, default=None)


def usual_durations(held: Iterable[tuple[str, Manifest]], *, exclude: str | None = None) -> list[float]:
    """End-to-end durations (:func:`run_seconds`) of the newest ``SLOW_HISTORY`` finished
    backups among ``held`` ((target, manifest) pairs of one schedule), newest first."""
    by_id: dict[str, list[Manifest]] = {}
    for _, m in held:
        if m.backup_id != exclude and m.finished_at is not None:
            by_id.setdefault(m.backup_id, []).append(m)
    newest = sorted(by_id.values(), key=lambda c: as_utc(c[0].started_at), reverse=True)[:SLOW_HISTORY]
    return [d for d in (run_seconds(c) for c in newest) if d is not None]
