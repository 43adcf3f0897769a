"""PostgreSQL logical backups: pg_dump (FULL, SCHEMA) and pg_restore.

With ``method: physical`` (config) FULL / INCREMENTAL / TRANSACTION_LOG backups and
point-in-time recovery are delegated to :mod:`include.backup.sources.postgres_physical`
(pg_basebackup + WAL); SCHEMA stays a pg_dump. Restores dispatch on the payload format.

Connection details come from an Airflow connection, looked up when a dump or restore runs
(never at import or DAG parse time). Credentials reach pg_dump/pg_restore only through
their environment (PGPASSWORD...), never on the command line, where ``ps`` would show them,
and never in logs.

Payload formats (what :meth:`PostgresSource.restore` dispatches on):
  ``pg_dump-custom``         pg_dump --format=custom --compress=0, as pg_dump wrote it
  ``pg_dump-directory-tar``  pg_dump --format=directory (parallel with ``jobs``), as a tar
"""

from __future__ import annotations

import glob
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import PostgresSource as PostgresSourceConfig
from include.backup.errors import RestoreRefused, SourceError
from include.backup.sources.base import DumpResult, drain

log = logging.getLogger(__name__)

FORMAT_CUSTOM = "pg_dump-custom"
FORMAT_DIRECTORY_TAR = "pg_dump-directory-tar"
PAYLOAD_FORMATS = (FORMAT_CUSTOM, FORMAT_DIRECTORY_TAR)
SUPPORTED_BACKUP_TYPES = ("FULL", "SCHEMA")

BLOCK_SIZE = 1 << 20
"""Bytes per read/write between pg_dump/pg_restore and our streams: large blocks keep the
per-call overhead negligible while memory stays flat."""

EXACT_COUNT_LIMIT = 1 << 30
"""Below this database size (bytes) the stats use exact count(*); above, the planner's
estimate (pg_class.reltuples), because counting a big database would double the dump time."""

CONNECT_TIMEOUT_S = 15
MAINTENANCE_DBS = ("postgres", "template1")
CONN_PREFIX = "conn:"

# Connection extras that libpq understands, and the environment variable for each.
_EXTRA_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}

# libpq variables that would silently change where or as whom we connect if inherited
# from the worker's environment: dropped before ours are set.
_INHERITED_PG_VARS = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE",
    "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY",
    "PGSSLCRL", "PGCONNECT_TIMEOUT", "PGTARGETSESSIONATTRS", "PGREQUIRESSL",
)  # fmt: skip


# --- connection parameters -----------------------------------------------------------------


@dataclass(frozen=True)
class PgParams:
    """Where and as whom to connect. ``repr`` hides the password."""

    conn_id: str
    host: str | None
    port: int | None
    user: str | None
    password: str | None
    dbname: str
    extra: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"PgParams(conn_id={self.conn_id!r}, {self.describe()})"

    def describe(self) -> str:
        """For messages and logs: everything but the password."""
        where = f"{self.host or 'local socket'}:{self.port or 5432}"
        return f"database {self.dbname!r} on {where} as user {self.user or '(default)'!r}"

    def with_db(self, dbname: str) -> PgParams:
        return replace(self, dbname=dbname)

    def env(self) -> dict[str, str]:
        """The environment for pg_dump/pg_restore: the worker's, minus stray libpq
        variables, plus this connection. The only place the password goes."""
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_PG_VARS}
        if self.host:
            env["PGHOST"] = self.host
        if self.port:
            env["PGPORT"] = str(self.port)
        if self.user:
            env["PGUSER"] = self.user
        if self.password:
            env["PGPASSWORD"] = self.password
        env["PGDATABASE"] = self.dbname
        env.setdefault("PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT_S))
        env["PGAPPNAME"] = "airflow-backup"
        for key, value in self.extra:
            env[_EXTRA_ENV[key]] = value
        return env

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for psycopg2.connect (same connection as :meth:`env`)."""
        kwargs: dict[str, Any] = {
            "dbname": self.dbname,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "airflow-backup",
        }
        for key in ("host", "port", "user", "password"):
            if getattr(self, key):
                kwargs[key] = getattr(self, key)
        kwargs.update(dict(self.extra))
        return kwargs


def params_from_connection(conn_id: str, database: str | None = None) -> PgParams:
    """Look up an Airflow connection (at run time) and turn it into :class:`PgParams`."""
    # Imported here: Airflow is heavy, and importing this module must stay cheap.
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # noqa: BLE001 - AirflowNotFoundException, a secrets backend down...
        raise SourceError(
            f"Airflow connection {conn_id!r} could not be loaded ({exc}); create it "
            f"(UI: Admin > Connections, or env AIRFLOW_CONN_{conn_id.upper()}="
            "'postgres://user:password@host:5432/dbname')"
        ) from None
    dbname = database or conn.schema
    if not dbname:
        raise SourceError(
            f"Airflow connection {conn_id!r} names no database: set its schema field (the "
            "database name) or `database:` in the source config"
        )
    extras = conn.extra_dejson or {}
    extra = tuple(
        (key, str(extras[key])) for key in sorted(_EXTRA_ENV) if extras.get(key) not in (None, "")
    )
    return PgParams(
        conn_id=conn_id,
        host=conn.host or None,
        port=int(conn.port) if conn.port else None,
        user=conn.login or None,
        password=conn.password or None,
        dbname=dbname,
        extra=extra,
    )


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret replaced by ***: a last line of defence for messages that
    quote a tool's or driver's output."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# --- binaries ------------------------------------------------------------------------------


def _installed_versions() -> dict[int, Path]:
    """Debian's /usr/lib/postgresql/<major>/bin directories, by major version."""
    found: dict[int, Path] = {}
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        m = re.fullmatch(r"(\d+)(?:\.\d+)?", Path(d).parent.name)
        if m:
            found[int(m.group(1))] = Path(d)
    return found


def find_client_binary(tool: str, server_major: int | None) -> str:
    """pg_dump/pg_restore for a server of ``server_major``.

    pg_dump refuses servers newer than itself and its archives are read by the same or
    newer pg_restore, so: the matching version if installed, else the oldest newer one,
    else whatever is on PATH. ``$BACKUP_PG_BINDIR`` overrides the search.
    """
    override = os.environ.get("BACKUP_PG_BINDIR")
    if override:
        path = Path(override) / tool
        if not path.is_file():
            raise SourceError(
                f"BACKUP_PG_BINDIR={override} has no {tool}; point it at a PostgreSQL bin directory"
            )
        return str(path)
    versions = {v: d for v, d in _installed_versions().items() if (d / tool).is_file()}
    if server_major is not None:
        usable = sorted(v for v in versions if v >= server_major)
        if usable:
            return str(versions[usable[0]] / tool)
    elif versions:
        return str(versions[max(versions)] / tool)
    on_path = shutil.which(tool)
    if on_path:
        return on_path
    raise SourceError(
        f"{tool} not found (looked in /usr/lib/postgresql/*/bin and PATH); install the "
        f"PostgreSQL client matching the server "
        f"(e.g. apt-get install -y postgresql-client-{server_major or 15})"
    )


# --- the source ----------------------------------------------------------------------------


class PostgresSource:
    """Logical backups of one PostgreSQL database (see the module docstring)."""

    source_type = "postgres"

    def __init__(self, name: str, cfg: PostgresSourceConfig, *, work_dir: str | Path | None = None) -> None:
        """``work_dir``: where the directory format is dumped/extracted before being
        streamed (default: the system temp dir); the pipeline passes its staging dir."""
        self.name = name
        self.cfg = cfg
        self.work_dir = Path(work_dir) if work_dir else None

    def __repr__(self) -> str:
        return f"PostgresSource({self.name!r}, conn_id={self.cfg.conn_id!r})"

    # -- dump

    def _physical(self) -> Any:
        from include.backup.sources.postgres_physical import PhysicalPostgres

        return PhysicalPostgres(self.name, self.cfg, work_dir=self.work_dir)

    def continuity(self, prev: Manifest, cur: Manifest) -> str | None:
        """For chains (include.backup.catalog.chains): None when ``cur``'s WAL starts right
        after ``prev``'s, else the gap. Logical backups form no chains: always None."""
        from include.backup.sources.postgres_physical import continuity

        return continuity(prev, cur)

    def dump(self, backup_type: str, out: BinaryIO, parent: Manifest | None = None) -> DumpResult:
        backup_type = str(getattr(backup_type, "value", backup_type)).upper()
        if getattr(self.cfg, "method", "logical") == "physical" and backup_type != "SCHEMA":
            return self._physical().dump(backup_type, out, parent)
        if backup_type not in SUPPORTED_BACKUP_TYPES:
            raise SourceError(
                f"postgres source {self.name!r}: backup type {backup_type} is not supported in "
                f"this version; use one of {', '.join(SUPPORTED_BACKUP_TYPES)}"
            )
        params = params_from_connection(self.cfg.conn_id, self.cfg.database)
        schema_only = backup_type == "SCHEMA"
        # One REPEATABLE READ transaction exports its snapshot to pg_dump and counts the
        # rows in that same snapshot while pg_dump runs: the counts in the manifest are
        # exactly what the dump holds (a DR restore test compares them), and the counting
        # overlaps the dump instead of adding to its time.
        with _connect(params, self.name) as conn:
            # A transaction must stay open for the exported snapshot to live.
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
            cur = conn.cursor()
            info = self._server_info_in(cur, with_counts=not schema_only)
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            # SCHEMA dumps are small and always custom format; the directory format only
            # pays off (parallel jobs) for data.
            directory = self.cfg.format == "directory" and not schema_only
            pg_dump = find_client_binary("pg_dump", info["server_major"])
            args = [pg_dump, "--no-password", "--compress=0", f"--snapshot={snapshot}"]
            if schema_only:
                args.append("--schema-only")
            counting = _start_counting(cur, info) if info["row_count_method"] == "exact" else None
            try:
                if directory:
                    written = self._dump_directory(params, args, out)
                    payload_format = FORMAT_DIRECTORY_TAR
                else:
                    written = self._dump_custom(params, [*args, "--format=custom"], out)
                    payload_format = FORMAT_CUSTOM
            finally:
                if counting is not None:
                    counting.join()
            if counting is not None and counting.error is not None:
                raise counting.error
            conn.rollback()
        stats: dict[str, Any] = {
            "tables": info["tables"],
            "row_count_method": info["row_count_method"],
            "database_size": info["database_size"],
            "dump_bytes": written,
        }
        log.info("pg_dump of %s done: %d bytes (%s)", params.describe(), written, payload_format)
        return DumpResult(
            backup_type=backup_type,
            payload_format=payload_format,
            parent_id=None,
            position={
                "server_version": info["server_version"],
                "lsn": info["lsn"],
                "database": params.dbname,
            },
            stats=stats,
        )

    def _dump_custom(self, params: PgParams, args: list[str], out: BinaryIO) -> int:
        """pg_dump to stdout, copied into ``out`` block by block."""
        with _pg_process(args, params, self.name, stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            written = 0
            while True:
                block = proc.stdout.read(BLOCK_SIZE)
                if not block:
                    break
                out.write(block)
                written += len(block)
        return written

    def _dump_directory(self, params: PgParams, args: list[str], out: BinaryIO) -> int:
        """pg_dump -Fd (parallel) into a temp dir, then that dir as a tar stream into ``out``."""
        with tempfile.TemporaryDirectory(prefix="pgdump-", dir=self.work_dir) as tmp:
            target = Path(tmp) / "dump"
            cmd = [*args, "--format=directory", f"--file={target}"]
            if self.cfg.jobs > 1:
                cmd.append(f"--jobs={self.cfg.jobs}")
            with _pg_process(cmd, params, self.name, stdout=subprocess.DEVNULL):
                pass
            counter = _CountingWriter(out)
            # "w|": a pure stream, no seeking, so ``out`` may be a pipe or a compressor.
            fileobj = cast("BinaryIO", counter)  # tarfile only calls write() in "w|" mode
            with tarfile.open(fileobj=fileobj, mode="w|", bufsize=BLOCK_SIZE) as tar:
                for path in sorted(target.iterdir()):
                    tar.add(str(path), arcname=path.name, recursive=False)
            return counter.count

    def _server_info_in(self, cur: Any, *, with_counts: bool) -> dict[str, Any]:
        """Version, WAL position, size and the tables (with the planner's estimates; exact
        counts are filled in by :func:`_start_counting` when the database is small)."""
        cur.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
            " CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
            "      ELSE pg_current_wal_lsn() END::text,"
            " pg_database_size(current_database())"
        )
        version, version_num, lsn, size = cur.fetchone()
        exact = size < EXACT_COUNT_LIMIT
        tables = _table_row_counts(cur, exact=False)
        if not with_counts:
            # A schema-only dump holds no rows: the stats describe the backup, so the
            # counts a restore of it gives back (0) are the ones recorded.
            tables = {t: 0 for t in tables}
        return {
            "server_version": version,
            "server_major": version_num // 10000,
            "lsn": lsn,
            "database_size": int(size),
            "tables": tables,
            "row_count_method": ("exact" if exact else "estimate") if with_counts else "schema-only",
        }

    # -- restore

    def restore(
        self,
        chain: Iterable[tuple[Manifest, BinaryIO]],
        into: str,
        *,
        only: list[str] | None = None,
        overwrite: bool = False,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        """Restore one FULL or SCHEMA dump into a database (see the Source protocol).

        ``into``: a database on the source's server, or ``conn:<conn_id>`` (the
        connection's schema field names the database). A missing database is created; one
        with tables is refused unless ``overwrite`` (then the objects in the backup are
        dropped and re-created: pg_restore --clean --if-exists). ``only``: table names
        (``users`` or ``schema.users``); each comes back with its data, indexes,
        constraints, defaults, owned sequences, triggers and comments. Into a new database,
        foreign keys come back between tables that are both restored; over an existing one
        (``overwrite``), every foreign key of a restored table comes back, since the tables
        it points to are presumably there (if not, the restore fails and changes nothing).
        ``until`` is refused: a logical dump is one moment; point-in-time recovery needs
        physical backups (``method: physical``: base backups plus WAL).
        """
        links = list(chain)
        if links and links[0][0].payload_format in ("pg_basebackup-tar", "pg_wal-tar"):
            # pg_basebackup-tar (+ pg_wal-tar): a physical restore into a new data directory.
            return self._physical().restore(links, into, only=only, overwrite=overwrite, until=until)
        chain = links
        if until is not None:
            raise RestoreRefused(
                f"postgres source {self.name!r}: point-in-time recovery needs physical "
                "backups (base backup + TRANSACTION_LOG WAL backups, source method: physical); "
                "this source takes logical pg_dump backups — restore one by its id instead"
            )
        manifest, stream = self._single_backup(chain)
        target = self._restore_target(into)
        server_major = self._server_major(target)
        exists = self._check_target(target, overwrite=overwrite)
        pg_restore = find_client_binary("pg_restore", server_major)
        # Nothing that looks restored before the whole payload authenticated (the
        # container's last chunk is only checked when read):
        # - a new database is restored under a temporary name, renamed to ``into`` at the
        #   end, dropped on any failure (a crashed worker leaves "<into>_restoring_<hex>",
        #   never something named ``into``);
        # - into an existing database the dump is spooled to a file and read to its end
        #   before pg_restore starts, and restored in one transaction.
        work = target if exists else target.with_db(_temp_db_name(target.dbname))
        with tempfile.TemporaryDirectory(prefix="pgrestore-", dir=self.work_dir) as tmp:
            archive = self._materialize(manifest, stream, Path(tmp), need_file=bool(only) or exists)
            if archive.path is not None:
                drain(stream)  # the spooled or extracted payload authenticated to its end
            args = [
                pg_restore,
                "--no-password",
                f"--dbname={_dbname_arg(work.dbname)}",
                "--no-owner",
                "--exit-on-error",
            ]
            if only:
                listing = _partial_restore_list(
                    pg_restore, archive.path, only, target, self.name, into_existing=exists
                )
                list_path = Path(tmp) / "restore.list"
                list_path.write_text(listing, encoding="utf-8")
                args.append(f"--use-list={list_path}")
            if exists and overwrite:
                args += ["--clean", "--if-exists"]
            # One transaction, so a failed restore leaves the database as it was. A
            # parallel restore cannot be one: only used for a database created here, which
            # is dropped again if the restore fails.
            parallel = archive.directory and self.cfg.jobs > 1 and not exists
            args.append(f"--jobs={self.cfg.jobs}" if parallel else "--single-transaction")
            args.append("--format=directory" if archive.directory else "--format=custom")
            if not exists:
                self._create_database(work)
            try:
                self._run_restore(args, archive, stream, work, partial=bool(only))
                drain(stream)  # streamed into pg_restore: its tail is checked here
                if not exists:
                    self._rename_database(work, target)
            except BaseException:
                if not exists:  # leave nothing that looks like a restored database
                    self._drop_database(work)
                raise
        with _connect(target, self.name) as conn, conn.cursor() as cur:
            counts = _table_row_counts(cur, exact=True)
        if only:
            counts = {t: n for t, n in counts.items() if _matches_any(t, only)}
        log.info("restored backup %s into %s: %d tables", manifest.backup_id, target.describe(), len(counts))
        return {"database": target.dbname, "tables": counts}

    def _single_backup(self, chain: Iterable[tuple[Manifest, BinaryIO]]) -> tuple[Manifest, BinaryIO]:
        items = list(chain)
        if len(items) != 1:
            raise RestoreRefused(
                f"postgres source {self.name!r}: a logical restore takes exactly one backup "
                f"(a FULL or SCHEMA dump), got a chain of {len(items)}"
            )
        manifest, stream = items[0]
        if manifest.backup_type not in SUPPORTED_BACKUP_TYPES:
            raise RestoreRefused(
                f"postgres source {self.name!r}: backup {manifest.backup_id} is "
                f"{manifest.backup_type}; this version restores only {', '.join(SUPPORTED_BACKUP_TYPES)}"
            )
        if manifest.payload_format not in PAYLOAD_FORMATS:
            raise RestoreRefused(
                f"postgres source {self.name!r}: backup {manifest.backup_id} has payload format "
                f"{manifest.payload_format!r}, which this source cannot restore (known: "
                f"{', '.join(PAYLOAD_FORMATS)})"
            )
        return manifest, stream

    def _restore_target(self, into: str) -> PgParams:
        """``into``: a database name on the source's server, or ``conn:<conn_id>``."""
        into = (into or "").strip()
        if into.startswith(CONN_PREFIX):
            conn_id = into[len(CONN_PREFIX):]
            if not conn_id:
                raise RestoreRefused("restore target 'conn:' names no connection; use conn:<conn_id>")
            try:
                return params_from_connection(conn_id)
            except SourceError as exc:
                raise RestoreRefused(f"restore target {into!r}: {exc}") from None
        if not into:
            raise RestoreRefused(
                f"postgres source {self.name!r}: give the database to restore into (a name on "
                "the source's server, or conn:<conn_id>)"
            )
        if len(into.encode()) > 63:
            raise RestoreRefused(f"database name {into!r} is longer than PostgreSQL's 63 bytes")
        return params_from_connection(self.cfg.conn_id, self.cfg.database).with_db(into)

    def _server_major(self, target: PgParams) -> int:
        with self._maintenance(target) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version_num')::int")
            return int(cur.fetchone()[0]) // 10000

    def _check_target(self, target: PgParams, *, overwrite: bool) -> bool:
        """Whether the database exists; refuses one with tables unless ``overwrite``.
        Runs before anything is written anywhere."""
        with self._maintenance(target) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,))
            if cur.fetchone() is None:
                return False
        with _connect(target, self.name) as conn, conn.cursor() as cur:
            tables = list(_table_row_counts(cur, exact=False))
        if tables and not overwrite:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise RestoreRefused(
                f"{target.describe()} already has {len(tables)} table(s) ({shown}); restore into "
                "a new or empty database, or pass overwrite=True to replace the objects in the "
                "backup (pg_restore --clean --if-exists)"
            )
        return True

    def _create_database(self, target: PgParams) -> None:
        from psycopg2 import sql  # type: ignore[import-untyped]

        with self._maintenance(target) as conn, conn.cursor() as cur:
            # template0: a pristine database, so nothing added to template1 clashes with
            # the objects in the dump.
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target.dbname))
            )
        log.info("created the database to restore into: %s", target.describe())

    def _rename_database(self, work: PgParams, target: PgParams) -> None:
        """The restored temporary database becomes ``target`` (refused if a database of
        that name appeared meanwhile: it is never replaced)."""
        import psycopg2
        from psycopg2 import sql

        try:
            with self._maintenance(target) as conn, conn.cursor() as cur:
                cur.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(work.dbname), sql.Identifier(target.dbname)
                    )
                )
        except psycopg2.Error as exc:
            detail = redact(str(exc).strip(), target.password)
            raise RestoreRefused(
                f"postgres source {self.name!r}: the restore into the temporary database "
                f"{work.dbname!r} succeeded but it could not be renamed to {target.dbname!r} "
                f"({detail}); a database of that name may have been created meanwhile: "
                "restore again into a new name"
            ) from None
        log.info("renamed the restored database %s to %s", work.dbname, target.describe())

    def _drop_database(self, target: PgParams) -> None:
        from psycopg2 import sql  # type: ignore[import-untyped]

        try:
            with self._maintenance(target) as conn, conn.cursor() as cur:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.dbname))
                )
            log.info("dropped the partly restored %s", target.describe())
        except Exception as exc:  # noqa: BLE001 - the restore's own error matters more; say what is left
            log.warning(
                "could not drop the partly restored %s: %s",
                target.describe(),
                redact(str(exc), target.password),
            )

    @contextmanager
    def _maintenance(self, target: PgParams) -> Iterator[Any]:
        """A connection to a maintenance database of the target server (``postgres``,
        else ``template1``), for CREATE/DROP DATABASE."""
        last: SourceError | None = None
        for db in MAINTENANCE_DBS:
            try:
                conn = _open(target.with_db(db), self.name)
            except SourceError as exc:
                last = exc
                continue
            try:
                yield conn
            finally:
                conn.close()
            return
        assert last is not None
        raise last

    def _materialize(self, manifest: Manifest, stream: BinaryIO, tmp: Path, *, need_file: bool) -> _Archive:
        """Where pg_restore reads the backup from. A custom-format stream goes straight to
        its stdin unless it must be read twice (a partial restore lists its contents
        first): then it is spooled to a file. A directory tar is always extracted."""
        if manifest.payload_format == FORMAT_DIRECTORY_TAR:
            target = tmp / "archive"
            target.mkdir()
            with tarfile.open(fileobj=stream, mode="r|", bufsize=BLOCK_SIZE) as tar:
                tar.extractall(target, filter="data")  # "data": no absolute paths, links out, devices
            return _Archive(target, directory=True)
        if not need_file:
            return _Archive(None, directory=False)
        path = tmp / "archive.dump"
        with open(path, "wb") as f:
            shutil.copyfileobj(stream, f, BLOCK_SIZE)
        return _Archive(path, directory=False)

    def _run_restore(
        self, args: list[str], archive: _Archive, stream: BinaryIO, target: PgParams, *, partial: bool
    ) -> None:
        try:
            if archive.path is not None:
                with _pg_process([*args, str(archive.path)], target, self.name, stdout=subprocess.DEVNULL):
                    pass
                return
            with _pg_process(
                args, target, self.name, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
            ) as proc:
                _feed(proc, stream)
        except SourceError as exc:
            if partial and "other objects depend on it" in str(exc):
                raise SourceError(
                    f"{exc}\nA partial restore over existing tables must include what depends on "
                    "them (tables whose foreign keys point at them, views over them and other "
                    "tables: see DETAIL above), or go into a new database; nothing was changed"
                ) from None
            raise


# --- partial restores ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Archive:
    path: Path | None  # None: stream it into pg_restore's stdin
    directory: bool


@dataclass
class _TocEntry:
    dump_id: int
    oid: int
    kind: str  # TABLE, INDEX, FK CONSTRAINT...
    schema: str
    name: str
    deps: tuple[int, ...] = ()


# Objects that come back with the tables when everything they depend on comes back too.
# Views over restored tables do (over existing tables they must be dropped and re-created
# with them anyway); functions, types and other tables do not: a partial restore is
# about tables.
_FOLLOWS_ITS_TABLE = {
    "ACL", "CHECK CONSTRAINT", "COMMENT", "CONSTRAINT", "DEFAULT", "FK CONSTRAINT", "INDEX",
    "INDEX ATTACH", "POLICY", "ROW SECURITY", "RULE", "SECURITY LABEL", "SEQUENCE",
    "SEQUENCE OWNED BY", "STATISTICS", "TRIGGER", "VIEW",
}  # fmt: skip

_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_SCRIPT_ENTRY = re.compile(r"^-- TOC entry (\d+) \(class \d+ OID (\d+)\)$")
_SCRIPT_DEPS = re.compile(r"^-- Dependencies: ([\d ]+)$")
_SCRIPT_NAME = re.compile(r"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: .*$")


def _partial_restore_list(
    pg_restore: str,
    archive: Path | None,
    only: list[str],
    params: PgParams,
    source_name: str,
    *,
    into_existing: bool,
) -> str:
    """A ``pg_restore --use-list`` file selecting the tables in ``only`` with what belongs
    to them. pg_restore's own ``-t`` brings back a bare table (no primary key, indexes or
    defaults); the dependency lines of its verbose script say what else belongs to it.
    ``into_existing``: keep every foreign key of a selected table, not only those between
    selected tables (the referenced tables are expected in the target)."""
    assert archive is not None
    toc = _run_tool([pg_restore, "--list", str(archive)], params, source_name)
    script = _run_tool(
        [pg_restore, "--verbose", "--schema-only", "--file=-", str(archive)], params, source_name
    )
    entries = _parse_script_entries(script)
    tables = [e for e in entries.values() if e.kind == "TABLE"]
    selected: set[int] = set()
    for wanted in only:
        matches = [e for e in tables if wanted in (e.name, f"{e.schema}.{e.name}")]
        if not matches:
            known = ", ".join(sorted(_table_key(e.schema, e.name) for e in tables)) or "none"
            raise RestoreRefused(f"table {wanted!r} is not in this backup; its tables: {known}")
        if len(matches) > 1:
            names = ", ".join(f"{e.schema}.{e.name}" for e in matches)
            raise RestoreRefused(f"table name {wanted!r} is ambiguous ({names}); give it as schema.table")
        selected.add(matches[0].dump_id)
    table_oids = {entries[i].oid for i in selected}
    table_names = {(entries[i].schema, entries[i].name) for i in selected}
    # What the tables need: sequences their defaults use (standalone ones too).
    for dump_id in list(selected):
        selected.update(d for d in entries[dump_id].deps if d in entries and entries[d].kind == "SEQUENCE")
    # What belongs to them: everything whose dependencies are all restored, to a fixpoint
    # (a sequence owned by the table, then the sequence's OWNED BY...).
    grew = True
    while grew:
        grew = False
        for entry in entries.values():
            if entry.dump_id in selected or entry.kind not in _FOLLOWS_ITS_TABLE or not entry.deps:
                continue
            # A foreign key's name is "<its table> <constraint>".
            own_fk = (
                into_existing
                and entry.kind == "FK CONSTRAINT"
                and (entry.schema, entry.name.split(" ")[0]) in table_names
            )
            if own_fk or set(entry.deps) <= selected:
                selected.add(entry.dump_id)
                grew = True
    sequences = {(entries[i].schema, entries[i].name) for i in selected if entries[i].kind == "SEQUENCE"}
    lines = []
    for line in toc.splitlines():
        m = _TOC_LINE.match(line)
        if not m:
            continue
        dump_id, oid, rest = int(m.group(1)), int(m.group(3)), m.group(4)
        # Data entries are not in the schema-only script: TABLE DATA carries its table's
        # OID; SEQUENCE SET only its name.
        if (
            dump_id in selected
            or (rest.startswith("TABLE DATA ") and oid in table_oids)
            or any(rest.startswith(f"SEQUENCE SET {s} {n} ") for s, n in sequences)
        ):
            lines.append(line)
    return "\n".join(lines) + "\n"


def _parse_script_entries(script: str) -> dict[int, _TocEntry]:
    """The TOC entries of a ``pg_restore --verbose`` script: id, OID, kind, dependencies."""
    entries: dict[int, _TocEntry] = {}
    current: _TocEntry | None = None
    for line in script.splitlines():
        if m := _SCRIPT_ENTRY.match(line):
            current = _TocEntry(dump_id=int(m.group(1)), oid=int(m.group(2)), kind="", schema="", name="")
        elif current is not None and (m := _SCRIPT_DEPS.match(line)):
            current.deps = tuple(int(d) for d in m.group(1).split())
        elif current is not None and (m := _SCRIPT_NAME.match(line)):
            current.name, current.kind, current.schema = m.group(1), m.group(2), m.group(3)
            entries[current.dump_id] = current
            current = None
    return entries


def _run_tool(args: list[str], params: PgParams, source_name: str) -> str:
    """Run a client tool that needs no server (pg_restore --list) and return its stdout."""
    with tempfile.TemporaryFile() as out:
        with _pg_process(args, params, source_name, stdout=out.fileno(), quiet=True):
            pass
        out.seek(0)
        return out.read().decode("utf-8", "replace")


def _matches_any(table_key: str, only: list[str]) -> bool:
    schema, _, table = table_key.rpartition(".")
    qualified = f"{schema or 'public'}.{table}"
    return any(name in (table, qualified, table_key) for name in only)


# --- helpers -------------------------------------------------------------------------------


class _CountingWriter:
    """Passes writes through to ``out`` and counts the bytes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.count = 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.out, "flush", None)
        if flush:
            flush()


@contextmanager
def _pg_process(
    args: list[str],
    params: PgParams,
    source_name: str,
    *,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    quiet: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a PostgreSQL client tool with credentials in its environment only.

    The body talks to the process; on leaving, the process is waited for and a non-zero
    exit becomes a SourceError quoting its stderr (redacted). If the body raises (say the
    output disk is full), the tool is killed and the body's error propagates.
    """
    tool = Path(args[0]).name
    log.log(
        logging.DEBUG if quiet else logging.INFO, "running: %s  [%s]", shlex.join(args), params.describe()
    )
    # stderr to a file, not a pipe: a chatty tool could otherwise block on a full stderr
    # pipe while we wait on its stdout.
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=err, env=params.env())
        except OSError as exc:
            raise SourceError(f"postgres source {source_name!r}: cannot run {args[0]}: {exc}") from None
        try:
            yield proc
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with suppress(BrokenPipeError):
                        pipe.close()
        code = proc.wait()
        err.seek(0)
        detail = redact(err.read().decode("utf-8", "replace").strip(), params.password)
        if code == 0:
            if detail:  # warnings (e.g. about extensions) are worth a look, not a failure
                log.log(logging.DEBUG if quiet else logging.WARNING, "%s: %s", tool, detail)
        else:
            raise SourceError(
                f"postgres source {source_name!r}: {tool} failed (exit {code}) for "
                f"{params.describe()}: {detail or 'no error output'}"
            )


def _feed(proc: subprocess.Popen[bytes], stream: BinaryIO) -> None:
    """Copy ``stream`` into the process's stdin; if it exits early (an error), stop
    feeding and let its exit status and stderr tell why."""
    assert proc.stdin is not None
    while True:
        block = stream.read(BLOCK_SIZE)
        if not block:
            break
        try:
            proc.stdin.write(block)
        except BrokenPipeError:
            return
    with suppress(BrokenPipeError):
        proc.stdin.close()


def _open(params: PgParams, source_name: str) -> Any:
    import psycopg2  # type: ignore[import-untyped]

    try:
        conn = psycopg2.connect(**params.connect_kwargs())
    except psycopg2.Error as exc:
        detail = redact(str(exc).strip(), params.password)
        raise SourceError(
            f"postgres source {source_name!r}: cannot connect to {params.describe()} "
            f"(Airflow connection {params.conn_id!r}): {detail}; check the connection's "
            "host, port, login, password and database, and that the server is running"
        ) from None
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction; reads need none
    return conn


@contextmanager
def _connect(params: PgParams, source_name: str) -> Iterator[Any]:
    import psycopg2  # type: ignore[import-untyped]

    conn = _open(params, source_name)
    try:
        yield conn
    except psycopg2.Error as exc:
        detail = redact(str(exc).strip(), params.password)
        raise SourceError(
            f"postgres source {source_name!r}: query on {params.describe()} failed: {detail}"
        ) from None
    finally:
        conn.close()


_TABLES_SQL = """
SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::bigint
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND n.nspname NOT LIKE 'pg\\_temp%%'
ORDER BY 1, 2
"""


def _table_key(schema: str, table: str) -> str:
    """``users`` for tables in public, ``schema.table`` otherwise."""
    return table if schema == "public" else f"{schema}.{table}"


def _table_row_counts(cur: Any, *, exact: bool) -> dict[str, int]:
    """Row count per user table: exact count(*) or the planner's estimate (reltuples,
    which is 0 for a table never vacuumed or analyzed)."""
    from psycopg2 import sql  # type: ignore[import-untyped]

    cur.execute(_TABLES_SQL)
    rows = cur.fetchall()
    counts: dict[str, int] = {}
    for schema, table, estimate in rows:
        key = _table_key(schema, table)
        if exact:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
            counts[key] = int(cur.fetchone()[0])
        else:
            counts[key] = int(estimate)
    return counts


class _Counting(threading.Thread):
    """Exact count(*) of every table, in the dump's snapshot, beside the running pg_dump
    (psycopg2 releases the GIL while the server counts)."""

    def __init__(self, cur: Any, tables: dict[str, int]) -> None:
        super().__init__(name="pg-row-counts", daemon=True)
        self.cur = cur
        self.tables = tables
        self.error: BaseException | None = None

    def run(self) -> None:
        from psycopg2 import sql

        try:
            self.cur.execute(_TABLES_SQL)
            for schema, table, _estimate in self.cur.fetchall():
                ident = sql.Identifier(schema, table)
                self.cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
                self.tables[_table_key(schema, table)] = int(self.cur.fetchone()[0])
        except BaseException as exc:  # re-raised by the dump, in its own thread
            self.error = exc


def _start_counting(cur: Any, info: dict[str, Any]) -> _Counting:
    counting = _Counting(cur, info["tables"])
    counting.start()
    return counting


RESTORING_MARK = "_restoring_"


def _temp_db_name(dbname: str) -> str:
    """``<dbname>_restoring_<8 hex>``, cut to PostgreSQL's 63 bytes (the name is cut, never
    the mark: a leftover must say what it is)."""
    suffix = f"{RESTORING_MARK}{secrets.token_hex(4)}"
    head = dbname.encode()[: 63 - len(suffix)].decode("utf-8", "ignore")
    return head + suffix


def _dbname_arg(dbname: str) -> str:
    """The value for --dbname: a plain name, or a conninfo string when the name would be
    mistaken for one (contains '=' or looks like a URI)."""
    if "=" in dbname or dbname.startswith(("postgres://", "postgresql://")):
        return "dbname='" + dbname.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return dbname
