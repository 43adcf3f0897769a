"""The WAL archive spool of a physical PostgreSQL source: the directory the server's
``archive_command`` copies segments into, read by base and log backups, pruned by log
backups (``prune_wal_archive``) only while no other dump reads it.

Every dump reading a spool holds a shared lock on its :data:`SPOOL_LOCK_NAME` file for as
long as it reads (:func:`spool_in_use`); pruning upgrades it to exclusive without waiting.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from include.backup.sources.postgres.wal import SEGMENT_RE

log = logging.getLogger(__name__)

SPOOL_LOCK_NAME = ".airflow-backup.lock"  # not a WAL file name: the archiver never touches it


class SpoolUse:
    """A shared lock on a WAL spool, held by every dump reading it (one per process,
    counted: POSIX locks belong to the process, and closing any descriptor of the file
    would drop it). Pruning upgrades it to exclusive without waiting: that succeeds only
    when no other process (on any host sharing the spool over NFS) holds it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd  # None: the spool is read-only here (and so cannot be pruned from here)
        self.users = 0
        self.pid = os.getpid()  # a forked child inherits the object but not the lock

    @contextmanager
    def exclusive(self) -> Iterator[bool]:
        """True (and exclusive until the block ends) when this process is the only user."""
        if self.fd is None:
            yield False
            return
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_SH)  # back to shared: still reading


_SPOOLS: dict[Path, SpoolUse] = {}


@contextmanager
def spool_in_use(spool: Path) -> Iterator[SpoolUse]:
    """Mark ``spool`` as read by this process until the block ends (re-entrant)."""
    key = spool.absolute()
    use = _SPOOLS.get(key)
    if use is None or use.pid != os.getpid():
        use = SpoolUse(key / SPOOL_LOCK_NAME, _open_shared(key / SPOOL_LOCK_NAME))
        _SPOOLS[key] = use
    use.users += 1
    try:
        yield use
    finally:
        use.users -= 1
        if use.users == 0:
            del _SPOOLS[key]
            if use.fd is not None:
                os.close(use.fd)


def _open_shared(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except FileNotFoundError:
        return None  # no spool: the dump itself says so, with the fix
    except PermissionError:
        log.info("WAL spool %s is read-only for this worker: it cannot be pruned from here", path.parent)
        return None
    # Blocks only while another process prunes (a few unlinks).
    fcntl.lockf(fd, fcntl.LOCK_SH)
    return fd


# --- pruning -------------------------------------------------------------------------------


def prune_spool(spool: Path, upto: str, source_name: str) -> None:
    """Delete the spool's segments up to ``upto`` (the parent's last one: already in a
    stored backup; never this run's WAL) — only when no other dump reads this spool.

    A base backup in flight still has to copy segments that a log backup published
    meanwhile may hold, and a log backup that chose an older parent still has to copy
    the segments after it: pruning under them would fail their dump. So pruning waits
    for a moment when this dump is alone; the next log backup prunes what this one
    left (the rule is cumulative)."""
    with spool_in_use(spool) as use, use.exclusive() as alone:
        if not alone:
            log.info(
                "not pruning the WAL spool %s of %s up to %s: another backup is reading it; "
                "a later log backup will", spool, source_name, upto,
            )  # fmt: skip
            return
        removed = 0
        for p in spool.iterdir():
            if SEGMENT_RE.match(p.name) and p.name[:8] == upto[:8] and p.name <= upto:
                p.unlink(missing_ok=True)
                removed += 1
        log.info("pruned %d WAL segments up to %s from the spool %s", removed, upto, spool)
