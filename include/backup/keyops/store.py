"""Where the key ring lives, and changing it there: rotation and key removal.

Two stores: a key file (``--key-file`` / ``$BACKUP_KEY_FILE``), and the Airflow connection
named by ``encryption.key_conn_id``. A change is a read-modify-write under a lock (a lock
file beside the key file; ``SELECT ... FOR UPDATE`` on the connection's row), so two
rotations at once never lose a key.

A connection can be written only when it lives in Airflow's metadata database and this
process can reach that database through Airflow's own ``Connection`` model and session (the
``airflow`` CLI's host, the scheduler's, a CLI with ``[database] sql_alchemy_conn`` set).
One defined by an ``AIRFLOW_CONN_<ID>`` variable or served by a secrets backend is read-only
here: :class:`NotWritable` says why, and the caller tells the user what to set instead.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from include.backup.config.schema import BackupConfig
from include.backup.errors import BackupError
from include.backup.keyops.audit import key_event
from include.backup.keys import KeyConnectionMissing, KeyRing, KeyRingError, ring_fields_of_extra
from include.backup.settings import key_file_override

Change = Callable[[KeyRing], KeyRing]


class NotWritable(BackupError):
    """The key ring's store cannot be written from this process; the message says why."""


class KeyStore(Protocol):
    where: str  # e.g. "key file /etc/backup/keys.json": for messages

    def load(self) -> KeyRing:
        """The key ring as stored now."""
        ...

    def update(self, change: Change) -> KeyRing:
        """Apply ``change`` to the stored ring atomically; returns the new ring. Raises
        :class:`NotWritable` (nothing changed) when this process cannot write the store."""
        ...


class FileStore:
    """A JSON key file, rewritten atomically (temporary file, fsync, rename) with mode 0600."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.where = f"key file {self.path}"

    def load(self) -> KeyRing:
        return KeyRing.from_file(self.path)

    def update(self, change: Change) -> KeyRing:
        with self._locked():
            new = change(self.load())
            try:
                new.save(self.path, overwrite=True)
            except OSError as exc:
                raise NotWritable(f"{self.where} cannot be written: {exc.strerror or exc}") from None
        return new

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(f".{self.path.name}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise NotWritable(
                f"{self.where} cannot be written: cannot create the lock file {lock} ({exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released with the descriptor, or when we die
            yield
        finally:
            os.close(fd)


class ConnectionStore:
    """The Airflow connection ``conn_id``: written through Airflow's Connection model when
    it lives in the metadata database, read wherever Airflow finds it."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.where = f"Airflow connection {conn_id!r}"

    def load(self) -> KeyRing:
        try:
            return KeyRing.from_connection(self.conn_id)
        except KeyConnectionMissing:
            # Outside a task the SDK reads no metadata database: a CLI where the connection
            # lives only there reads its row itself (the same row rotate writes).
            try:
                with _db_row(self.conn_id) as (row, _):
                    return _ring_of_row(row, self.where)
            except NotWritable:
                pass
            raise

    def update(self, change: Change) -> KeyRing:
        env = f"AIRFLOW_CONN_{self.conn_id.upper()}"
        if os.environ.get(env):
            raise NotWritable(f"{self.where} is defined by the environment variable {env}")
        _refuse_secrets_backend(self.conn_id, self.where)
        with _db_row(self.conn_id) as (row, _session):
            new = change(_ring_of_row(row, self.where))
            extra = dict(row.extra_dejson or {})
            extra.pop("keys", None)  # the old, unmasked field name: the ring moves to secret_keys
            extra.update(new.to_connection_extra())
            row.set_extra(json.dumps(extra))
        return new


def _ring_of_row(row: Any, where: str) -> KeyRing:
    extra = row.extra_dejson or {}
    if not ("secret_keys" in extra or "keys" in extra):
        raise NotWritable(
            f"{where} keeps a single key in login/password; move it to the extra "
            '{"secret_keys": {...}, "active": ...} (docs/keys.md) to rotate it here'
        )
    return KeyRing.from_json(ring_fields_of_extra(extra), source=where)


@contextmanager
def _db_row(conn_id: str) -> Iterator[tuple[Any, Any]]:
    """The connection's row in Airflow's metadata database, locked for update; committed
    when the block ends without an error. NotWritable when there is none or no database."""
    where = f"Airflow connection {conn_id!r}"
    _refuse_without_database(where)
    try:
        from airflow.models.connection import Connection  # lazy: Airflow: heavy, optional in the CLI
        from airflow.utils.session import create_session  # lazy: Airflow: heavy, optional in the CLI
        from sqlalchemy import select  # lazy: with Airflow only
    except ImportError:
        raise NotWritable(f"{where} cannot be written here: Airflow is not installed") from None
    try:
        with create_session() as session:
            row = session.scalar(select(Connection).where(Connection.conn_id == conn_id).with_for_update())
            if row is None:
                raise NotWritable(
                    f"{where} is not in Airflow's metadata database (it comes from a secrets "
                    "backend, or is not defined)"
                )
            yield row, session
    except (NotWritable, KeyRingError):
        raise
    except Exception as exc:  # noqa: BLE001 - no database here, or the ORM is refused in a task
        # The type only: a driver's message may carry the database URL and its password.
        raise NotWritable(
            f"{where} cannot be written here: Airflow's metadata database is not reachable "
            f"from this process ({type(exc).__name__}); run the command where "
            "[database] sql_alchemy_conn is set (e.g. the scheduler's host)"
        ) from None


def _refuse_without_database(where: str) -> None:
    """Never touch a database that is not there: inside a task (Airflow 3 refuses the ORM
    to tasks), or a SQLite file that does not exist (connecting would create an empty one)."""
    try:
        from airflow.sdk.execution_time import task_runner  # lazy: Airflow: heavy, optional

        in_task = getattr(task_runner, "SUPERVISOR_COMMS", None) is not None
    except ImportError:
        in_task = False
    if in_task:
        raise NotWritable(f"{where} cannot be written from a task: Airflow 3 gives tasks no database access")
    try:
        from airflow.configuration import conf  # lazy: Airflow: heavy, optional

        url = conf.get("database", "sql_alchemy_conn", fallback="") or ""
    except Exception:  # noqa: BLE001 - no Airflow configuration: nothing to write to
        url = ""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///").split("?")[0]).exists():
        raise NotWritable(f"{where} cannot be written here: no Airflow metadata database is configured")


def _refuse_secrets_backend(conn_id: str, where: str) -> None:
    """A connection a custom secrets backend serves shadows the database's: never write a
    copy Airflow would not read."""
    try:
        from airflow.configuration import ensure_secrets_loaded  # lazy: Airflow: heavy, optional
    except ImportError:
        return
    try:
        backends = ensure_secrets_loaded()
    except Exception:  # noqa: BLE001 - no Airflow configuration: no custom backend either
        return
    for backend in backends:
        name = type(backend).__name__
        if name in ("EnvironmentVariablesBackend", "MetastoreBackend"):
            continue
        try:
            found = backend.get_connection(conn_id)
        except Exception:  # noqa: BLE001 - a backend that cannot answer does not serve it
            found = None
        if found is not None:
            raise NotWritable(f"{where} is served by the secrets backend {name}; rotate it there")


def store_for(config: BackupConfig, key_file: str | None = None) -> KeyStore:
    """The store the key ring is read from: ``key_file``, else ``$BACKUP_KEY_FILE``, else
    the connection ``encryption.key_conn_id`` (the same order as every reader)."""
    path = key_file or key_file_override()
    if path is not None:
        return FileStore(path)
    return ConnectionStore(config.encryption.key_conn_id)


# --- operations --------------------------------------------------------------------------


@dataclass
class Rotation:
    """What a rotation did. ``stored`` False: the new ring exists only here (``reason``
    says why): the caller must hand the new key to the user, and nothing else."""

    new_id: str
    where: str
    stored: bool
    kept: list[str] = field(default_factory=list)  # the old key ids, still in the ring
    reason: str = ""
    ring: KeyRing | None = field(default=None, repr=False)  # the new ring when not stored


def new_key_id(ring: KeyRing, today: date) -> str:
    """``k<date>``, with ``-2``, ``-3``... when that id exists (ids are never reused)."""
    base = f"k{today.isoformat()}"
    candidate, n = base, 1
    while candidate in ring:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def rotate(
    store: KeyStore,
    new_id: str | None = None,
    *,
    today: date | None = None,
    store_it: bool = True,
    fallback: bool = True,
) -> Rotation:
    """Add a fresh random key to the ring and make it active; old keys stay. With a store
    this process cannot write (or ``store_it`` False), the rotated ring is returned unstored
    (``fallback`` False: NotWritable is raised instead)."""
    when = today or date.today()

    def change(ring: KeyRing) -> KeyRing:
        return ring.rotated(new_id or new_key_id(ring, when), today=when)

    if store_it:
        try:
            new = store.update(change)
        except NotWritable as exc:
            if not fallback:
                raise
            reason = str(exc)
        else:
            kept = [k for k in new.key_ids if k != new.active_id]
            key_event("rotated", new_key=new.active_id, store=store.where, kept=",".join(kept))
            return Rotation(new.active_id, store.where, True, kept)
    else:
        reason = "not stored (asked not to)"
    new = change(store.load())
    return Rotation(
        new.active_id, store.where, False, [k for k in new.key_ids if k != new.active_id], reason, new
    )


def remove_key(store: KeyStore, key_id: str) -> KeyRing:
    """Delete ``key_id`` from the stored ring (never the active key). Callers check first
    that no backup needs it (:func:`include.backup.keyops.usage.check_unused`)."""
    new = store.update(lambda ring: ring.without(key_id))
    key_event("deleted", key=key_id, store=store.where)
    return new


def auto_rotate(config: BackupConfig, *, today: date | None = None) -> tuple[str | None, str]:
    """``encryption.auto_rotate``: rotate in the store this process reads the ring from.
    Returns (the new key id, "") or (None, why not); never returns or logs key material."""
    store = store_for(config)
    try:
        return rotate(store, today=today, store_it=True, fallback=False).new_id, ""
    except (NotWritable, KeyRingError) as exc:
        return None, str(exc)
