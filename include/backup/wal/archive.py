"""The pushed WAL of a source at one target, as the catalog, PITR, retention and the RPO
monitor read it (the layout is in :mod:`~include.backup.wal.record`).

- :func:`pushed_wal`: which files are archived (those with a record), oldest first.
- :meth:`PushedWal.newest_time`: when the newest segment was pushed, authenticated: the
  end of the point-in-time window, and a physical source's RPO age.
- :func:`prune_pushed`: delete the segments older than the oldest retained base backup's
  first segment (timeline history files are kept: they are tiny and every later timeline
  needs them).
- :class:`WalPrefetcher`: fetch the files a restore replays, in order, several at once,
  into the restore's WAL directory, for its ``restore_command`` to pick up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.backup.errors import IntegrityError, TargetError
from include.backup.targets import build_target
from include.backup.wal.fetch import NotArchived, fetch_bytes, prefetch_into
from include.backup.wal.record import (
    RECORD_SUFFIX,
    SEGMENT,
    WAL_DIR,
    KeyLookup,
    object_key,
    parse_record,
    record_key,
)

log = logging.getLogger(__name__)
FORMAT_BASE = "pg_basebackup-tar"  # as include/backup/sources/postgres/wal.py
DONE_MARK = ".done"  # the prefetcher has finished: a file not there now never will be
EXPECTED = ".expected"  # the names the prefetcher will provide, one a line


@dataclass
class PushedWal:
    """The archived WAL files of ``source`` at ``target`` (names sorted: timeline, then position)."""

    target: Any
    source: str
    names: list[str] = field(default_factory=list)

    @property
    def segments(self) -> list[str]:
        return [n for n in self.names if SEGMENT.match(n)]

    def newest_time(self, keys: KeyLookup) -> datetime | None:
        """When the newest segment was pushed (its record authenticated), or None."""
        segments = self.segments
        if not segments:
            return None
        name = segments[-1]
        record = parse_record(self.target.read_bytes(record_key(self.source, name)), keys,
                              source=self.source, name=name)  # fmt: skip
        return datetime.fromisoformat(record.pushed_at.replace("Z", "+00:00")).astimezone(UTC)

    def replay_names(self, first_segment: str) -> list[str]:
        """The files a restore from a base starting at ``first_segment`` replays: every
        history file, then the segments of its timeline from ``first_segment`` on."""
        tli = first_segment[:8]
        history = [n for n in self.names if n.endswith(".history")]
        return history + [n for n in self.segments if n[:8] == tli and n >= first_segment]


def pushed_wal(target: Any, source: str) -> PushedWal:
    """What ``target`` holds of ``source``'s pushed WAL (an empty list when nothing)."""
    prefix = f"{source}/{WAL_DIR}/"
    names = sorted(
        info.key[len(prefix) : -len(RECORD_SUFFIX)]
        for info in target.list(prefix)
        if info.key.endswith(RECORD_SUFFIX)
    )
    return PushedWal(target, source, names)


def prune_pushed(target: Any, source: str, oldest_needed: str, *, dry_run: bool = False) -> list[str]:
    """Delete the pushed segments before ``oldest_needed`` (the first segment of the oldest
    base backup retention keeps); returns their names. The record goes first: a file
    without its record is not archived, whatever happens to the delete of the container."""
    gone = [n for n in pushed_wal(target, source).segments if n[8:] < oldest_needed[8:]]
    if not dry_run:
        for name in gone:
            target.delete(record_key(source, name))
            target.delete(object_key(source, name))
    return gone


def prune_before_oldest_base(
    target: Any, source: str, backups: list[Any], *, dry_run: bool = False
) -> list[str]:
    """Retention of the pushed WAL at ``target``: the segments older than the first one of
    the oldest physical base backup still held (``backups``: what retention kept) go.
    Without a base backup at this target nothing is deleted."""
    bases = [m for m in backups if m.backup_type == "FULL" and m.payload_format == FORMAT_BASE]
    first = min(bases, key=lambda m: m.started_at).position.get("wal_first") if bases else None
    if not first:
        return []
    gone = prune_pushed(target, source, str(first), dry_run=dry_run)
    if gone:
        log.info("pushed WAL of %s at target %s: %s %d segment(s) before %s (oldest base backup kept)",
                 source, target.name, "would delete" if dry_run else "deleted", len(gone), first)  # fmt: skip
    return gone


class WalPrefetcher:
    """Fetches ``names`` (verified, decrypted) into ``wal_dir`` with ``workers`` threads,
    in order, in the background; writes ``.expected`` first and ``.done`` at the end. A file
    that fails authentication is written as ``<name>.refused`` (the reason) instead:
    the restore_command then ends replay there, and :meth:`refused` says where."""

    def __init__(self, pushed: PushedWal, keys: KeyLookup, wal_dir: Path, names: Iterable[str],
                 workers: int = 8) -> None:  # fmt: skip
        self.pushed = pushed
        self.keys = keys
        self.wal_dir = wal_dir
        self.names = [n for n in names if not (wal_dir / n).exists()]
        self.workers = workers
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> WalPrefetcher:
        (self.wal_dir / EXPECTED).write_text("".join(f"{n}\n" for n in self.names))
        self._thread = threading.Thread(target=self._run, name="wal-prefetcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            prefetch_into(self.wal_dir, self.names, self._fetch, self.workers, strict=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the restore
            self.error = exc
        finally:
            (self.wal_dir / DONE_MARK).write_text("")

    def _fetch(self, name: str) -> bytes:
        if self._stop.is_set():  # replay is over: what is left is not needed
            raise NotArchived(name)
        return fetch_bytes([self.pushed.target], self.pushed.source, name, self.keys)[0]

    def stop(self, timeout: float = 60.0) -> None:
        """Fetch nothing more; wait for the fetches in flight (they write into wal_dir)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def refused(self) -> list[tuple[str, str]]:
        """(name, reason) of every file refused, oldest first."""
        found = sorted(self.wal_dir.glob("*.refused"))
        return [(p.name[: -len(".refused")], p.read_text(errors="replace").strip()) for p in found]


# --- RPO -----------------------------------------------------------------------------------


def newest_pushed(
    config: Any, source: str, keys: KeyLookup | None, targets: Mapping[str, Any] | None = None
) -> datetime | None:
    """When the newest WAL segment of ``source`` was pushed, at any target of its active
    log schedules (records authenticated; None without a key ring or pushed WAL).
    ``targets``: the targets already built, by name (else built from the config)."""
    if keys is None or getattr(config.sources.get(source), "method", None) != "physical":
        return None
    names = {t for s in config.schedules if s.source == source and s.active
             and str(getattr(s.type, "value", s.type)) == "TRANSACTION_LOG" for t in s.targets}  # fmt: skip
    found: list[datetime] = []
    built = dict(targets) if targets is not None else {}
    for name in sorted(names & set(config.targets)):
        try:
            target = built.get(name) or build_target(name, config.targets[name])
            newest = pushed_wal(target, source).newest_time(keys)
        except (TargetError, IntegrityError) as exc:
            log.warning("pushed WAL of %s at target %s cannot be read: %s", source, name, exc)
            continue
        if newest is not None:
            found.append(newest)
    return max(found, default=None)


def with_pushed_wal(
    config: Any, source: str, newest_good: Any, status: Any, now: datetime, keys: Any,
    targets: Mapping[str, Any] | None = None,
) -> Any:
    """The RPO of a wal-push source is the age of its newest pushed segment: when that is
    newer than ``newest_good`` (the newest verified backup), the returned copy carries the
    push time, and ``status`` (the DR page's figures) says so. Else ``newest_good``."""
    if newest_good is None:
        return None
    pushed = newest_pushed(config, source, keys, targets)
    if pushed is None or pushed <= newest_good.started_at.astimezone(UTC):
        return newest_good
    status.last_good_backup_at = pushed
    status.last_good_backup_age_hours = round((now - pushed).total_seconds() / 3600, 3)
    return newest_good.model_copy(update={"started_at": pushed})


def pushed_summary(target: Any, config: Any, source: str | None, keys: KeyLookup | None) -> list[str]:
    """One line per physical source with pushed WAL at ``target`` (the ``list`` verb)."""
    names = [source] if source else [n for n, c in config.sources.items()
                                     if getattr(c, "method", None) == "physical"]  # fmt: skip
    lines = []
    for name in names:
        wal = pushed_wal(target, name)
        if not wal.segments:
            continue
        newest = wal.newest_time(keys) if keys is not None else None
        when = f", newest pushed {newest.isoformat().replace('+00:00', 'Z')}" if newest else ""
        lines.append(f"pushed WAL of {name}: {len(wal.segments)} segment(s) "
                     f"{wal.segments[0]} .. {wal.segments[-1]}{when}")  # fmt: skip
    return lines
