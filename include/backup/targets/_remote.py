"""Pieces shared by the remote targets (s3, azure, gcs, sftp, ftp).

Nothing here imports a provider or an SDK: every remote target module keeps its heavy
imports inside functions, and so does this one.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from include.backup.errors import TargetError

if TYPE_CHECKING:
    from include.backup.targets.base import ObjectInfo

T = TypeVar("T")
MiB = 1 << 20

# Connection fields and extras that hold secrets: their values are scrubbed from every
# message a remote target builds (a last line of defence; messages are written not to
# quote them in the first place).
_SECRET_WORDS = ("password", "secret", "key", "token", "connection_string", "credential", "sas")


def clamp_range(target: str, offset: int, length: int | None, size: int) -> tuple[int, int]:
    """The ``[start, end)`` byte range of an object of ``size`` bytes that a read of
    ``length`` bytes (None: to the end) from ``offset`` covers. Past the end is empty."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"target '{target}': offset and length must be >= 0, got {offset}, {length}")
    start = min(offset, size)
    end = size if length is None else min(size, offset + length)
    return start, max(start, end)


def empty_stream() -> BinaryIO:
    return io.BytesIO(b"")


def source_size(target: str, key: str, src: Path) -> int:
    """Size of the file to upload, or a TargetError saying it cannot be read."""
    try:
        st = os.stat(src)
    except OSError as exc:
        raise TargetError(
            f"target '{target}': cannot read the file to upload for '{key}' ({src}): "
            f"{exc.strerror or exc}; check that the staging file still exists"
        ) from exc
    return st.st_size


def connection_secrets(conn: Any) -> list[str]:
    """Secret values of an Airflow connection (password and secret-looking extras)."""
    found: list[str] = []
    password = getattr(conn, "password", None)
    if password:
        found.append(str(password))
    try:
        extra = conn.extra_dejson or {}
    except Exception:  # noqa: BLE001 - malformed extra: nothing to collect
        extra = {}

    def collect(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                collect(v, f"{name}.{k}")
        elif isinstance(value, str) and len(value) >= 4 and any(w in name.lower() for w in _SECRET_WORDS):
            found.append(value)
            # Multi-line secrets (PEM keys) may be quoted line by line.
            found.extend(line for line in value.splitlines() if len(line) >= 16)

    for key, value in extra.items():
        collect(value, str(key))
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def short(exc: BaseException, limit: int = 300) -> str:
    """A one-line description of ``exc`` for an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def load_connection(target: str, conn_id: str, example: str) -> Any:
    """The Airflow connection ``conn_id``, or a TargetError saying how to define it.

    Looked up explicitly even where the provider hook would fall back to ambient
    credentials (S3Hook does): a typo in ``conn_id`` must fail, not silently write the
    backups with whatever identity the worker happens to have."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # noqa: BLE001 - AirflowNotFoundException, a secrets backend down...
        raise TargetError(
            f"target '{target}': Airflow connection '{conn_id}' could not be loaded "
            f"({type(exc).__name__}: {short(exc)}); define it (UI: Admin > Connections, or "
            f"env AIRFLOW_CONN_{conn_id.upper()}='{example}')"
        ) from None


class ChunkReader(io.RawIOBase):
    """A raw stream over ``[start, end)`` of an object, fetched ``chunk`` bytes at a time
    by ``fetch(pos, n)`` (one ranged request each): memory stays at one chunk."""

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        start: int,
        end: int,
        chunk: int,
        on_short: Callable[[int], BaseException],
    ) -> None:
        self._fetch = fetch
        self._pos = start
        self._end = end
        self._chunk = chunk
        self._buf = memoryview(b"")
        self._on_short = on_short

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._buf:
            if self._pos >= self._end:
                return 0
            n = min(self._chunk, self._end - self._pos)
            data = self._fetch(self._pos, n)
            if len(data) != n:
                # The object shrank (or was replaced) since we looked at its size.
                raise self._on_short(self._pos)
            self._pos += n
            self._buf = memoryview(data)
        out = memoryview(buffer).cast("B")
        k = min(len(out), len(self._buf))
        out[:k] = self._buf[:k]
        self._buf = self._buf[k:]
        return k

    def close(self) -> None:
        self._buf = memoryview(b"")
        super().close()


class IterReader(io.RawIOBase):
    """A raw stream over an iterator of byte blocks (a streamed HTTP body, a socket),
    with ``expected`` bytes in all: ending early is an error, not a silent short read."""

    def __init__(
        self,
        blocks: Iterator[bytes],
        expected: int,
        on_short: Callable[[int], BaseException],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._blocks = blocks
        self._left = expected
        self._got = 0
        self._buf = memoryview(b"")
        self._on_short = on_short
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buf:
            if self._left <= 0:
                return 0
            block = next(self._blocks, None)
            if block is None:
                raise self._on_short(self._got)
            block = block[: self._left]
            self._left -= len(block)
            self._got += len(block)
            self._buf = memoryview(block)
        out = memoryview(buffer).cast("B")
        k = min(len(out), len(self._buf))
        out[:k] = self._buf[:k]
        self._buf = self._buf[k:]
        return k

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            try:
                self._on_close()
            finally:
                self._on_close = None
        super().close()


def buffered(raw: io.RawIOBase, buffer_size: int = 256 * 1024) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(raw, buffer_size=buffer_size))


class FileSlice(io.RawIOBase):
    """``length`` bytes of a file from ``offset``, as a seekable stream of its own (its own
    file handle), so that parts of one file can be sent in parallel without reading them
    into memory. Positions are relative to the slice."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._offset = offset
        self._length = length
        self._pos = 0
        self._f.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        else:
            new = self._length + pos
        self._pos = max(0, min(new, self._length))
        self._f.seek(self._offset + self._pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._length - self._pos]
        if not len(view):
            return 0
        n = self._f.readinto(view) or 0
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        if size is None or size < 0 or size > left:
            size = left
        data = self._f.read(size)
        self._pos += len(data)
        return data

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


def read_slice(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"{path} changed while it was being uploaded (short read at {offset})")
    return data


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each part of a ``size``-byte file."""
    return [(off, min(part_size, size - off)) for off in range(0, size, part_size)]


def run_bounded(jobs: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """Run ``jobs`` on ``workers`` threads with at most ``workers`` in flight (so memory
    is bounded by what that many jobs hold), returning results in order. The first
    failure stops submitting, waits for the jobs in flight and is raised."""
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    results: dict[int, T] = {}
    index: dict[Future[T], int] = {}
    pending: set[Future[T]] = set()

    def collect(done: Iterable[Future[T]]) -> None:
        for fut in done:
            results[index[fut]] = fut.result()  # raises the job's error

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="target-part")
    try:
        for i, job in enumerate(jobs):
            while len(pending) >= workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
            fut = pool.submit(job)
            index[fut] = i
            pending.add(fut)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            collect(done)
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    return [results[i] for i in range(len(jobs))]


class Lazy:
    """A value built on first use under a lock (hooks and clients: never at import or
    construction time), which can be dropped so the next use builds a fresh one."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._value: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
                value = self._value
        return value

    def peek(self) -> Any:
        return self._value

    def drop(self) -> Any:
        with self._lock:
            value, self._value = self._value, None
        return value


def sorted_infos(found: list[ObjectInfo]) -> Iterator[ObjectInfo]:
    found.sort(key=lambda o: o.key)
    return iter(found)


def root_prefix(target: str, prefix: str) -> str:
    """A config ``prefix`` as the folder every key lives under: '' or 'a/b/'."""
    from include.backup.targets import check_prefix

    p = prefix.strip("/")
    if not p:
        return ""
    check_prefix(target, p + "/")
    return p + "/"


def source_error(target: str, key: str, src: Path, exc: OSError) -> TargetError:
    return TargetError(
        f"target '{target}': cannot read the file to upload for '{key}' ({src}): "
        f"{exc.strerror or exc}; check that the staging file still exists"
    )


class translating:  # noqa: N801 - used like a function: ``with translating(...):``
    """``with translating(target, translate, action, key):`` turns whatever a provider
    raises into the TargetError ``translate(exc, action, key)`` builds; an OSError about
    the local source file ``src`` (if given) becomes a "cannot read the file" error."""

    def __init__(
        self,
        target: str,
        translate: Callable[[BaseException, str, str], TargetError],
        action: str,
        key: str,
        src: Path | None = None,
    ) -> None:
        self.target, self.translate, self.action, self.key, self.src = target, translate, action, key, src

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, TargetError) or not isinstance(exc, Exception):
            return  # nothing to translate: let it propagate as it is
        if (
            self.src is not None
            and isinstance(exc, OSError)
            and getattr(exc, "filename", None) is not None
            and str(exc.filename) == str(self.src)
        ):
            raise source_error(self.target, self.key, self.src, exc) from exc
        raise self.translate(exc, self.action, self.key) from exc
