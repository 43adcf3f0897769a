"""Pieces shared by the remote targets (s3, azure, gcs, sftp, ftp): the
:class:`RemoteTarget` base (a name, an Airflow connection, the secrets it must never
quote), connection look-up and secret scrubbing, error-message helpers, and the upload
helpers the stores build on (their byte streams are in
:mod:`~include.backup.targets.streams`). The two families build on it:
:mod:`~include.backup.targets.object_store` (s3, azure, gcs) and
:mod:`~include.backup.targets.path_store` (sftp, ftp).

Nothing here imports a provider or an SDK: every remote target module keeps its heavy
imports inside functions, and so does this one.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from include.backup.errors import TargetError
from include.backup.targets.base import Capabilities, ObjectInfo, check_prefix

T = TypeVar("T")
MiB = 1 << 20


def source_size(target: str, key: str, src: Path) -> int:
    """Size of the file to upload, or a TargetError saying it cannot be read."""
    try:
        return os.stat(src).st_size
    except OSError as exc:
        raise source_error(target, key, src, exc) from exc


def connection_secrets(conn: Any, fields: Iterable[str]) -> list[str]:
    """The values of ``conn``'s secret ``fields``, which a target class declares:
    ``password``, or ``extra.<name>[.<name>…]`` for an extra (nested in a dict or in a
    JSON string; Airflow's older ``extra__<conn type>__<name>`` spelling included).
    Every string under a dict counts; a multi-line secret (a PEM key) also line by line."""
    try:
        extra = conn.extra_dejson or {}
    except Exception:  # noqa: BLE001 - malformed extra: nothing to collect there
        extra = {}
    found: list[str] = []
    for field in fields:
        head, _, path = field.partition(".")
        if head == "extra":
            _collect(_extra_value(extra, path.split(".")), found)
        else:
            value = getattr(conn, head, None)
            if value:
                found.append(str(value))
    return found


def _extra_value(extra: dict[str, Any], path: list[str]) -> Any:
    name = path[0]
    value = extra.get(name)
    if value is None:
        old_style = (v for k, v in extra.items() if k.startswith("extra__") and k.endswith(f"__{name}"))
        value = next(old_style, None)
    for part in path[1:]:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _collect(value: Any, found: list[str]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, str) and len(value) >= 4:
        found.append(value)
        # Multi-line secrets (PEM keys) may be quoted line by line.
        found.extend(line for line in value.splitlines() if len(line) >= 16)


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
    from airflow.sdk import BaseHook  # lazy: Airflow: not loaded by the CLI and config checks

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # noqa: BLE001 - AirflowNotFoundException, a secrets backend down...
        raise TargetError(
            f"target '{target}': Airflow connection '{conn_id}' could not be loaded "
            f"({type(exc).__name__}: {short(exc)}); define it (UI: Admin > Connections, or "
            f"env AIRFLOW_CONN_{conn_id.upper()}='{example}')"
        ) from None


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


def other_error(head: str, exc: BaseException) -> str:
    """The message for an error no store-specific rule recognised."""
    if isinstance(exc, OSError):
        return f"{head}: {exc.strerror or short(exc)}"
    return f"{head}: {type(exc).__name__}: {short(exc)}"


class RemoteTarget(ABC):
    """What every remote target shares: its name, the Airflow connection it is built from
    (looked up at first use, never at construction), and the secrets of that connection,
    which no message it builds may carry.

    A subclass declares ``connection_example`` (the ``AIRFLOW_CONN_…`` value shown when
    the connection is missing), ``secret_fields`` (see :func:`connection_secrets`) and
    ``capabilities``."""

    connection_example: str = ""
    secret_fields: tuple[str, ...] = ("password",)
    capabilities: Capabilities = Capabilities()

    def __init__(self, name: str, conn_id: str) -> None:
        self.name = name
        self.conn_id = conn_id
        self._secrets: list[str] = []

    def _load_connection(self) -> Any:
        """The target's Airflow connection; remembers its secrets for :meth:`_error`."""
        conn = load_connection(self.name, self.conn_id, self.connection_example)
        self._secrets = connection_secrets(conn, self.secret_fields)
        return conn

    def _conn_ref(self) -> str:
        return f"Airflow connection '{self.conn_id}'"

    def _error(self, msg: str) -> TargetError:
        """A TargetError with ``msg``, scrubbed of the connection's secrets (a last line of
        defence: messages are written not to quote them in the first place)."""
        return TargetError(redact(msg, self._secrets))

    @abstractmethod
    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO: ...

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()
