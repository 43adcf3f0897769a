"""The PostgreSQL client layer shared by the logical and the physical source.

Connection details come from an Airflow connection, looked up when a dump or restore runs
(never at import or DAG parse time). Credentials reach the client tools (pg_dump,
pg_restore, pg_basebackup...) only through their environment (PGPASSWORD...), never on the
command line, where ``ps`` would show them, and never in logs.

Here: connection parameters (:class:`PgParams`, :func:`params_from_connection`), finding
client binaries for a server version, running them (:func:`pg_process`), psycopg2
connections (:func:`connect`) and the per-table row counts both sources record.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from include.backup.errors import SourceError

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
"""Bytes per read/write between pg_dump/pg_restore and our streams: large blocks keep the
per-call overhead negligible while memory stays flat."""


CONNECT_TIMEOUT_S = 15

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

    def with_settings(self, settings: Mapping[str, str]) -> PgParams:
        """The same connection with server settings for its sessions (PGOPTIONS
        ``-c name=value``), after the connection's own ``options`` (the later one wins)."""
        if not settings:
            return self
        extra = dict(self.extra)
        ours = " ".join(f"-c {name}={value}" for name, value in settings.items())
        extra["options"] = f"{extra['options']} {ours}" if extra.get("options") else ours
        return replace(self, extra=tuple(extra.items()))

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
    from airflow.sdk import BaseHook  # lazy: Airflow: not loaded by the CLI and config checks

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


# --- running client tools ------------------------------------------------------------------


@contextmanager
def pg_process(
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


def feed(proc: subprocess.Popen[bytes], stream: BinaryIO) -> None:
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


def run_tool(args: list[str], params: PgParams, source_name: str) -> str:
    """Run a client tool that needs no server (pg_restore --list) and return its stdout."""
    with tempfile.TemporaryFile() as out:
        with pg_process(args, params, source_name, stdout=out.fileno(), quiet=True):
            pass
        out.seek(0)
        return out.read().decode("utf-8", "replace")


# --- connections ---------------------------------------------------------------------------


def open_connection(params: PgParams, source_name: str) -> Any:
    """A psycopg2 connection (autocommit) to ``params``; a failure names the connection."""
    # Imported here: psycopg2 is needed only when a job runs, not to import this module.
    import psycopg2  # type: ignore[import-untyped]  # lazy: psycopg2: loaded when PostgreSQL is used

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
def connect(params: PgParams, source_name: str) -> Iterator[Any]:
    """:func:`open_connection` for a block; a failed query becomes a (redacted) SourceError."""
    import psycopg2  # type: ignore[import-untyped]  # lazy: here: see open_connection

    conn = open_connection(params, source_name)
    try:
        yield conn
    except psycopg2.Error as exc:
        detail = redact(str(exc).strip(), params.password)
        raise SourceError(
            f"postgres source {source_name!r}: query on {params.describe()} failed: {detail}"
        ) from None
    finally:
        conn.close()


# --- row counts ----------------------------------------------------------------------------


TABLES_SQL = """
SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::bigint
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND n.nspname NOT LIKE 'pg\\_temp%%'
ORDER BY 1, 2
"""


def table_key(schema: str, table: str) -> str:
    """``users`` for tables in public, ``schema.table`` otherwise."""
    return table if schema == "public" else f"{schema}.{table}"


def table_row_counts(cur: Any, *, exact: bool) -> dict[str, int]:
    """Row count per user table: exact count(*) or the planner's estimate (reltuples,
    which is 0 for a table never vacuumed or analyzed)."""
    from psycopg2 import sql  # type: ignore[import-untyped]  # lazy: here: see open_connection

    cur.execute(TABLES_SQL)
    rows = cur.fetchall()
    counts: dict[str, int] = {}
    for schema, table, estimate in rows:
        key = table_key(schema, table)
        if exact:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
            counts[key] = int(cur.fetchone()[0])
        else:
            counts[key] = int(estimate)
    return counts
