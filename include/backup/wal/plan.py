"""Point-in-time recovery of a source whose WAL is pushed (wal-push): which target, which
base backup, and how far the WAL reaches.

The restore takes the newest physical base backup (FULL, ``pg_basebackup-tar``) whose
consistent point is at or before the point in time, and replays the pushed WAL after it
(fetched, verified and decrypted while replay runs: :class:`~include.backup.wal.archive.WalPrefetcher`).
The window ends when the newest segment was pushed. Without a point in time, the restore
replays every pushed segment: recovery to the latest point.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.backup.catalog.chains import end_time, format_time
from include.backup.catalog.index import read_chain, summaries
from include.backup.catalog.manifest import Manifest
from include.backup.errors import RestoreRefused, TargetError
from include.backup.targets import build_target
from include.backup.wal.archive import PushedWal, pushed_wal

FORMAT_BASE = "pg_basebackup-tar"  # as include/backup/sources/postgres/wal.py


@dataclass
class PushedRestore:
    """What restore_chain needs to replay pushed WAL."""

    wal: PushedWal
    keys: Any
    window_end: datetime  # when the newest segment was pushed


def pushed_plan(
    config: Any, source_name: str, target_name: str | None, until: datetime | None, keys: Any
) -> tuple[Any, list[Manifest], PushedRestore] | None:
    """(target, [base], PushedRestore) from the first target (the named one, else config
    order) holding pushed WAL of ``source_name``; None when no target holds any (the
    restore then uses the backups' own WAL, as before)."""
    source = config.sources.get(source_name)
    if getattr(source, "method", None) != "physical" or keys is None:
        return None
    names = [target_name] if target_name else list(config.targets)
    for name in names:
        if name not in config.targets:
            continue
        target = build_target(name, config.targets[name])
        try:
            wal = pushed_wal(target, source_name)
        except TargetError:
            continue
        newest = wal.newest_time(keys)
        if newest is None:
            continue
        bases = [m for m in summaries(target, source_name, keys)
                 if m.backup_type == "FULL" and m.payload_format == FORMAT_BASE]  # fmt: skip
        if until is not None:
            if until > newest:
                raise RestoreRefused(
                    f"point in time {format_time(until)} is after the newest WAL of {source_name} "
                    f"pushed to target {name!r} ({format_time(newest)}): that is the latest "
                    "point this restore can reach"
                )
            bases = [m for m in bases if end_time(m) <= until]
        if not bases:
            raise RestoreRefused(
                f"target {name!r} holds pushed WAL of {source_name} but no physical base backup "
                f"{'ending before ' + format_time(until) if until else ''}to replay it on: run the "
                "source's FULL schedule (method: physical)"
            )
        chain = read_chain(target, source_name, keys, bases[-1].backup_id)
        return target, chain, PushedRestore(wal, keys, newest)
    return None
