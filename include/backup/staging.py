"""The staging area: private directories and files, a full disk named, plaintext swept.

A backup's compressed dump is plaintext until the encrypt step has sealed it, so
everything under the staging root is created owner-only (directories 0700, files 0600)
with the mode set explicitly, whatever the process umask. The plaintext (``dump`` and
``dump.partial``) lives from the dump step's start to the end of the encrypt step, and is
removed on every failure path (docs/concurrency.md, "Plaintext in staging"):

- the dump step removes its staging when it fails; the encrypt step removes the dump as
  soon as the container is complete, and when it fails;
- the backup DAG's failure callback removes the plaintext of its run
  (:func:`remove_plaintext`);
- :func:`sweep_plaintext`, called by every dump and cleanup step of every schedule and by
  ``dr_monitor``, removes plaintext nobody has touched for ``plaintext_grace()`` (a run
  killed with its worker), never that of a run whose dump or encrypt is at work: those
  hold the run's lock (:func:`include.backup.catalog.inflight.run_lock`).

The whole staging directory of a failed or killed run (its encrypted payload, the in-flight
record that keeps its parent from retention) goes once nobody has touched it for
``STALE_STAGING_HOURS`` (24): :func:`remove_stale_staging`, from the cleanup step of any
schedule and from ``dr_monitor``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import time
from pathlib import Path

from include.backup import faults
from include.backup.catalog.inflight import try_run_lock
from include.backup.config.schema import BackupConfig
from include.backup.errors import BackupError
from include.backup.settings import plaintext_grace_s, staging_root, stale_staging_s

log = logging.getLogger(__name__)

DUMP_NAME = "dump"  # compressed source stream, before encryption
PLAINTEXT_NAMES = (DUMP_NAME, DUMP_NAME + ".partial")
DRAFT_NAME = "manifest.draft.json"  # the dump step's manifest, completed by the next steps
# Written into a run's staging by the backup failure callback: the run is over (dr_monitor
# does not take it for a slow one).
FAILED_MARKER = "run.failed.json"
DIR_MODE = 0o700
FILE_MODE = 0o600
# <schedule>-<UTC stamp>-<sha256(run id)[:6]>: what make_backup_id builds.
BACKUP_ID_RE = re.compile(r"(?P<schedule>.+)-(?P<stamp>\d{8}T\d{6}Z)-[0-9a-f]{6}")
_FULL = {errno.ENOSPC, errno.EDQUOT}


class StagingFull(BackupError):
    """The staging file system is full (or the user's quota is used up)."""


# --- private directories and files ----------------------------------------------------


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make ``path`` itself 0700.

    mkdir's mode is filtered by the umask, so the mode is set again with chmod. Parents
    keep the default mode: they may be shared system directories."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def staging_root_dir(root: Path) -> Path:
    """The staging root, created 0700 when missing. An existing root keeps its mode (it
    may be a volume prepared by the operator); every backup's directory in it is 0700."""
    if not root.exists():
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, DIR_MODE)
    return root


def backup_stage(root: Path, backup_id: str) -> Path:
    """A backup's staging directory, fresh and 0700 (the root created if missing)."""
    staging_root_dir(root)
    stage = root / backup_id
    stage.mkdir(mode=DIR_MODE)
    os.chmod(stage, DIR_MODE)
    return stage


def write_private(path: Path, data: bytes) -> None:
    """Write a small staging file atomically (temporary name, then rename), 0600."""
    tmp = path.with_name(path.name + ".tmp")
    with StagingFile(tmp) as f:
        f.write(data)
    os.replace(tmp, path)


class StagingFile(io.RawIOBase):
    """A new staging file, 0600 whatever the umask, written whole by every ``write``.

    A full disk (ENOSPC, or EDQUOT) raises :class:`StagingFull` naming the path, the free
    space and the bytes written so far (and needed, when the caller knows), and removes
    the partial file. The error is also kept in ``full`` so that a caller whose source
    wraps it in its own error can still report the real cause.

    ``fault``: a fault point (include/backup/faults.py) hit once the first bytes are
    written: where a test kills or pauses the step mid-write."""

    def __init__(self, path: Path, *, needed: int | None = None, fault: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.needed = needed
        self._fault = fault
        self.written = 0
        self.full: StagingFull | None = None
        self.free: int | None = None  # free bytes when the disk was found full
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(path, flags, FILE_MODE)
        try:
            os.fchmod(self._fd, FILE_MODE)  # a file left by an earlier attempt kept its mode
        except BaseException:
            os.close(self._fd)
            raise

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.full is not None:
            raise self.full
        mv = memoryview(b).cast("B")
        done = 0
        while done < len(mv):
            try:
                done += os.write(self._fd, mv[done:])
            except OSError as exc:
                self.written += done
                self._raise_if_full(exc)
                raise
        self.written += done
        if self._fault is not None and done:
            point, self._fault = self._fault, None
            faults.hit(point)
        return done

    def sync(self) -> None:
        """fsync: on some file systems (NFS, delayed allocation) a full disk shows here."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._raise_if_full(exc)
            raise

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()

    def _raise_if_full(self, exc: OSError) -> None:
        if exc.errno not in _FULL:
            return
        self.free = free_bytes(self.path)
        self.full = StagingFull(full_message(self.path, self.written, self.needed, free=self.free))
        self.close()
        self.path.unlink(missing_ok=True)  # a partial file is of no use to anyone
        raise self.full from exc


def as_staging_full(exc: BaseException, where: Path, *, expected: str | None = None) -> StagingFull | None:
    """``exc`` as a :class:`StagingFull` naming ``where`` (the file, or the directory being
    written), when it is a full disk that no StagingFile reported (a directory, a lock, a
    record created on a full file system); None for any other error."""
    if not isinstance(exc, OSError) or exc.errno not in _FULL:
        return None
    path = Path(exc.filename) if isinstance(exc.filename, str) else where
    return StagingFull(full_message(path, 0, None, expected=expected))


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return None


def full_message(
    path: Path, written: int, needed: int | None, *, expected: str | None = None, free: int | None = None
) -> str:
    """``expected``: what the step is expected to write, in words, when ``needed`` (a
    number of bytes) is not known (e.g. "the last backup of docs was 3.1 MiB"). ``free``:
    the free bytes when the disk was found full (default: now)."""
    free_now = free if free is not None else free_bytes(path)
    free_text = fmt_bytes(free_now) if free_now is not None else "an unknown amount"
    need = f"; this step needs about {fmt_bytes(needed)}" if needed is not None else ""
    if needed is None and expected:
        need = f"; {expected}"
    return (
        f"staging is full: writing {path} failed (no space left on its file system) after "
        f"{fmt_bytes(written)} written; {free_text} free there{need}. Free space on that volume, "
        "or point staging_dir (or $BACKUP_STAGING_DIR) at a larger one, then clear the "
        "failed task to run it again"
    )


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({n} bytes)"
        size /= 1024
    raise AssertionError("unreachable")


# --- plaintext: removal and the sweep -------------------------------------------------


def last_change(directory: Path) -> float:
    """The newest mtime of the directory and its entries; "now" when something in it
    changes while we look (that is a run at work, not an abandoned one)."""
    try:
        newest = directory.stat().st_mtime
        for entry in os.scandir(directory):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except FileNotFoundError:
        return time.time()
    return newest


def plaintext_in(stage: Path) -> list[Path]:
    return [stage / n for n in PLAINTEXT_NAMES if (stage / n).exists()]


def remove_plaintext(stage: Path, why: str) -> list[Path]:
    """Remove the plaintext in ``stage`` unless a dump or encrypt step is at work on it
    (it holds the run's lock); returns what was removed."""
    if not plaintext_in(stage):
        return []
    removed: list[Path] = []
    with try_run_lock(stage) as got:
        if not got:
            log.info("staging %s is in use by a running step: plaintext left to it", stage)
            return []
        before = stage.stat()
        for path in plaintext_in(stage):
            path.unlink(missing_ok=True)
            removed.append(path)
            log.warning("removed plaintext %s (%s)", path, why)
        # Unlinking changed the directory's mtime: put it back, so that removing the
        # plaintext does not make an abandoned run look at work (remove_stale_staging).
        os.utime(stage, ns=(before.st_atime_ns, before.st_mtime_ns))
    return removed


def sweep_plaintext(root: Path, *, grace_s: float, skip: str | None = None) -> list[Path]:
    """Remove the plaintext of every backup staged under ``root`` that nothing has touched
    for ``grace_s`` seconds and no step holds (a run whose worker died, or whose failure
    callback never ran). ``skip``: the caller's own backup id. Never raises for one
    staging directory: a sweep must not fail the step that runs it."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    except OSError as exc:
        log.warning("plaintext sweep: cannot list the staging root %s: %s", root, exc)
        return removed
    cutoff = time.time() - grace_s
    for entry in entries:
        if entry.name == skip or not BACKUP_ID_RE.fullmatch(entry.name):
            continue
        stage = Path(entry.path)
        try:
            if not entry.is_dir(follow_symlinks=False) or not plaintext_in(stage):
                continue
            if last_change(stage) >= cutoff:
                continue
            idle_h = (time.time() - last_change(stage)) / 3600
            removed += remove_plaintext(stage, f"untouched for {idle_h:.1f} h: its run is over")
        except OSError as exc:
            log.warning("plaintext sweep: cannot clean %s: %s", stage, exc)
    return removed


def sweep_configured_staging(config: BackupConfig) -> list[Path]:
    """What ``dr_monitor`` runs every 15 minutes, whether or not any backup runs, over the
    configured staging root: :func:`sweep_plaintext`, then :func:`remove_stale_staging` of
    every schedule's runs. Returns what went."""
    root = staging_root(config)
    removed = sweep_plaintext(root, grace_s=plaintext_grace_s())
    return removed + remove_stale_staging(root, None, stale_s=stale_staging_s())


def remove_stale_staging(
    root: Path, schedule_name: str | None, *, stale_s: float, known: set[str] | None = None
) -> list[Path]:
    """Remove the staging directories of failed or killed runs that nothing has touched for
    ``stale_s`` (STALE_STAGING_HOURS: 24): every schedule's with ``schedule_name`` None (what
    every cleanup step and ``dr_monitor`` do), else the schedule's own and, when ``known``
    (the config's schedule names) is given, those of schedules no longer in the config.

    Never one a step is at work on: every step touches its staging when it starts, the dump
    and encrypt steps write into it and hold the run's lock (skipped here while held). A
    failed run's staging stays that long for retries; clearing its task later re-runs the
    whole backup. The exact id pattern, so a schedule named ``pg`` never touches those of
    ``pg-hourly``."""
    cutoff = time.time() - stale_s
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = BACKUP_ID_RE.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        mine = schedule_name is None or (
            entry.name.startswith(schedule_name + "-") and match["schedule"] == schedule_name
        )
        gone = known is not None and match["schedule"] not in known
        stage = Path(entry.path)
        if (mine or gone) and last_change(stage) < cutoff and _remove_idle(stage, stale_s):
            removed.append(stage)
    return removed


def _remove_idle(stage: Path, stale_s: float) -> bool:
    """Remove ``stage`` unless a step holds its run lock; True when it went."""
    try:
        with try_run_lock(stage) as got:
            if not got:
                log.info("staging %s is old but a step holds it: left to it", stage)
                return False
            log.warning("removing the staging %s of a failed or killed run (untouched for %.0f h)",
                        stage, stale_s / 3600)  # fmt: skip
            shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:  # gone meanwhile, or unreadable: the next sweep tries again
        log.warning("stale staging %s not removed: %s", stage, exc)
        return False
    return True
