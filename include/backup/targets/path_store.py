"""The base of the path-store targets (sftp, ftp): files under a directory on a server,
reached through one session (an SFTP session, an FTP control connection) opened at first
use and reopened once, transparently, when it drops during an operation that is safe to
repeat.

The base holds the shape both stores share: the session's life (connect, drop, retry
once), keys mapped onto paths under the root, a put published through a temporary name
(``.<name>.tmp-<random>``, never listed) whose size is checked before the rename, stat,
listing by walking directories, delete with the pruning of emptied folders, and the
messages both build. Each store declares its connection example, secret fields, labels,
default port and capabilities, and provides the primitives: open a session, tell a
connection error, send / size / replace / remove a file, list / remove a directory,
translate an error, and ``open`` (reads differ too much to share).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from include.backup.errors import ObjectNotFound, TargetError
from include.backup.progress import open_counted
from include.backup.targets._remote import RemoteTarget, short, sorted_infos, source_error, source_size
from include.backup.targets.base import (  # the temporary upload names
    ObjectInfo,
    PartialUpload,
    check_key,
    check_not_temp,
    check_prefix,
    check_temp_key,
    is_temp_name,
    temp_name,
)
from include.backup.targets.streams import clamp_range

log = logging.getLogger(__name__)
S = TypeVar("S")  # the session: paramiko's SFTPClient, ftplib.FTP
T = TypeVar("T")
Entries = list[tuple[str, bool, int]]  # (name, is a directory, size)
_Infos = list[ObjectInfo]  # (a method below is named list)
_Partials = list[PartialUpload]


class PathStoreTarget(RemoteTarget, Generic[S]):
    """A :class:`~include.backup.targets.base.Target` in a directory on a file server."""

    server_label = ""  # "SFTP", as in "cannot reach the SFTP server"
    session_label = ""  # "SFTP session", as in "SFTP session dropped; reconnecting"
    default_port = 0

    def __init__(self, name: str, conn_id: str, path: str, *, timeout: float) -> None:
        super().__init__(name, conn_id)
        stripped = path.rstrip("/")
        self.root = stripped if stripped else "/"
        self.timeout = timeout
        self._session: S | None = None
        self._closer: Callable[[], None] | None = None
        self._where = f"connection '{conn_id}'"
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self._where}, {self.root!r})"

    # --- what each store provides ----------------------------------------------------

    @abstractmethod
    def _open_session(self, action: str, key: str) -> tuple[S, Callable[[], None]]:
        """A new session, and how to close it when it breaks."""

    @abstractmethod
    def _is_connection_error(self, exc: BaseException) -> bool:
        """True for errors of the session itself, as opposed to a remote file error."""

    def _dead(self, session: S) -> bool:
        """Whether ``session`` is known to be broken (whatever the error said)."""
        return False

    def _check_name(self, key: str) -> None:
        """Refuse a key the store cannot carry (on top of the common key rules)."""

    @abstractmethod
    def _send_temp(self, session: S, directory: str, tmp: str, src: BinaryIO) -> None:
        """Write ``src`` to the temporary file ``tmp``, making ``directory`` as needed."""

    @abstractmethod
    def _file_size(self, session: S, path: str) -> int | None:
        """Size of the regular file at ``path``, None if there is none (or a directory)."""

    @abstractmethod
    def _replace(self, session: S, tmp: str, path: str) -> None:
        """Rename ``tmp`` onto ``path``, replacing an existing file."""

    @abstractmethod
    def _remove_file(self, session: S, path: str) -> None: ...

    @abstractmethod
    def _delete_file(self, session: S, path: str) -> bool:
        """Remove the file at ``path``: False when there was none (or it is a directory)."""

    @abstractmethod
    def _entries(self, session: S, directory: str) -> Entries:
        """``(name, is_directory, size)`` of the directories and regular files in
        ``directory`` ([] if it is missing)."""

    @abstractmethod
    def _rmdir(self, session: S, directory: str) -> bool:
        """Remove the directory if it is empty: False when it stays."""

    def _modified(self, session: S, path: str) -> datetime | None:
        """When the file at ``path`` was last written (UTC), None when the server cannot
        tell (the orphan sweep then goes by the backup id's time)."""
        return None

    @abstractmethod
    def translate(
        self, exc: BaseException, action: str, key: str, *, connecting: bool = False
    ) -> TargetError:
        """A TargetError for ``exc`` raised while trying to ``action`` ``key``."""

    # --- the session -----------------------------------------------------------------

    def _load_server(self) -> Any:
        """The Airflow connection; from now on messages name its host and port."""
        conn = self._load_connection()
        self._where = f"{conn.host}:{conn.port or self.default_port}"
        return conn

    def _connect(self, action: str, key: str) -> S:
        with self._lock:
            if self._session is None:
                self._session, self._closer = self._open_session(action, key)
            return self._session

    def _drop(self) -> None:
        """Forget the session (after a connection error) so the next call opens a new one."""
        with self._lock:
            closer, self._session, self._closer = self._closer, None, None
        if closer is not None:
            with contextlib.suppress(Exception):  # already broken
                closer()

    def close(self) -> None:
        self._drop()

    def _run(self, action: str, key: str, fn: Callable[[S], T], *, repeatable: bool = True) -> T:
        """``fn(session)`` with errors translated; a dropped session is reopened and ``fn``
        retried once if it is safe to repeat."""
        fresh = self._session is None
        for retry in (False, True):
            session = self._connect(action, key)
            try:
                return fn(session)
            except TargetError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated below
                dead = self._dead(session)
                if not (dead or self._is_connection_error(exc)):
                    raise self.translate(exc, action, key) from exc
                self._drop()
                if retry:
                    raise self.translate(exc, action, key, connecting=dead) from exc
                if fresh or not repeatable:
                    # Asked after the drop: a closed session reports as a failed connection.
                    raise self.translate(exc, action, key, connecting=self._dead(session)) from exc
                what = self.session_label
                log.info("target '%s': %s dropped (%s); reconnecting", self.name, what, type(exc).__name__)
        raise AssertionError("unreachable: the second attempt returns or raises")

    # --- paths -----------------------------------------------------------------------

    def _path(self, key: str) -> str:
        check_key(self.name, key)
        self._check_name(key)
        check_not_temp(self.name, key)
        return self._join(key)

    def _join(self, rel: str) -> str:
        if not rel:
            return self.root
        return f"/{rel}" if self.root == "/" else f"{self.root}/{rel}"

    # --- writing ---------------------------------------------------------------------

    def put(self, key: str, src: Path) -> ObjectInfo:
        path = self._path(key)
        size = source_size(self.name, key, src)

        def upload(session: S) -> None:
            try:
                fin = open_counted(src)  # counted by an upload's progress; closed below
            except OSError as exc:
                raise source_error(self.name, key, src, exc) from exc
            with fin:
                self._publish(session, key, path, size, fin)

        # Not repeated on a dropped session: the source stream was consumed. The task's
        # retry starts the put again from the file.
        self._run("upload", key, upload, repeatable=False)
        return ObjectInfo(key=key, size=size)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        self._run("upload", key, lambda s: self._publish(s, key, path, len(data), io.BytesIO(data)))
        return ObjectInfo(key=key, size=len(data))

    def _publish(self, session: S, key: str, path: str, size: int, src: BinaryIO) -> None:
        """Write ``src`` to a temporary name beside ``path``, check its size, rename it
        onto ``path``; whatever fails, the temporary file is removed."""
        directory, _, base = path.rpartition("/")
        tmp = f"{directory}/{temp_name(base)}"
        try:
            self._send_temp(session, directory, tmp, src)
            got = self._file_size(session, tmp)
            if got != size:
                raise TargetError(
                    f"target '{self.name}': uploading '{key}' to {self._where}:{tmp} stored {got} of "
                    f"{size} bytes; check free space on the server, then retry"
                )
            self._replace(session, tmp, path)
            tmp = ""
        finally:
            if tmp:
                with contextlib.suppress(Exception):  # best effort; the first error matters
                    self._remove_file(session, tmp)

    # --- reading ---------------------------------------------------------------------

    @abstractmethod
    def _open_path(self, key: str, path: str, offset: int, length: int | None) -> BinaryIO:
        """:meth:`open` once the range and the key are checked."""

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        if offset < 0 or (length is not None and length < 0):
            clamp_range(self.name, offset, length, 0)  # raises ValueError
        return self._open_path(key, self._path(key), offset, length)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        size = self._run("look up", key, lambda s: self._file_size(s, path))
        return None if size is None else ObjectInfo(key=key, size=size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(self.name, prefix)
        start_dir = prefix.rpartition("/")[0]

        def walk_all(session: S) -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            self._walk(session, self._join(start_dir), start_dir, prefix, found)
            return found

        return sorted_infos(self._run("list", prefix or "(everything)", walk_all))

    def _walk(
        self, session: S, directory: str, rel: str, prefix: str, out: _Infos, *, temps: bool = False
    ) -> None:
        """Append the objects under ``directory`` whose key starts with ``prefix`` (with
        ``temps``, the temporary upload files instead)."""
        for name, is_dir, size in self._entries(session, directory):
            key = f"{rel}/{name}" if rel else name
            if is_dir:
                # Descend only where keys can still match: 'a/' under prefix 'a/b' or 'a'.
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    self._walk(session, f"{directory.rstrip('/')}/{name}", key, prefix, out, temps=temps)
            elif key.startswith(prefix) and is_temp_name(name) == temps:
                out.append(ObjectInfo(key=key, size=size))

    # --- leftovers of killed puts ----------------------------------------------------

    def list_partial_uploads(self, prefix: str = "") -> _Partials:
        """The temporary files of puts that never renamed them (a killed task, a dropped
        session), with their last write time where the server tells it."""
        check_prefix(self.name, prefix)
        start_dir = prefix.rpartition("/")[0]

        def walk_temps(session: S) -> _Partials:
            found: _Infos = []
            self._walk(session, self._join(start_dir), start_dir, prefix, found, temps=True)
            return [
                PartialUpload(i.key, self._modified(session, self._join(i.key)), i.size)
                for i in sorted_infos(found)
            ]

        return self._run("list", prefix or "(everything)", walk_temps)

    def remove_partial_upload(self, upload: PartialUpload) -> None:
        path = self._join(check_temp_key(self.name, upload.key))

        def remove(session: S) -> None:
            if self._delete_file(session, path):
                self._prune(session, path.rpartition("/")[0])

        self._run("remove the temporary upload file", upload.key, remove)

    # --- deleting --------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)

        def remove(session: S) -> None:
            if self._delete_file(session, path):
                self._prune(session, path.rpartition("/")[0])

        self._run("delete", key, remove)

    def _prune(self, session: S, directory: str) -> None:
        """Remove the now empty folders above a deleted object, up to (not including) the root."""
        root = self.root.rstrip("/")
        while directory and directory != root and directory.startswith(root + "/" if root else ""):
            if not self._rmdir(session, directory):
                return  # not empty (or busy, or gone): leave it
            directory = directory.rpartition("/")[0]

    def free_bytes(self) -> int | None:
        return None

    # --- errors ----------------------------------------------------------------------

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"target '{self.name}': object '{key}' not found ({self._where}:{self._join(key)})"
        )

    def _head(self, action: str, key: str) -> str:
        return f"target '{self.name}': cannot {action} '{key}' on {self._where}"

    def _unreachable(self, exc: BaseException, action: str, key: str) -> str:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return (
            f"target '{self.name}': cannot reach the {self.server_label} server {self._where} to "
            f"{action} '{key}' ({reason}); check that the server is up and reachable from this "
            f"worker (host and port in {self._conn_ref()}), then retry"
        )

    def _timed_out(self, head: str) -> str:
        return f"{head}: the server did not answer within {self.timeout:g} s; retry"

    @staticmethod
    def _other(head: str, exc: BaseException) -> str:
        if isinstance(exc, OSError):
            code = errno.errorcode.get(exc.errno or 0, "")
            return f"{head}: {exc.strerror or short(exc)}{f' ({code})' if code else ''}"
        return f"{head}: {type(exc).__name__}: {short(exc)}"
