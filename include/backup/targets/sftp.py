"""The SFTP target, built on the SFTP provider's SFTPHook (paramiko underneath).

- Host, port, user, password or private key, and the server's host key come from the
  Airflow connection ``conn_id`` (type ``sftp``; extras ``private_key``, ``key_file``,
  ``host_key`` — recommended, it pins the server's key —, ``no_host_key_check``,
  ``conn_timeout``). The hook and its SSH session are built at first use; a session that
  dropped is reopened once, transparently, for operations that are safe to repeat.
- Objects are files under ``path`` on the server (absolute, or relative to the login
  directory). A put writes ``.<name>.tmp-<random>`` in the destination directory, checks
  its size, then renames it onto the final name with the posix-rename@openssh.com
  extension (atomic, replaces the old file). Temporary names are never listed; a put
  that fails removes its temporary file. On a server without that extension the old file
  is removed before a plain rename, which leaves a short window without the object.
- Reads seek, then fetch pipelined windows of ``read_window`` bytes (memory: one window).
- ``free_bytes`` asks the server (statvfs@openssh.com) and is None when it cannot tell.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import stat as stat_mod
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from include.backup.errors import ObjectNotFound, TargetError
from include.backup.targets import check_key, check_prefix
from include.backup.targets._remote import (
    IterReader,
    MiB,
    buffered,
    clamp_range,
    connection_secrets,
    empty_stream,
    load_connection,
    redact,
    short,
    sorted_infos,
    source_error,
    source_size,
)
from include.backup.targets.base import ObjectInfo
from include.backup.targets.local import TEMP_MARKER, is_temp_name, temp_name

log = logging.getLogger(__name__)
T = TypeVar("T")
_Infos = list[ObjectInfo]  # (a method below is named list)

COPY_BLOCK = 1 * MiB
DEFAULT_READ_WINDOW = 1 * MiB
DEFAULT_TIMEOUT = 60.0  # seconds without an answer on an open session


class SFTPTarget:
    """A :class:`~include.backup.targets.base.Target` in a directory on an SFTP server."""

    def __init__(
        self,
        name: str,
        conn_id: str,
        path: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_attempts: int = 1,
        read_window: int = DEFAULT_READ_WINDOW,
    ) -> None:
        self.name = name
        self.conn_id = conn_id
        stripped = path.rstrip("/")
        self.root = stripped if stripped else "/"
        self.timeout = timeout
        # Retrying the connection is the task's business (Airflow retries); the hook's own
        # default of 3 attempts 3-5 s apart would only delay the error.
        self.connect_attempts = connect_attempts
        self.read_window = read_window
        self._hook: Any = None
        self._sftp: Any = None
        self._secrets: list[str] = []
        self._where = f"connection '{conn_id}'"
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"SFTPTarget({self.name!r}, {self._where}, {self.root!r})"

    # --- the session -----------------------------------------------------------------

    def _connect(self, action: str, key: str) -> Any:
        from airflow.providers.sftp.hooks.sftp import SFTPHook

        with self._lock:
            if self._sftp is not None:
                return self._sftp
            conn = load_connection(self.name, self.conn_id, "sftp://user@host:22?private_key=...")
            self._secrets = connection_secrets(conn)
            self._where = f"{conn.host}:{conn.port or 22}"
            try:
                hook = SFTPHook(ssh_conn_id=self.conn_id, conn_retry_attempts=self.connect_attempts)
                sftp = hook.get_conn()
            except Exception as exc:  # noqa: BLE001 - translated below
                raise self.translate(exc, action, key, connecting=True) from None
            sftp.get_channel().settimeout(self.timeout)
            self._hook, self._sftp = hook, sftp
            return sftp

    def _drop(self) -> None:
        """Forget the session (after a connection error) so the next call opens a new one."""
        with self._lock:
            hook, self._hook, self._sftp = self._hook, None, None
        if hook is not None:
            for close in (hook.close_conn, lambda: hook.client and hook.client.close()):
                with contextlib.suppress(Exception):  # already broken
                    close()

    def close(self) -> None:
        self._drop()

    def _run(self, action: str, key: str, fn: Callable[[Any], T], *, repeatable: bool = True) -> T:
        """``fn(sftp)`` with errors translated; a dropped session is reopened and ``fn``
        retried once if it is safe to repeat."""
        fresh = self._sftp is None
        sftp = self._connect(action, key)
        try:
            return fn(sftp)
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated below
            if not (_is_connection_error(exc) or not _alive(sftp)):
                raise self.translate(exc, action, key) from exc
            self._drop()
            if fresh or not repeatable:
                raise self.translate(exc, action, key, connecting=not _alive(sftp)) from exc
            log.info("target '%s': SFTP session dropped (%s); reconnecting", self.name, type(exc).__name__)
        sftp = self._connect(action, key)
        try:
            return fn(sftp)
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated below
            dead = not _alive(sftp)
            if dead or _is_connection_error(exc):
                self._drop()
            raise self.translate(exc, action, key, connecting=dead) from exc

    # --- paths -----------------------------------------------------------------------

    def _path(self, key: str) -> str:
        check_key(self.name, key)
        if is_temp_name(key.rpartition("/")[2]):
            raise TargetError(
                f"target '{self.name}': invalid object key {key!r} (its name looks like a "
                f"temporary upload file, '.…{TEMP_MARKER}…'); choose another name"
            )
        return self._join(key)

    def _join(self, rel: str) -> str:
        if not rel:
            return self.root
        return f"/{rel}" if self.root == "/" else f"{self.root}/{rel}"

    def _makedirs(self, sftp: Any, directory: str) -> None:
        missing: list[str] = []
        probe = directory
        while probe and probe not in ("/", "."):
            try:
                if stat_mod.S_ISDIR(sftp.stat(probe).st_mode or 0):
                    break
                raise TargetError(
                    f"target '{self.name}': {probe} on {self._where} is a file, not a directory; "
                    "remove it or choose another path"
                )
            except FileNotFoundError:
                missing.append(probe)
                probe = probe.rpartition("/")[0]
        for d in reversed(missing):
            try:
                sftp.mkdir(d)
            except OSError:
                # Made meanwhile by another upload (fine), or really failed (the stat says).
                if not stat_mod.S_ISDIR(sftp.stat(d).st_mode or 0):
                    raise

    # --- writing ---------------------------------------------------------------------

    def put(self, key: str, src: Path) -> ObjectInfo:
        path = self._path(key)
        size = source_size(self.name, key, src)

        def upload(sftp: Any) -> None:
            try:
                fin = open(src, "rb")  # noqa: SIM115 - closed by the with below
            except OSError as exc:
                raise source_error(self.name, key, src, exc) from exc
            with fin:
                self._publish(sftp, key, path, size, lambda out: _copy(fin, out))

        # Not repeated on a dropped session: the source stream was consumed. The task's
        # retry starts the put again from the file.
        self._run("upload", key, upload, repeatable=False)
        return ObjectInfo(key=key, size=size)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        self._run(
            "upload", key, lambda sftp: self._publish(sftp, key, path, len(data), lambda out: out.write(data))
        )
        return ObjectInfo(key=key, size=len(data))

    def _publish(self, sftp: Any, key: str, path: str, size: int, write: Callable[[Any], object]) -> None:
        directory, _, base = path.rpartition("/")
        directory = directory or "/"
        tmp = f"{directory.rstrip('/')}/{temp_name(base)}"
        for attempt in range(3):
            self._makedirs(sftp, directory)
            try:
                out = sftp.open(tmp, "wb")
                break
            except FileNotFoundError:
                if attempt == 2:  # the directory keeps vanishing (a concurrent delete)
                    raise
        try:
            with out:
                out.set_pipelined(True)
                write(out)
            got = sftp.stat(tmp).st_size
            if got != size:
                raise TargetError(
                    f"target '{self.name}': uploading '{key}' to {self._where}:{tmp} stored {got} of "
                    f"{size} bytes; check free space on the server, then retry"
                )
            self._rename(sftp, tmp, path)
            tmp = ""
        finally:
            if tmp:
                with contextlib.suppress(Exception):  # best effort; the first error matters
                    sftp.remove(tmp)

    def _rename(self, sftp: Any, tmp: str, path: str) -> None:
        try:
            sftp.posix_rename(tmp, path)
            return
        except OSError as exc:
            if exc.errno is not None:
                raise  # a real error (permissions...), not a missing extension
        # No posix-rename extension: plain SFTP rename refuses to replace a file.
        with contextlib.suppress(FileNotFoundError):
            sftp.remove(path)
        sftp.rename(tmp, path)

    # --- reading ---------------------------------------------------------------------

    def _stat(self, sftp: Any, path: str) -> Any | None:
        try:
            st = sftp.stat(path)
        except FileNotFoundError:
            return None
        return st if stat_mod.S_ISREG(st.st_mode or 0) else None

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        st = self._run("look up", key, lambda sftp: self._stat(sftp, path))
        return None if st is None else ObjectInfo(key=key, size=int(st.st_size or 0))

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        if offset < 0 or (length is not None and length < 0):
            clamp_range(self.name, offset, length, 0)  # raises ValueError
        path = self._path(key)

        def start_read(sftp: Any) -> tuple[Any, int, int] | None:
            st = self._stat(sftp, path)
            if st is None:
                return None
            start, end = clamp_range(self.name, offset, length, int(st.st_size or 0))
            if start == end:
                return None, start, end
            return sftp.open(path, "rb"), start, end

        opened = self._run("read", key, start_read)
        if opened is None:
            raise self._not_found(key)
        f, start, end = opened
        if f is None:
            return empty_stream()

        return self._reader(f, key, start, end)

    def _reader(self, f: Any, key: str, start: int, end: int) -> BinaryIO:
        """A stream of ``[start, end)`` of the open remote file ``f``, fetched in pipelined
        windows of ``read_window`` bytes."""

        def blocks() -> Iterator[bytes]:
            pos = start
            while pos < end:
                n = min(self.read_window, end - pos)
                try:
                    data = b"".join(f.readv([(pos, n)]))
                except Exception as exc:  # noqa: BLE001 - translated
                    dead = not _alive(f.sftp)
                    if dead or _is_connection_error(exc):
                        self._drop()
                    raise self.translate(exc, "read", key, connecting=dead) from exc
                if not data:
                    return
                pos += len(data)
                yield data

        def short_read(got: int) -> TargetError:
            return TargetError(
                f"target '{self.name}': '{key}' on {self._where} ended after {got} of {end - start} "
                "bytes (changed while being read); retry"
            )

        return buffered(IterReader(blocks(), end - start, short_read, on_close=f.close))

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(self.name, prefix)
        start_dir = prefix.rpartition("/")[0]

        def walk_all(sftp: Any) -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            self._walk(sftp, self._join(start_dir), start_dir, prefix, found)
            return found

        return sorted_infos(self._run("list", prefix or "(everything)", walk_all))

    def _walk(self, sftp: Any, directory: str, rel: str, prefix: str, out: _Infos) -> None:
        try:
            entries = sftp.listdir_attr(directory)
        except FileNotFoundError:
            return  # nothing stored yet, or removed by a concurrent delete
        for entry in entries:
            key = f"{rel}/{entry.filename}" if rel else entry.filename
            mode = entry.st_mode or 0
            if stat_mod.S_ISDIR(mode):
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    self._walk(sftp, f"{directory.rstrip('/')}/{entry.filename}", key, prefix, out)
            elif stat_mod.S_ISREG(mode) and key.startswith(prefix) and not is_temp_name(entry.filename):
                out.append(ObjectInfo(key=key, size=int(entry.st_size or 0)))

    # --- deleting --------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)

        def remove(sftp: Any) -> None:
            try:
                sftp.remove(path)
            except FileNotFoundError:
                return
            except OSError:
                if self._stat(sftp, path) is None:
                    return  # a directory (a prefix, not an object), or gone meanwhile
                raise
            self._prune(sftp, path.rpartition("/")[0])

        self._run("delete", key, remove)

    def _prune(self, sftp: Any, directory: str) -> None:
        """Remove the now empty folders above a deleted object, up to (not including) the root."""
        root = self.root.rstrip("/")
        while directory and directory != root and directory.startswith(root + "/" if root else ""):
            try:
                sftp.rmdir(directory)
            except OSError:
                return  # not empty (or busy, or gone): leave it
            directory = directory.rpartition("/")[0]

    # --- space -----------------------------------------------------------------------

    def free_bytes(self) -> int | None:
        def statvfs(sftp: Any) -> int | None:
            from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

            probe = self.root
            while True:
                try:
                    kind, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", probe)
                except FileNotFoundError:
                    if probe in ("/", ".", "") or "/" not in probe.strip("/"):
                        return None
                    probe = probe.rstrip("/").rpartition("/")[0] or "/"
                    continue
                except OSError:
                    return None  # the server does not offer statvfs
                if kind != CMD_EXTENDED_REPLY:
                    return None
                fields = [msg.get_int64() for _ in range(11)]
                frsize, bavail = fields[1], fields[4]
                return int(frsize * bavail)

        return self._run("ask for free space at", self.root, statvfs)

    # --- errors ----------------------------------------------------------------------

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"target '{self.name}': object '{key}' not found ({self._where}:{self._join(key)})"
        )

    def translate(
        self, exc: BaseException, action: str, key: str, *, connecting: bool = False
    ) -> TargetError:
        import socket

        import paramiko

        conn = f"Airflow connection '{self.conn_id}'"
        head = f"target '{self.name}': cannot {action} '{key}' on {self._where}"
        if isinstance(exc, paramiko.BadHostKeyException):
            msg = (
                f"{head}: the server's host key does not match the one in {conn} (extra host_key); "
                "if the server was re-keyed on purpose, update host_key, otherwise treat it as an attack"
            )
        elif isinstance(exc, paramiko.AuthenticationException):
            msg = (
                f"{head}: the server refused the login ({type(exc).__name__}); fix the user, "
                f"password or private key in {conn}"
            )
        elif isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
            msg = (
                f"{head}: the server's host key is unknown; put it in {conn} (extra host_key, "
                "the line from `ssh-keyscan`), or set no_host_key_check for a test server"
            )
        elif (
            connecting
            or isinstance(exc, (socket.gaierror, ConnectionError, EOFError))
            or (isinstance(exc, paramiko.SSHException) and _is_connection_error(exc))
        ):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            msg = (
                f"target '{self.name}': cannot reach the SFTP server {self._where} to {action} '{key}' "
                f"({reason}); check that the server is up and reachable from this worker (host and "
                f"port in {conn}), then retry"
            )
        elif isinstance(exc, TimeoutError):
            msg = f"{head}: the server did not answer within {self.timeout:g} s; retry"
        elif isinstance(exc, PermissionError):
            msg = f"{head}: permission denied ({exc.strerror}); let the login user write under {self.root}"
        elif isinstance(exc, OSError):
            code = errno.errorcode.get(exc.errno or 0, "")
            msg = f"{head}: {exc.strerror or short(exc)}{f' ({code})' if code else ''}"
        else:
            msg = f"{head}: {type(exc).__name__}: {short(exc)}"
        return TargetError(redact(msg, self._secrets))


def _copy(src: BinaryIO, dst: Any) -> None:
    while block := src.read(COPY_BLOCK):
        dst.write(block)


def _alive(sftp: Any) -> bool:
    """Whether the SFTP session still has a working SSH transport under it."""
    try:
        channel = sftp.get_channel()
        transport = channel.get_transport()
        return bool(not channel.closed and transport is not None and transport.is_active())
    except Exception:  # noqa: BLE001 - a half-torn session is not alive
        return False


def _is_connection_error(exc: BaseException) -> bool:
    """True for errors of the SSH session itself (dropped, refused, timed out), as opposed
    to a remote file error (no such file, permission denied, failure)."""
    import socket

    import paramiko

    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(exc, (paramiko.SSHException, EOFError, socket.timeout, ConnectionError, socket.gaierror)):
        return True
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return True
    return isinstance(exc, OSError) and exc.errno in (
        errno.EPIPE,
        errno.ECONNRESET,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
    )
