"""The database a logical restore goes into: checked, created under a temporary name,
renamed to its own name once restored, dropped if the restore fails.

CREATE / ALTER / DROP DATABASE run on a maintenance database of the target server
(``postgres``, else ``template1``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from include.backup.errors import RestoreRefused, SourceError
from include.backup.sources.postgres.client import (
    PgParams,
    connect,
    open_connection,
    redact,
    table_row_counts,
)

log = logging.getLogger(__name__)

MAINTENANCE_DBS = ("postgres", "template1")
RESTORING_MARK = "_restoring_"


@contextmanager
def maintenance(target: PgParams, source_name: str) -> Iterator[Any]:
    """A connection to a maintenance database of the target server (``postgres``,
    else ``template1``), for CREATE/DROP DATABASE."""
    last: SourceError | None = None
    for db in MAINTENANCE_DBS:
        try:
            conn = open_connection(target.with_db(db), source_name)
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


def server_major(target: PgParams, source_name: str) -> int:
    """The major version of the target's server (pg_restore is chosen to match it)."""
    with maintenance(target, source_name) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        return int(cur.fetchone()[0]) // 10000


def check_target(target: PgParams, source_name: str, *, overwrite: bool) -> bool:
    """Whether the database exists; refuses one with tables unless ``overwrite``.
    Runs before anything is written anywhere."""
    with maintenance(target, source_name) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,))
        if cur.fetchone() is None:
            return False
    with connect(target, source_name) as conn, conn.cursor() as cur:
        tables = list(table_row_counts(cur, exact=False))
    if tables and not overwrite:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise RestoreRefused(
            f"{target.describe()} already has {len(tables)} table(s) ({shown}); restore into "
            "a new or empty database, or pass overwrite=True to replace the objects in the "
            "backup (pg_restore --clean --if-exists)"
        )
    return True


def create_database(target: PgParams, source_name: str) -> None:
    """CREATE DATABASE ``target`` from template0."""
    # Imported here: psycopg2 is needed only when a job runs, not to import this module.
    from psycopg2 import sql  # type: ignore[import-untyped]  # lazy: psycopg2: loaded when PostgreSQL is used

    with maintenance(target, source_name) as conn, conn.cursor() as cur:
        # template0: a pristine database, so nothing added to template1 clashes with
        # the objects in the dump.
        cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target.dbname)))
    log.info("created the database to restore into: %s", target.describe())


def rename_database(work: PgParams, target: PgParams, source_name: str) -> None:
    """The restored temporary database becomes ``target`` (refused if a database of
    that name appeared meanwhile: it is never replaced)."""
    import psycopg2  # lazy: here: see create_database
    from psycopg2 import sql  # lazy: psycopg2: loaded when PostgreSQL is used

    try:
        with maintenance(target, source_name) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(work.dbname), sql.Identifier(target.dbname)
                )
            )
    except psycopg2.Error as exc:
        detail = redact(str(exc).strip(), target.password)
        raise RestoreRefused(
            f"postgres source {source_name!r}: the restore into the temporary database "
            f"{work.dbname!r} succeeded but it could not be renamed to {target.dbname!r} "
            f"({detail}); a database of that name may have been created meanwhile: "
            "restore again into a new name"
        ) from None
    log.info("renamed the restored database %s to %s", work.dbname, target.describe())


def drop_database(target: PgParams, source_name: str) -> None:
    """DROP DATABASE ``target`` (a partly restored one); a failure is logged, not raised."""
    from psycopg2 import sql  # type: ignore[import-untyped]  # lazy: here: see create_database

    try:
        with maintenance(target, source_name) as conn, conn.cursor() as cur:
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


def temp_db_name(dbname: str) -> str:
    """``<dbname>_restoring_<8 hex>``, cut to PostgreSQL's 63 bytes (the name is cut, never
    the mark: a leftover must say what it is)."""
    suffix = f"{RESTORING_MARK}{secrets.token_hex(4)}"
    head = dbname.encode()[: 63 - len(suffix)].decode("utf-8", "ignore")
    return head + suffix


def dbname_arg(dbname: str) -> str:
    """The value for --dbname: a plain name, or a conninfo string when the name would be
    mistaken for one (contains '=' or looks like a URI)."""
    if "=" in dbname or dbname.startswith(("postgres://", "postgresql://")):
        return "dbname='" + dbname.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return dbname
