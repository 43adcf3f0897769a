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
import errno
import ftplib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

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
# (a method below is named list)
_Infos = list[ObjectInfo]
_Entries = list[tuple[str, bool, int]]  # (name, is a directory, size)

COPY_BLOCK = 1 * MiB
DEFAULT_TIMEOUT = 60.0

_CONNECTION_ERRORS = (EOFError, ConnectionError, socket.timeout, socket.gaierror, ftplib.error_temp)


class FTPTarget:
    """A :class:`~include.backup.targets.base.Target` in a directory on an FTP server."""

    def __init__(self, name: str, conn_id: str, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.conn_id = conn_id
        stripped = path.rstrip("/")
        self.root = stripped if stripped else "/"
        self.timeout = timeout
        self._ftp: ftplib.FTP | None = None
        self._secrets: list[str] = []
        self._where = f"connection '{conn_id}'"
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"FTPTarget({self.name!r}, {self._where}, {self.root!r})"

    # --- connections -----------------------------------------------------------------

    def _open_connection(self, action: str, key: str) -> ftplib.FTP:
        """A new logged-in control connection in binary mode (a fresh hook each time: the
        hook keeps a half-open connection around when the login fails)."""
        from airflow.providers.ftp.hooks.ftp import FTPHook

        conn = load_connection(self.name, self.conn_id, "ftp://user:password@host:21")
        self._secrets = connection_secrets(conn)
        self._where = f"{conn.host}:{conn.port or 21}"
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

    def _connect(self, action: str, key: str) -> ftplib.FTP:
        with self._lock:
            if self._ftp is None:
                self._ftp = self._open_connection(action, key)
            return self._ftp

    def _drop(self) -> None:
        with self._lock:
            ftp, self._ftp = self._ftp, None
        if ftp is not None:
            with contextlib.suppress(Exception):  # already broken
                ftp.close()

    def close(self) -> None:
        with self._lock:
            ftp, self._ftp = self._ftp, None
        if ftp is not None:
            try:
                ftp.quit()
            except Exception:  # noqa: BLE001
                ftp.close()

    def _run(self, action: str, key: str, fn: Callable[[ftplib.FTP], T], *, repeatable: bool = True) -> T:
        with self._lock:  # one command at a time on the control connection
            fresh = self._ftp is None
            ftp = self._connect(action, key)
            try:
                return fn(ftp)
            except TargetError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated below
                if not isinstance(exc, _CONNECTION_ERRORS):
                    raise self.translate(exc, action, key) from exc
                self._drop()
                if fresh or not repeatable:
                    raise self.translate(exc, action, key) from exc
                log.info(
                    "target '%s': FTP connection dropped (%s); reconnecting", self.name, type(exc).__name__
                )
            ftp = self._connect(action, key)
            try:
                return fn(ftp)
            except TargetError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated below
                if isinstance(exc, _CONNECTION_ERRORS):
                    self._drop()
                raise self.translate(exc, action, key) from exc

    # --- paths -----------------------------------------------------------------------

    def _path(self, key: str) -> str:
        check_key(self.name, key)
        if "\r" in key or "\n" in key:
            raise TargetError(
                f"target '{self.name}': invalid object key {key!r} (FTP cannot carry line breaks "
                "in a file name); choose another name"
            )
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

    def _makedirs(self, ftp: ftplib.FTP, directory: str) -> None:
        # MKD each level; "exists" answers are errors too, so only the final STOR tells.
        parts = directory.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if not d or d == ".":
                continue
            with contextlib.suppress(ftplib.error_perm):
                ftp.mkd(d)

    # --- writing ---------------------------------------------------------------------

    def put(self, key: str, src: Path) -> ObjectInfo:
        path = self._path(key)
        size = source_size(self.name, key, src)

        def upload(ftp: ftplib.FTP) -> None:
            try:
                fin = open(src, "rb")  # noqa: SIM115 - closed by the with below
            except OSError as exc:
                raise source_error(self.name, key, src, exc) from exc
            with fin:
                self._publish(ftp, key, path, size, fin)

        self._run("upload", key, upload, repeatable=False)
        return ObjectInfo(key=key, size=size)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        import io

        path = self._path(key)
        self._run("upload", key, lambda ftp: self._publish(ftp, key, path, len(data), io.BytesIO(data)))
        return ObjectInfo(key=key, size=len(data))

    def _publish(self, ftp: ftplib.FTP, key: str, path: str, size: int, src: BinaryIO) -> None:
        directory, _, base = path.rpartition("/")
        tmp = f"{directory}/{temp_name(base)}" if directory or path.startswith("/") else temp_name(base)
        for attempt in range(3):
            if directory:
                self._makedirs(ftp, directory)
            try:
                ftp.storbinary(f"STOR {tmp}", src, blocksize=COPY_BLOCK)
                break
            except ftplib.error_perm:
                # 553/550: the directory vanished under a concurrent delete; make it again.
                if attempt == 2 or src.tell() != 0:
                    raise
        try:
            got = self._size(ftp, tmp)
            if got != size:
                raise TargetError(
                    f"target '{self.name}': uploading '{key}' to {self._where}:{tmp} stored {got} of "
                    f"{size} bytes; check free space on the server, then retry"
                )
            try:
                ftp.rename(tmp, path)
            except ftplib.error_perm:
                # Some servers refuse to rename onto an existing file.
                if self._size(ftp, path) is None:
                    raise
                ftp.delete(path)
                ftp.rename(tmp, path)
            tmp = ""
        finally:
            if tmp:
                with contextlib.suppress(Exception):  # best effort; the first error matters
                    ftp.delete(tmp)

    # --- reading ---------------------------------------------------------------------

    def _size(self, ftp: ftplib.FTP, path: str) -> int | None:
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

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        size = self._run("look up", key, lambda ftp: self._size(ftp, path))
        return None if size is None else ObjectInfo(key=key, size=size)

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        if offset < 0 or (length is not None and length < 0):
            clamp_range(self.name, offset, length, 0)  # raises ValueError
        path = self._path(key)
        size = self._run("read", key, lambda ftp: self._size(ftp, path))
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

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(self.name, prefix)
        start_dir = prefix.rpartition("/")[0]

        def walk_all(ftp: ftplib.FTP) -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            self._walk(ftp, self._join(start_dir), start_dir, prefix, found)
            return found

        return sorted_infos(self._run("list", prefix or "(everything)", walk_all))

    def _walk(self, ftp: ftplib.FTP, directory: str, rel: str, prefix: str, out: _Infos) -> None:
        for name, is_dir, size in self._entries(ftp, directory):
            key = f"{rel}/{name}" if rel else name
            if is_dir:
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    self._walk(ftp, f"{directory.rstrip('/')}/{name}", key, prefix, out)
            elif key.startswith(prefix) and not is_temp_name(name):
                out.append(ObjectInfo(key=key, size=size))

    def _entries(self, ftp: ftplib.FTP, directory: str) -> _Entries:
        """``(name, is_directory, size)`` of each entry of ``directory`` ([] if missing)."""
        try:
            facts = list(ftp.mlsd(directory, facts=["type", "size"]))
        except ftplib.error_perm as exc:
            code = str(exc)[:3]
            if code in ("500", "501", "502", "504"):
                return self._entries_from_list(ftp, directory)
            return []  # 550: no such directory
        out: _Entries = []
        for name, fact in facts:
            kind = fact.get("type", "").lower()
            if kind in ("cdir", "pdir") or name in (".", ".."):
                continue
            if kind == "dir":
                out.append((name, True, 0))
            elif kind == "file":
                out.append((name, False, int(fact.get("size", 0))))
        return out

    def _entries_from_list(self, ftp: ftplib.FTP, directory: str) -> _Entries:
        lines: list[str] = []
        try:
            ftp.retrlines(f"LIST -a {directory}", lines.append)
        except ftplib.error_perm:
            return []
        out: _Entries = []
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

    # --- deleting --------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)

        def remove(ftp: ftplib.FTP) -> None:
            try:
                ftp.delete(path)
            except ftplib.error_perm:
                if self._size(ftp, path) is None:
                    return  # missing, or a directory (a prefix, not an object)
                raise
            self._prune(ftp, path.rpartition("/")[0])

        self._run("delete", key, remove)

    def _prune(self, ftp: ftplib.FTP, directory: str) -> None:
        root = self.root.rstrip("/")
        while directory and directory != root and directory.startswith(root + "/" if root else ""):
            try:
                ftp.rmd(directory)
            except ftplib.error_perm:
                return  # not empty (or gone): leave it
            directory = directory.rpartition("/")[0]

    def free_bytes(self) -> int | None:
        return None

    # --- errors ----------------------------------------------------------------------

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"target '{self.name}': object '{key}' not found ({self._where}:{self._join(key)})"
        )

    def translate(
        self, exc: BaseException, action: str, key: str, *, connecting: bool = False
    ) -> TargetError:
        conn = f"Airflow connection '{self.conn_id}'"
        head = f"target '{self.name}': cannot {action} '{key}' on {self._where}"
        reply = str(exc).strip()
        code = reply[:3]
        if isinstance(exc, ftplib.error_perm) and code in ("530", "331", "332"):
            msg = f"{head}: the server refused the login ({code}); fix the user and password in {conn}"
        elif isinstance(exc, socket.timeout):
            msg = f"{head}: the server did not answer within {self.timeout:g} s; retry"
        elif (
            isinstance(exc, (ConnectionError, EOFError, socket.gaierror))
            or (connecting and isinstance(exc, OSError))
            or (isinstance(exc, ftplib.error_temp) and code == "421")
        ):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            msg = (
                f"target '{self.name}': cannot reach the FTP server {self._where} to {action} '{key}' "
                f"({reason}); check that the server is up and reachable from this worker (host and "
                f"port in {conn}), then retry"
            )
        elif isinstance(exc, ftplib.Error):
            msg = f"{head}: the server answered {short(Exception(reply), 200)}"
        elif isinstance(exc, OSError):
            name = errno.errorcode.get(exc.errno or 0, "")
            msg = f"{head}: {exc.strerror or short(exc)}{f' ({name})' if name else ''}"
        else:
            msg = f"{head}: {type(exc).__name__}: {short(exc)}"
        return TargetError(redact(msg, self._secrets))
