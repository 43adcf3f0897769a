"""Backups in flight, and the per-source lock that orders parent choice against retention.

A backup run is "in flight" from its dump until its cleanup: its backup is not (yet) at
every target, so nothing at the targets protects what it depends on. The dump step
records it in its staging directory; retention reads those records and keeps what they
name. Layout in the staging root (a volume every worker shares)::

    <staging>/<backup_id>/inflight.json   one per run in flight (removed with its staging)
    <staging>/<backup_id>/run.lock        held while the run's dump or encrypt step works
    <staging>/.locks/<source>.lock        the per-source lock below

Choosing a parent and writing the record happen under the source's lock, and so does
retention (plan and deletes): retention therefore either sees the record, or runs wholly
before the parent is chosen and the dump then only sees what retention left.

The lock is an ``fcntl`` (POSIX record) lock: the kernel releases it when its process
dies, so a killed worker never leaves a stale lock. It works across hosts on NFSv4 (and
NFSv3 with lockd), which is what a staging volume shared by Celery workers usually is.
POSIX locks belong to a process, not a file descriptor, so the lock is not re-entrant
within one process: nesting it is refused.

The run lock (:func:`run_lock`) is the same kind of lock on a file in the run's own
staging. The dump and encrypt steps, the only ones that handle plaintext, hold it while
they work; the plaintext sweep (include/backup/staging.py) removes nothing from a staging
whose run lock is held, so a long dump that has not written for hours is never mistaken
for an abandoned one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from include.backup.errors import BackupError

log = logging.getLogger(__name__)

INFLIGHT_NAME = "inflight.json"
RUN_LOCK_NAME = "run.lock"
LOCK_DIR = ".locks"
LOCK_WAIT_S = 1800.0  # longer than any retention pass or parent look-up should take
POLL_S = 0.1
_BUSY = {errno.EACCES, errno.EAGAIN}
_held: set[tuple[int, Path]] = set()  # (pid, lock) held here: a forked child holds none


@dataclass(frozen=True)
class InFlight:
    """A run whose backup is not yet at every target, and what it depends on."""

    backup_id: str
    schedule: str
    source: str
    parent_id: str | None = None

    def protects(self) -> set[str]:
        """The backups retention must keep while this run is in flight: its own (between
        upload and verify it is at the target but its run is not done) and its parent."""
        return {self.backup_id} | ({self.parent_id} if self.parent_id else set())


def write_inflight(stage: Path, record: InFlight) -> None:
    path = stage / INFLIGHT_NAME
    tmp = path.with_name(path.name + ".tmp")
    # 0600 like every staging file (include/backup/staging.py), whatever the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with open(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        f.write(json.dumps(asdict(record), sort_keys=True).encode())
    os.replace(tmp, path)


def read_inflight(root: Path, source: str) -> list[InFlight]:
    """Every run of ``source`` in flight under the staging root ``root``."""
    found: list[InFlight] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path) / INFLIGHT_NAME
        try:
            data = json.loads(path.read_text())
            record = InFlight(**data)
        except FileNotFoundError:
            continue  # no record (yet), or the run's cleanup just removed it
        except (ValueError, TypeError) as exc:
            # Written atomically, so this is damage: say so rather than guess what it protects.
            raise BackupError(
                f"in-flight record {path} is unreadable ({exc}); delete the staging "
                f"directory {entry.path} if its run is over, then retry"
            ) from exc
        if record.source == source:
            found.append(record)
    return found


@contextmanager
def source_lock(root: Path, source: str, *, purpose: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the exclusive lock of ``source`` (waiting up to ``wait_s`` seconds for it)."""
    lock_dir = root / LOCK_DIR
    path = lock_dir / f"{source}.lock"
    if (os.getpid(), path) in _held:
        raise RuntimeError(f"lock {path} is already held by this process (it is not re-entrant)")
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except OSError as exc:
        raise BackupError(
            f"cannot create the lock file {path}: {exc.strerror or exc}; the staging "
            "directory (staging_dir or $BACKUP_STAGING_DIR) must be writable by every worker"
        ) from exc
    try:
        _acquire(fd, path, purpose, wait_s)
        mine = (os.getpid(), path)
        _held.add(mine)
        try:
            yield
        finally:
            _held.discard(mine)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def run_lock(stage: Path, *, purpose: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the run lock of the backup staged in ``stage`` (waiting up to ``wait_s``:
    only a plaintext sweep or a failure callback holds it briefly besides the steps)."""
    path = stage / RUN_LOCK_NAME
    if (os.getpid(), path) in _held:
        raise RuntimeError(f"lock {path} is already held by this process (it is not re-entrant)")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        _acquire(fd, path, purpose, wait_s)
        mine = (os.getpid(), path)
        _held.add(mine)
        try:
            yield
        finally:
            _held.discard(mine)
    finally:
        os.close(fd)


@contextmanager
def try_run_lock(stage: Path) -> Iterator[bool]:
    """The run lock of ``stage`` without waiting: yields False when a step holds it (in
    this process too: opening and closing the file here would release a POSIX lock this
    process holds), or when the staging is gone."""
    path = stage / RUN_LOCK_NAME
    if (os.getpid(), path) in _held:
        yield False
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
            yield False
            return
        mine = (os.getpid(), path)
        _held.add(mine)
        try:
            yield True
        finally:
            _held.discard(mine)
    finally:
        with suppress(OSError):
            os.close(fd)


def _acquire(fd: int, path: Path, purpose: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise BackupError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        if not waiting:
            log.info("%s: waiting for lock %s, held by %s", purpose, path, lock_holder(path))
            waiting = True
        if time.monotonic() > deadline:
            raise BackupError(
                f"{purpose}: lock {path} is still held after {wait_s:.0f}s by "
                f"{lock_holder(path)}; that task is stuck or very slow — look at it, then retry"
            )
        time.sleep(POLL_S)
    holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
                         "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)


def lock_holder(path: Path) -> str:
    """Who holds the lock, as the holder wrote it (for messages)."""
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process (not yet identified)"
