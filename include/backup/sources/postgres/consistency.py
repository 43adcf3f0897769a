"""Tables that change while a logical dump starts: locked at once, or a clear error.

pg_dump reads one snapshot and takes ACCESS SHARE locks on every table it dumps, so once it
holds them a DROP or ALTER TABLE waits for the dump to end and the backup is the database at
the snapshot. The gap is between the snapshot and those locks: a table dropped there makes
pg_dump (or the exact row counts) fail with a message about snapshots or OIDs. Here the dump's
own transaction locks the tables right after its snapshot when it counts them exactly (it
would hold the same locks once counted), and a failure is explained by naming the tables
that are gone.
"""

from __future__ import annotations

from typing import Any

from include.backup.errors import SourceError
from include.backup.sources.postgres.client import TABLES_SQL, PgParams, connect, table_key

RETRY_HINT = (
    "run the backup again; once pg_dump holds its locks a DROP or ALTER TABLE waits for the "
    "dump to end, so only the first moments of a dump are exposed"
)


def lock_tables(cur: Any, source_name: str) -> None:
    """ACCESS SHARE on every table of the snapshot, in one statement: a DROP from now on
    waits for the dump. A table dropped since the snapshot is a clear SourceError."""
    from psycopg2 import errors, sql  # type: ignore[import-untyped]  # lazy: psycopg2: loaded when PostgreSQL is used

    cur.execute(TABLES_SQL)
    names = [(schema, table) for schema, table, _ in cur.fetchall()]
    if not names:
        return
    statement = sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
        sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in names)
    )
    try:
        cur.execute(statement)
    except errors.UndefinedTable as exc:
        raise SourceError(
            f"postgres source {source_name!r}: a table was dropped as the dump began, after "
            f"its snapshot and before its locks ({str(exc).strip().splitlines()[0]}); the "
            f"backup would not be consistent, so none was made; {RETRY_HINT}"
        ) from None


def vanished_tables(params: PgParams, source_name: str, tables: dict[str, int]) -> list[str]:
    """The tables of ``tables`` (the dump's snapshot) that no longer exist."""
    with connect(params, source_name) as conn:
        cur = conn.cursor()
        cur.execute(TABLES_SQL)
        now = {table_key(schema, table) for schema, table, _ in cur.fetchall()}
    return sorted(set(tables) - now)


def explain_failure(
    params: PgParams, source_name: str, tables: dict[str, int], exc: BaseException
) -> SourceError | None:
    """A clear error when the dump failed because tables were dropped under it; None when
    none was (the original error stands)."""
    try:
        gone = vanished_tables(params, source_name, tables)
    except Exception:  # noqa: BLE001 - the original error matters more than this check
        return None
    if not gone:
        return None
    return SourceError(
        f"postgres source {source_name!r}: table(s) {', '.join(gone)} were dropped as the "
        f"dump began, before pg_dump locked them, and the dump failed ({str(exc)[:300]}); no "
        f"backup was made; {RETRY_HINT}"
    )
