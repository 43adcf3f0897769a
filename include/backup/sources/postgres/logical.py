"""PostgreSQL logical backups: pg_dump (FULL, SCHEMA) and pg_restore.

:class:`PostgresSource` is the source for ``type: postgres``. With ``method: physical``
(config) FULL / INCREMENTAL / TRANSACTION_LOG backups and point-in-time recovery are
delegated to :class:`~include.backup.sources.postgres.physical.PhysicalPostgres`
(pg_basebackup + WAL); SCHEMA stays a pg_dump. Restores dispatch on the payload format.
Connections and client tools: :mod:`include.backup.sources.postgres.client`; partial
restores: :mod:`include.backup.sources.postgres.toc`.

Payload formats (what :meth:`PostgresSource.restore` dispatches on):
  ``pg_dump-custom``         pg_dump --format=custom --compress=0, as pg_dump wrote it
  ``pg_dump-directory-tar``  pg_dump --format=directory (parallel with ``jobs``), as a tar
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from include.backup import faults
from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import PostgresSource as PostgresSourceConfig
from include.backup.errors import RestoreRefused, SourceError
from include.backup.sources.base import DumpResult, drain
from include.backup.sources.postgres import databases
from include.backup.sources.postgres.client import (
    BLOCK_SIZE,
    TABLES_SQL,
    PgParams,
    connect,
    feed,
    find_client_binary,
    params_from_connection,
    pg_process,
    table_key,
    table_row_counts,
)
from include.backup.sources.postgres.consistency import explain_failure, lock_tables
from include.backup.sources.postgres.physical import PhysicalPostgres
from include.backup.sources.postgres.readahead import ReadAhead, read_ahead, widen_pipe
from include.backup.sources.postgres.toc import matches_any, partial_restore_list
from include.backup.sources.postgres.wal import PHYSICAL_FORMATS, continuity

log = logging.getLogger(__name__)

FORMAT_CUSTOM = "pg_dump-custom"
FORMAT_DIRECTORY_TAR = "pg_dump-directory-tar"
PAYLOAD_FORMATS = (FORMAT_CUSTOM, FORMAT_DIRECTORY_TAR)
SUPPORTED_BACKUP_TYPES = ("FULL", "SCHEMA")

EXACT_COUNT_LIMIT = 1 << 30
"""Below this database size (bytes) the stats use exact count(*); above, the planner's
estimate (pg_class.reltuples), because counting a big database would double the dump time."""

CONN_PREFIX = "conn:"


# --- the source ----------------------------------------------------------------------------


class PostgresSource:
    """Logical backups of one PostgreSQL database; physical ones delegated (see the
    module docstring)."""

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

    def _physical(self) -> PhysicalPostgres:
        return PhysicalPostgres(self.name, self.cfg, work_dir=self.work_dir)

    def continuity(self, prev: Manifest, cur: Manifest) -> str | None:
        """For chains (include.backup.catalog.chains): None when ``cur``'s WAL starts right
        after ``prev``'s, else the gap. Logical backups form no chains: always None."""
        return continuity(prev, cur)

    def estimated_size(self) -> int:
        """``pg_database_size`` (of every database for a physical backup): what the dump's
        progress counts against. An estimate: a logical dump leaves out indexes and free
        space, so it usually ends below it."""
        params = params_from_connection(self.cfg.conn_id, self.cfg.database)
        physical = getattr(self.cfg, "method", "logical") == "physical"
        query = "SELECT sum(pg_database_size(oid)) FROM pg_database" if physical else (
            "SELECT pg_database_size(current_database())"
        )
        with connect(params, self.name) as conn, conn.cursor() as cur:
            cur.execute(query)
            return int(cur.fetchone()[0])

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
        with connect(params, self.name) as conn:
            # A transaction must stay open for the exported snapshot to live.
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
            cur = conn.cursor()
            info = self._server_info_in(cur, with_counts=not schema_only)
            faults.hit("dump.snapshot-taken")  # a test hook: snapshot read, no lock held yet
            if info["row_count_method"] == "exact":
                # Counting would take these locks table by table; taken at once, a DROP from
                # now on waits for the dump (pg_dump's own locks come a moment later).
                lock_tables(cur, self.name)
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
            except Exception as exc:
                # A table dropped before pg_dump locked it: say so instead of pg_dump's
                # words about snapshots and OIDs.
                clearer = explain_failure(params, self.name, info["tables"], exc)
                if clearer is None:
                    raise
                raise clearer from exc
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
        """pg_dump to stdout, copied into ``out`` block by block, read ahead on a thread so
        that pg_dump goes on while ``out`` compresses (:mod:`.readahead`)."""
        with pg_process(args, params, self.name, stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            widen_pipe(proc.stdout)
            written = 0
            with closing(read_ahead(proc.stdout, BLOCK_SIZE)) as blocks:
                for block in blocks:
                    out.write(block)
                    written += len(block)
                    faults.hit("dump.mid-read")  # a test hook: pg_dump running, its locks held
        return written

    def _dump_directory(self, params: PgParams, args: list[str], out: BinaryIO) -> int:
        """pg_dump -Fd (parallel) into a temp dir, then that dir as a tar stream into ``out``."""
        with tempfile.TemporaryDirectory(prefix="pgdump-", dir=self.work_dir) as tmp:
            target = Path(tmp) / "dump"
            cmd = [*args, "--format=directory", f"--file={target}"]
            if self.cfg.jobs > 1:
                cmd.append(f"--jobs={self.cfg.jobs}")
            with pg_process(cmd, params, self.name, stdout=subprocess.DEVNULL):
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
        exact = _exact_counts(self.cfg.row_counts, size)
        tables = table_row_counts(cur, exact=False)
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
        pushed: Any = None,  # physical: pushed WAL to replay after the base (wal/plan.py)
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
        if links and links[0][0].payload_format in PHYSICAL_FORMATS:
            # pg_basebackup-tar (+ pg_wal-tar): a physical restore into a new data directory.
            return self._physical().restore(
                links, into, only=only, overwrite=overwrite, until=until, pushed=pushed
            )
        chain = links
        if until is not None:
            raise RestoreRefused(
                f"postgres source {self.name!r}: point-in-time recovery needs physical "
                "backups (base backup + TRANSACTION_LOG WAL backups, source method: physical); "
                "this source takes logical pg_dump backups — restore one by its id instead"
            )
        manifest, stream = self._single_backup(chain)
        target = self._restore_target(into)
        server_major = databases.server_major(target, self.name)
        exists = databases.check_target(target, self.name, overwrite=overwrite)
        pg_restore = find_client_binary("pg_restore", server_major)
        # Nothing that looks restored before the whole payload authenticated (the
        # container's last chunk is only checked when read):
        # - a new database is restored under a temporary name, renamed to ``into`` at the
        #   end, dropped on any failure (a crashed worker leaves "<into>_restoring_<hex>",
        #   never something named ``into``);
        # - into an existing database the dump is spooled to a file and read to its end
        #   before pg_restore starts, and restored in one transaction.
        work = target if exists else target.with_db(databases.temp_db_name(target.dbname))
        # Parallel (pg_restore -j) only into a database created here (see below); a custom
        # archive then has to be a file: pg_restore's workers seek in it.
        jobs = 1 if exists else (self.cfg.restore_jobs or self.cfg.jobs)
        with tempfile.TemporaryDirectory(prefix="pgrestore-", dir=self.work_dir) as tmp:
            archive = self._materialize(
                manifest, stream, Path(tmp), need_file=bool(only) or exists or jobs > 1
            )
            if archive.path is not None:
                drain(stream)  # the spooled or extracted payload authenticated to its end
            args = [
                pg_restore,
                "--no-password",
                f"--dbname={databases.dbname_arg(work.dbname)}",
                "--no-owner",
                "--exit-on-error",
            ]
            if only:
                listing = partial_restore_list(
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
            args.append(f"--jobs={jobs}" if jobs > 1 else "--single-transaction")
            args.append("--format=directory" if archive.directory else "--format=custom")
            if not exists:
                databases.create_database(work, self.name)
            try:
                # restore_settings (PGOPTIONS) for pg_restore's sessions only.
                tuned = work.with_settings(self.cfg.restore_settings)
                self._run_restore(args, archive, stream, tuned, partial=bool(only))
                drain(stream)  # streamed into pg_restore: its tail is checked here
                if not exists:
                    databases.rename_database(work, target, self.name)
            except BaseException:
                if not exists:  # leave nothing that looks like a restored database
                    databases.drop_database(work, self.name)
                raise
        with connect(target, self.name) as conn, conn.cursor() as cur:
            counts = table_row_counts(cur, exact=True)
        if only:
            counts = {t: n for t, n in counts.items() if matches_any(t, only)}
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

    def _materialize(self, manifest: Manifest, stream: BinaryIO, tmp: Path, *, need_file: bool) -> _Archive:
        """Where pg_restore reads the backup from. A custom-format stream goes straight to
        its stdin unless it must be read twice (a partial restore lists its contents
        first): then it is spooled to a file. A directory tar is always extracted.

        Spooled and extracted with the stream decoded on a thread of its own while this one
        writes (:class:`.readahead.ReadAhead`): once the server's writes have filled the
        page cache the kernel throttles the spool's writes, and decoding in turns with them
        took a 700 MB dump's spool 2.6 s (1.7 s now) and its directory's extraction 1.8 s
        (0.9 s now) in bench/bench_pg_restore.py."""
        if manifest.payload_format == FORMAT_DIRECTORY_TAR:
            target = tmp / "archive"
            target.mkdir()
            with closing(ReadAhead(stream, BLOCK_SIZE)) as ahead:
                with tarfile.open(fileobj=ahead, mode="r|", bufsize=BLOCK_SIZE) as tar:
                    tar.extractall(target, filter="data")  # "data": no absolute paths, links out, devices
                drain(cast(BinaryIO, ahead))  # the tar end marker is not the stream end: read on
            return _Archive(target, directory=True)
        if not need_file:
            return _Archive(None, directory=False)
        path = tmp / "archive.dump"
        with open(path, "wb") as f, closing(ReadAhead(stream, BLOCK_SIZE)) as ahead:
            shutil.copyfileobj(ahead, f, BLOCK_SIZE)
        return _Archive(path, directory=False)

    def _run_restore(
        self, args: list[str], archive: _Archive, stream: BinaryIO, target: PgParams, *, partial: bool
    ) -> None:
        try:
            if archive.path is not None:
                with pg_process([*args, str(archive.path)], target, self.name, stdout=subprocess.DEVNULL):
                    pass
                return
            with pg_process(
                args, target, self.name, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
            ) as proc, closing(ReadAhead(stream, BLOCK_SIZE)) as ahead:
                assert proc.stdin is not None
                widen_pipe(proc.stdin)
                feed(proc, cast(BinaryIO, ahead))  # decoded on a thread while pg_restore reads
        except SourceError as exc:
            if partial and "other objects depend on it" in str(exc):
                raise SourceError(
                    f"{exc}\nA partial restore over existing tables must include what depends on "
                    "them (tables whose foreign keys point at them, views over them and other "
                    "tables: see DETAIL above), or go into a new database; nothing was changed"
                ) from None
            raise


@dataclass(frozen=True)
class _Archive:
    path: Path | None  # None: stream it into pg_restore's stdin
    directory: bool


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


class _Counting(threading.Thread):
    """Exact count(*) of every table, in the dump's snapshot, beside the running pg_dump
    (psycopg2 releases the GIL while the server counts)."""

    def __init__(self, cur: Any, tables: dict[str, int]) -> None:
        super().__init__(name="pg-row-counts", daemon=True)
        self.cur = cur
        self.tables = tables
        self.error: BaseException | None = None

    def run(self) -> None:
        # Imported here: psycopg2 is needed only when a job runs, not to import this module.
        from psycopg2 import sql  # type: ignore[import-untyped]  # lazy: psycopg2: loaded when PostgreSQL is used

        try:
            self.cur.execute(TABLES_SQL)
            for schema, table, _estimate in self.cur.fetchall():
                ident = sql.Identifier(schema, table)
                self.cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
                self.tables[table_key(schema, table)] = int(self.cur.fetchone()[0])
        except BaseException as exc:  # re-raised by the dump, in its own thread
            self.error = exc


def _exact_counts(setting: str, database_size: int) -> bool:
    """Whether a dump counts its rows exactly (``row_counts``: see the config schema)."""
    if setting == "auto":
        return database_size < EXACT_COUNT_LIMIT
    return setting == "exact"


def _start_counting(cur: Any, info: dict[str, Any]) -> _Counting:
    counting = _Counting(cur, info["tables"])
    counting.start()
    return counting
