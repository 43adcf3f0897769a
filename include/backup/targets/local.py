"""The local-disk target: objects are files under a root directory.

Durability and atomicity follow the usual recipe (restic's local backend, SQLite, git):
write a temporary file in the destination directory, fsync it, ``os.replace`` it onto the
final name, fsync the directory. A reader therefore sees the old object, the whole new
object, or nothing — never a prefix — and after a crash or power loss the published name
points at complete data. Temporary files are named ``.<name>.tmp-<random>``; they are never
listed, and a crash leaves at most such a file behind.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from include.backup import faults
from include.backup.errors import ObjectNotFound, TargetError
from include.backup.progress import open_counted
from include.backup.targets.base import (
    Capabilities,
    ObjectInfo,
    PartialUpload,
    check_file_key,
    check_prefix,
    check_temp_key,
    is_temp_name,
    temp_name,
)
from include.backup.targets.streams import FileSlice, buffered

COPY_BLOCK = 1 << 20  # 1 MiB: big enough for full-speed sequential I/O, small in memory
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_Infos = list[ObjectInfo]  # (a method below is named list)
_Partials = list[PartialUpload]


class LocalTarget:
    """A :class:`~include.backup.targets.base.Target` on a local (or mounted) file system."""

    capabilities = Capabilities(free_space=True, atomic_replace=True, partial_uploads=True)

    def __init__(self, name: str, root: str | Path) -> None:
        self.name = name
        # No I/O here: targets are built when a task runs, and the root may be a mount
        # that only exists on the workers. It is created by the first put.
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalTarget({self.name!r}, {str(self.root)!r})"

    # --- writing ---------------------------------------------------------------------

    def put(self, key: str, src: Path) -> ObjectInfo:
        def copy(out: BinaryIO) -> None:
            try:
                fin = open_counted(src)  # counted by an upload's progress; closed below
            except OSError as exc:
                raise TargetError(
                    f"target '{self.name}': cannot read the file to upload {src}: "
                    f"{exc.strerror or exc}; check that the staging file still exists"
                ) from exc
            with fin:
                _copy_stream(fin, out)
            faults.hit("upload.mid-write")  # a test hook: the temp file written, not published

        return self._publish(key, copy)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._publish(key, lambda out: out.write(data))

    def _publish(self, key: str, write: Callable[[BinaryIO], object]) -> ObjectInfo:
        """Write through ``write`` into a temp file, then atomically rename it to ``key``."""
        dest = self._path(key)
        tmp: Path | None = None
        try:
            tmp, out = self._create_temp(dest)
            with out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            os.replace(tmp, dest)
            tmp = None
            _fsync_dir(dest.parent)
            # The size written, not a stat of ``dest``: a concurrent delete may already have
            # removed it (a catalog compaction folds a segment the moment it is published).
            return ObjectInfo(key=key, size=size)
        except OSError as exc:
            raise self._write_error(key, dest, exc) from exc
        finally:
            # Whatever went wrong (disk full, source vanished, KeyboardInterrupt), leave
            # no partial file behind.
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _create_temp(self, dest: Path) -> tuple[Path, BinaryIO]:
        # A concurrent delete() may remove the freshly made, still empty directory
        # between mkdir and open; making it again is enough (a few tries, not forever).
        for attempt in range(3):
            _makedirs(dest.parent)
            tmp = dest.parent / temp_name(dest.name)
            try:
                return tmp, open(tmp, "xb")
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _write_error(self, key: str, dest: Path, exc: OSError) -> TargetError:
        if exc.errno in _DISK_FULL:
            free = self.free_bytes()
            return TargetError(
                f"target '{self.name}': no space left writing '{key}' at {dest} "
                f"({free if free is not None else 'unknown'} bytes free); free space under "
                f"{self.root} or move the target to a larger volume, then retry"
            )
        return TargetError(
            f"target '{self.name}': cannot write '{key}' at {dest}: {exc.strerror or exc}; "
            f"check that {self.root} exists and is writable by the worker's user"
        )

    # --- reading ---------------------------------------------------------------------

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(
                f"target '{self.name}': offset and length must be >= 0, got {offset}, {length}"
            )
        path = self._path(key)
        try:  # the stream is handed to the caller, who closes it
            if length is not None:
                return buffered(FileSlice(path, offset, length), COPY_BLOCK)
            f = open(path, "rb")  # noqa: SIM115
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise self._not_found(key) from exc
        except OSError as exc:
            raise TargetError(
                f"target '{self.name}': cannot open '{key}' at {path}: {exc.strerror or exc}"
            ) from exc
        if offset:
            f.seek(offset)  # past the end is fine: reads then return b""
        return f

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise TargetError(
                f"target '{self.name}': cannot stat '{key}' at {path}: {exc.strerror or exc}"
            ) from exc
        if not path.is_file():
            return None  # a directory is a key prefix, not an object
        return ObjectInfo(key=key, size=st.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._listing(prefix, temps=False))

    def _listing(self, prefix: str, *, temps: bool) -> _Infos:
        """The objects (or, with ``temps``, the temporary upload files) under ``prefix``."""
        check_prefix(self.name, prefix)
        # Walk only the directory the prefix pins down ('a/b/c' -> root/a/b), then filter
        # by string prefix like an object store does.
        start_dir = prefix.rpartition("/")[0]
        start = self.root / start_dir if start_dir else self.root
        found: _Infos = []
        try:
            _walk(start, start_dir, prefix, found, temps=temps)
        except OSError as exc:
            raise TargetError(
                f"target '{self.name}': cannot list {start}: {exc.strerror or exc}; "
                f"check that {self.root} is mounted and readable"
            ) from exc
        # Sorted and collected up front: deterministic order, and callers may delete while
        # iterating without disturbing the walk.
        found.sort(key=lambda o: o.key)
        return found

    # --- leftovers of killed puts ----------------------------------------------------

    def list_partial_uploads(self, prefix: str = "") -> _Partials:
        """The temporary files of puts that never renamed them (a killed upload), with
        their last write time: a put in progress keeps writing, so it stays young."""
        found: _Partials = []
        for info in self._listing(prefix, temps=True):
            try:
                mtime = (self.root / info.key).stat().st_mtime
            except FileNotFoundError:
                continue  # published or removed while we listed
            found.append(PartialUpload(info.key, datetime.fromtimestamp(mtime, UTC), info.size))
        return found

    def remove_partial_upload(self, upload: PartialUpload) -> None:
        path = self.root / check_temp_key(self.name, upload.key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise TargetError(
                f"target '{self.name}': cannot remove the temporary upload file {path}: "
                f"{exc.strerror or exc}; check the permissions of the backup directory"
            ) from exc
        self._prune_empty_dirs(path.parent)

    # --- deleting --------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return  # a prefix, not an object: nothing to delete
        except OSError as exc:
            raise TargetError(
                f"target '{self.name}': cannot delete '{key}' at {path}: {exc.strerror or exc}; "
                "check the permissions of the backup directory"
            ) from exc
        self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, directory: Path) -> None:
        # Deleted backups should not leave a forest of empty folders; stop at the first
        # directory that still holds something (or at the root, which is never removed).
        root = self.root.absolute()
        directory = directory.absolute()
        while directory != root and root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or already gone, or busy): leave it
            directory = directory.parent

    # --- space -----------------------------------------------------------------------

    def free_bytes(self) -> int | None:
        # The root may not exist before the first backup: ask about the nearest existing
        # ancestor, which is on the file system the root will be created on.
        probe = self.root.absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            return shutil.disk_usage(probe).free
        except OSError:
            return None

    # --- helpers ---------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / check_file_key(self.name, key)

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"target '{self.name}': object '{key}' not found")


def _walk(directory: Path, rel: str, prefix: str, out: list[ObjectInfo], *, temps: bool = False) -> None:
    """Append every complete object under ``directory`` whose key starts with ``prefix``
    (with ``temps``, every temporary upload file instead)."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing stored yet, or removed by a concurrent delete
    for entry in entries:
        key = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir(follow_symlinks=False):
            # Descend only where keys can still match: 'a/' under prefix 'a/b' or 'a'.
            if key.startswith(prefix) or prefix.startswith(key + "/"):
                _walk(Path(entry.path), key, prefix, out, temps=temps)
            continue
        if not key.startswith(prefix) or is_temp_name(entry.name) != temps:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue  # sockets, symlinks...: not objects we wrote
            size = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue  # deleted while we listed
        out.append(ObjectInfo(key=key, size=size))


def _copy_stream(src: BinaryIO, dst: BinaryIO) -> None:
    shutil.copyfileobj(src, dst, COPY_BLOCK)


def _makedirs(directory: Path) -> None:
    """``mkdir -p`` that also fsyncs the parent of each directory it creates, so that the
    new directory entries survive a crash along with the file published inside them."""
    missing: list[Path] = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        if probe == probe.parent:
            break
        probe = probe.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        _fsync_dir(d.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # platforms (or file systems) that cannot open a directory: best effort
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (and Windows) refuse fsync on a directory; the rename is
        # still atomic, only its durability across power loss is up to the file system.
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
