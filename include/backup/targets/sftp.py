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
import socket
import stat as stat_mod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

from include.backup.errors import TargetError
from include.backup.targets._remote import MiB
from include.backup.targets.base import Capabilities
from include.backup.targets.path_store import Entries, PathStoreTarget
from include.backup.targets.streams import IterReader, buffered, clamp_range, empty_stream

COPY_BLOCK = 1 * MiB
DEFAULT_READ_WINDOW = 1 * MiB
DEFAULT_TIMEOUT = 60.0  # seconds without an answer on an open session


class SFTPTarget(PathStoreTarget[Any]):
    """A :class:`~include.backup.targets.base.Target` in a directory on an SFTP server."""

    connection_example = "sftp://user@host:22?private_key=..."
    secret_fields = ("password", "extra.private_key", "extra.private_key_passphrase")
    # free_bytes asks statvfs@openssh.com; servers without posix-rename get a plain rename.
    capabilities = Capabilities(free_space=True, atomic_replace=False, partial_uploads=True)
    server_label = "SFTP"
    session_label = "SFTP session"
    default_port = 22

    def __init__(  # the store's own options are keyword-only
        self, name: str, conn_id: str, path: str, *, timeout: float = DEFAULT_TIMEOUT,
        connect_attempts: int = 1, read_window: int = DEFAULT_READ_WINDOW
    ) -> None:
        super().__init__(name, conn_id, path, timeout=timeout)
        # Retrying the connection is the task's business (Airflow retries); the hook's own
        # default of 3 attempts 3-5 s apart would only delay the error.
        self.connect_attempts = connect_attempts
        self.read_window = read_window

    # --- the session -----------------------------------------------------------------

    def _open_session(self, action: str, key: str) -> tuple[Any, Callable[[], None]]:
        from airflow.providers.sftp.hooks.sftp import (
            SFTPHook,  # lazy: provider hook: loaded when the connection is used
        )

        self._load_server()
        try:
            hook = SFTPHook(ssh_conn_id=self.conn_id, conn_retry_attempts=self.connect_attempts)
            sftp = hook.get_conn()
        except Exception as exc:  # noqa: BLE001 - translated below
            raise self.translate(exc, action, key, connecting=True) from None
        sftp.get_channel().settimeout(self.timeout)

        def close() -> None:
            for close in (hook.close_conn, lambda: hook.client and hook.client.close()):
                with contextlib.suppress(Exception):  # already broken
                    close()

        return sftp, close

    def _is_connection_error(self, exc: BaseException) -> bool:
        return _is_connection_error(exc)

    def _dead(self, session: Any) -> bool:
        return not _alive(session)

    # --- files -----------------------------------------------------------------------

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

    def _send_temp(self, sftp: Any, directory: str, tmp: str, src: BinaryIO) -> None:
        for attempt in range(3):
            self._makedirs(sftp, directory or "/")
            try:
                out = sftp.open(tmp, "wb")
                break
            except FileNotFoundError:
                if attempt == 2:  # the directory keeps vanishing (a concurrent delete)
                    raise
        with out:
            out.set_pipelined(True)
            while block := src.read(COPY_BLOCK):
                out.write(block)

    def _replace(self, sftp: Any, tmp: str, path: str) -> None:
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

    def _remove_file(self, sftp: Any, path: str) -> None:
        sftp.remove(path)

    def _file_size(self, sftp: Any, path: str) -> int | None:
        try:
            st = sftp.stat(path)
        except FileNotFoundError:
            return None
        return int(st.st_size or 0) if stat_mod.S_ISREG(st.st_mode or 0) else None

    def _delete_file(self, sftp: Any, path: str) -> bool:
        try:
            sftp.remove(path)
        except FileNotFoundError:
            return False
        except OSError:
            if self._file_size(sftp, path) is None:
                return False  # a directory (a prefix, not an object), or gone meanwhile
            raise
        return True

    def _entries(self, sftp: Any, directory: str) -> Entries:
        try:
            attrs = sftp.listdir_attr(directory)
        except FileNotFoundError:
            return []  # nothing stored yet, or removed by a concurrent delete
        out: Entries = []
        for entry in attrs:
            mode = entry.st_mode or 0
            if stat_mod.S_ISDIR(mode):
                out.append((entry.filename, True, 0))
            elif stat_mod.S_ISREG(mode):
                out.append((entry.filename, False, int(entry.st_size or 0)))
        return out

    def _rmdir(self, sftp: Any, directory: str) -> bool:
        try:
            sftp.rmdir(directory)
        except OSError:
            return False
        return True

    def _modified(self, sftp: Any, path: str) -> datetime | None:
        try:
            mtime = sftp.stat(path).st_mtime
        except FileNotFoundError:
            return None
        return datetime.fromtimestamp(mtime, UTC) if mtime is not None else None

    # --- reading ---------------------------------------------------------------------

    def _open_path(self, key: str, path: str, offset: int, length: int | None) -> BinaryIO:

        def start_read(sftp: Any) -> tuple[Any, int, int] | None:
            size = self._file_size(sftp, path)
            if size is None:
                return None
            start, end = clamp_range(self.name, offset, length, size)
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

    # --- space -----------------------------------------------------------------------

    def free_bytes(self) -> int | None:
        """Free bytes where the root is, from statvfs@openssh.com; None when the server
        does not offer it."""

        def statvfs(sftp: Any) -> int | None:
            from paramiko.sftp import (  # lazy: paramiko is heavy: loaded when SFTP is used
                CMD_EXTENDED,
                CMD_EXTENDED_REPLY,
            )

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

    # --- errors ---------------------------------------------------------------------

    def translate(
        self, exc: BaseException, action: str, key: str, *, connecting: bool = False
    ) -> TargetError:
        import paramiko  # lazy: paramiko is heavy: loaded when SFTP is used

        conn = self._conn_ref()
        head = self._head(action, key)
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
            msg = self._unreachable(exc, action, key)
        elif isinstance(exc, TimeoutError):
            msg = self._timed_out(head)
        elif isinstance(exc, PermissionError):
            msg = f"{head}: permission denied ({exc.strerror}); let the login user write under {self.root}"
        else:
            msg = self._other(head, exc)
        return self._error(msg)


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
    import paramiko  # lazy: paramiko is heavy: loaded when SFTP is used

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
