"""The FTP target, built on the FTP provider's FTPHook (ftplib underneath).

FTP sends the password and the data in clear text: prefer the SFTP target; this one is
for the old NAS that only speaks FTP (the source documents list it).

- Host, port, user and password come from the Airflow connection ``conn_id`` (type
  ``ftp``; extra ``passive``, default true). The hook and its control connection are built
  at first use; a control connection that dropped is reopened once, transparently, for
  operations that are safe to repeat.
- Objects are files under ``path`` on the server. A put STORes ``.<name>.tmp-<random>``
  in the destination directory, checks its SIZE, then renames it (RNFR/RNTO) onto the
  final name. Temporary names are never listed; a put that fails deletes its temporary
  file. Servers that refuse to rename onto an existing file get the old file deleted
  first, which leaves a short window without the object.
- Reads use a control connection of their own (FTP allows one transfer per connection),
  REST to the offset, then RETR, closing the transfer once ``length`` bytes arrived.
- Listing uses MLSD (RFC 3659), or a Unix-style LIST where the server has no MLSD.
- ``free_bytes`` is None: FTP has no standard way to ask.
"""

from __future__ import annotations

import contextlib
import ftplib
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import BinaryIO, TypeVar

from include.backup.errors import TargetError
from include.backup.targets._remote import MiB, short
from include.backup.targets.base import Capabilities
from include.backup.targets.path_store import Entries, PathStoreTarget
from include.backup.targets.streams import IterReader, buffered, clamp_range, empty_stream

T = TypeVar("T")

COPY_BLOCK = 1 * MiB
DEFAULT_TIMEOUT = 60.0

_CONNECTION_ERRORS = (EOFError, ConnectionError, socket.timeout, socket.gaierror, ftplib.error_temp)


class FTPTarget(PathStoreTarget[ftplib.FTP]):
    """A :class:`~include.backup.targets.base.Target` in a directory on an FTP server."""

    connection_example = "ftp://user:password@host:21"
    secret_fields = ("password",)
    # free_bytes is None (FTP has no standard way to ask); servers that refuse to rename
    # onto an existing file get the old one deleted first.
    capabilities = Capabilities(free_space=False, atomic_replace=False, partial_uploads=True)
    server_label = "FTP"
    session_label = "FTP connection"
    default_port = 21

    def __init__(self, name: str, conn_id: str, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(name, conn_id, path, timeout=timeout)

    # --- connections -----------------------------------------------------------------

    def _open_connection(self, action: str, key: str) -> ftplib.FTP:
        """A new logged-in control connection in binary mode (a fresh hook each time: the
        hook keeps a half-open connection around when the login fails)."""
        from airflow.providers.ftp.hooks.ftp import (
            FTPHook,  # lazy: provider hook: loaded when the connection is used
        )

        conn = self._load_server()
        if not conn.host:
            raise TargetError(
                f"target '{self.name}': Airflow connection '{self.conn_id}' has no host; set it"
            )
        hook = FTPHook(ftp_conn_id=self.conn_id)
        try:
            ftp = hook.get_conn()
            ftp.timeout = self.timeout  # data connections
            if ftp.sock is not None:
                ftp.sock.settimeout(self.timeout)
            ftp.voidcmd("TYPE I")
            return ftp
        except Exception as exc:  # noqa: BLE001 - translated below
            if hook.conn is not None:
                hook.conn.close()
            raise self.translate(exc, action, key, connecting=True) from None

    def _open_session(self, action: str, key: str) -> tuple[ftplib.FTP, Callable[[], None]]:
        ftp = self._open_connection(action, key)
        return ftp, ftp.close

    def close(self) -> None:
        with self._lock:
            ftp, self._session, self._closer = self._session, None, None
        if ftp is not None:
            try:
                ftp.quit()
            except Exception:  # noqa: BLE001
                ftp.close()

    def _run(self, action: str, key: str, fn: Callable[[ftplib.FTP], T], *, repeatable: bool = True) -> T:
        with self._lock:  # one command at a time on the control connection
            return super()._run(action, key, fn, repeatable=repeatable)

    def _is_connection_error(self, exc: BaseException) -> bool:
        return isinstance(exc, _CONNECTION_ERRORS)

    # --- files -----------------------------------------------------------------------

    def _check_name(self, key: str) -> None:
        if "\r" in key or "\n" in key:
            raise TargetError(
                f"target '{self.name}': invalid object key {key!r} (FTP cannot carry line breaks "
                "in a file name); choose another name"
            )

    def _makedirs(self, ftp: ftplib.FTP, directory: str) -> None:
        # MKD each level; "exists" answers are errors too, so only the final STOR tells.
        parts = directory.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if not d or d == ".":
                continue
            with contextlib.suppress(ftplib.error_perm):
                ftp.mkd(d)

    def _send_temp(self, ftp: ftplib.FTP, directory: str, tmp: str, src: BinaryIO) -> None:
        for attempt in range(3):
            if directory:
                self._makedirs(ftp, directory)
            try:
                ftp.storbinary(f"STOR {tmp}", src, blocksize=COPY_BLOCK)
                return
            except ftplib.error_perm:
                # 553/550: the directory vanished under a concurrent delete; make it again.
                if attempt == 2 or src.tell() != 0:
                    raise

    def _replace(self, ftp: ftplib.FTP, tmp: str, path: str) -> None:
        try:
            ftp.rename(tmp, path)
        except ftplib.error_perm:
            # Some servers refuse to rename onto an existing file.
            if self._file_size(ftp, path) is None:
                raise
            ftp.delete(path)
            ftp.rename(tmp, path)

    def _remove_file(self, ftp: ftplib.FTP, path: str) -> None:
        ftp.delete(path)

    def _delete_file(self, ftp: ftplib.FTP, path: str) -> bool:
        try:
            ftp.delete(path)
        except ftplib.error_perm:
            if self._file_size(ftp, path) is None:
                return False  # missing, or a directory (a prefix, not an object)
            raise
        return True

    def _rmdir(self, ftp: ftplib.FTP, directory: str) -> bool:
        try:
            ftp.rmd(directory)
        except ftplib.error_perm:
            return False
        return True

    def _modified(self, ftp: ftplib.FTP, path: str) -> datetime | None:
        """MDTM's answer (RFC 3659: ``213 YYYYMMDDHHMMSS[.sss]``, UTC); None without it."""
        try:
            resp = ftp.sendcmd(f"MDTM {path}")
        except ftplib.error_perm:
            return None  # no MDTM command, or the file is gone
        stamp = resp.split()[-1].split(".")[0]
        try:
            return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            return None

    def _file_size(self, ftp: ftplib.FTP, path: str) -> int | None:
        """Size of the file at ``path``, None if there is none (or it is a directory)."""
        # SIZE answers in binary mode only, and listings (MLSD, LIST) switch to ASCII.
        ftp.voidcmd("TYPE I")
        try:
            resp = ftp.sendcmd(f"SIZE {path}")
        except ftplib.error_perm as exc:
            if str(exc)[:3] in ("500", "502", "504"):
                return self._size_from_listing(ftp, path)  # no SIZE command
            return None
        return int(resp.split()[1])

    def _size_from_listing(self, ftp: ftplib.FTP, path: str) -> int | None:
        directory, _, name = path.rpartition("/")
        for entry_name, is_dir, size in self._entries(ftp, directory or "/"):
            if entry_name == name and not is_dir:
                return size
        return None

    # --- reading ---------------------------------------------------------------------

    def _open_path(self, key: str, path: str, offset: int, length: int | None) -> BinaryIO:
        size = self._run("read", key, lambda ftp: self._file_size(ftp, path))
        if size is None:
            raise self._not_found(key)
        start, end = clamp_range(self.name, offset, length, size)
        if start == end:
            return empty_stream()
        # A connection of its own: the caller may use the target while it reads.
        ftp = self._open_connection("read", key)
        try:
            sock = ftp.transfercmd(f"RETR {path}", rest=start or None)
        except Exception as exc:  # noqa: BLE001 - translated below
            ftp.close()
            raise self.translate(exc, "read", key) from exc
        sock.settimeout(self.timeout)
        return self._reader(ftp, sock, key, start, end, size)

    def _reader(
        self, ftp: ftplib.FTP, sock: socket.socket, key: str, start: int, end: int, size: int
    ) -> BinaryIO:
        """A stream of ``[start, end)`` from the data connection ``sock`` of a RETR on
        ``ftp``; closing it closes both."""
        complete = False

        def blocks() -> Iterator[bytes]:
            nonlocal complete
            left = end - start
            while left > 0:
                try:
                    block = sock.recv(min(COPY_BLOCK, left))
                except Exception as exc:  # noqa: BLE001 - translated
                    raise self.translate(exc, "read", key) from exc
                if not block:
                    return
                left -= len(block)
                yield block
            complete = True

        def finish() -> None:
            try:
                sock.close()
                if complete and end == size:
                    ftp.voidresp()  # 226: the server finished the transfer cleanly
                    ftp.quit()
            except Exception:  # noqa: BLE001, S110 - the data already arrived whole
                pass
            finally:
                ftp.close()

        def short_read(got: int) -> TargetError:
            return TargetError(
                f"target '{self.name}': reading '{key}' from {self._where} ended after {got} of "
                f"{end - start} bytes (the transfer was cut, or the file changed); retry"
            )

        return buffered(IterReader(blocks(), end - start, short_read, on_close=finish))

    # --- listing ---------------------------------------------------------------------

    def _entries(self, ftp: ftplib.FTP, directory: str) -> Entries:
        """``(name, is_directory, size)`` of each entry of ``directory`` ([] if missing)."""
        try:
            facts = list(ftp.mlsd(directory, facts=["type", "size"]))
        except ftplib.error_perm as exc:
            code = str(exc)[:3]
            if code in ("500", "501", "502", "504"):
                return self._entries_from_list(ftp, directory)
            return []  # 550: no such directory
        out: Entries = []
        for name, fact in facts:
            kind = fact.get("type", "").lower()
            if kind in ("cdir", "pdir") or name in (".", ".."):
                continue
            if kind == "dir":
                out.append((name, True, 0))
            elif kind == "file":
                out.append((name, False, int(fact.get("size", 0))))
        return out

    def _entries_from_list(self, ftp: ftplib.FTP, directory: str) -> Entries:
        lines: list[str] = []
        try:
            ftp.retrlines(f"LIST -a {directory}", lines.append)
        except ftplib.error_perm:
            return []
        out: Entries = []
        for line in lines:
            # -rw-r--r--   1 user  group  1234 Jan 01 12:00 name with spaces
            fields = line.split(None, 8)
            if len(fields) < 9 or fields[8] in (".", ".."):
                continue
            kind, name = line[0], fields[8]
            if kind == "d":
                out.append((name, True, 0))
            elif kind == "-":
                out.append((name, False, int(fields[4])))
        return out

    # --- errors ----------------------------------------------------------------------

    def translate(
        self, exc: BaseException, action: str, key: str, *, connecting: bool = False
    ) -> TargetError:
        conn = self._conn_ref()
        head = self._head(action, key)
        reply = str(exc).strip()
        code = reply[:3]
        if isinstance(exc, ftplib.error_perm) and code in ("530", "331", "332"):
            msg = f"{head}: the server refused the login ({code}); fix the user and password in {conn}"
        elif isinstance(exc, socket.timeout):
            msg = self._timed_out(head)
        elif (
            isinstance(exc, (ConnectionError, EOFError, socket.gaierror))
            or (connecting and isinstance(exc, OSError))
            or (isinstance(exc, ftplib.error_temp) and code == "421")
        ):
            msg = self._unreachable(exc, action, key)
        elif isinstance(exc, ftplib.Error):
            msg = f"{head}: the server answered {short(Exception(reply), 200)}"
        else:
            msg = self._other(head, exc)
        return self._error(msg)
