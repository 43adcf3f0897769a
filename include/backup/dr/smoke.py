"""DR test smoke queries: user-given SQL, run only in the restored copy, only to read.

Whoever can trigger the ``dr_test`` DAG chooses the smoke queries, so they are untrusted.
Four layers, each covering what the one before cannot:

1. :func:`check_smoke_query`, at param validation (before anything is restored) and again
   before connecting: one statement, starting with SELECT, WITH, VALUES, TABLE, EXPLAIN or
   SHOW, with no keyword that writes (INSERT, UPDATE, DELETE, MERGE, SELECT INTO, COPY,
   CREATE, ...) and no call of a function known to write, read server files, signal
   backends or change settings (``set_config``, ``lo_export``, ``pg_read_file``,
   ``dblink``, ...). This is the only layer that stops ``COPY ... TO PROGRAM``, which a
   read-only transaction allows.
2. Where: the restored copy only, never through the source's connection and never on the
   source's server (:func:`smoke_connection`): a ``conn:<id>`` staging connection on
   another server, or the cluster a physical restore started. A database restored on the
   source's server by name is refused for smoke queries.
3. How: each query in its own transaction, ``READ ONLY`` (and the session's
   ``default_transaction_read_only``), with ``statement_timeout`` and ``lock_timeout``,
   rolled back afterwards.
4. As whom: inside that transaction the role drops to ``pg_read_all_data`` when the
   connection's role may take it (superusers can): no superuser rights, no
   ``pg_execute_server_program``, so even a function of the restored database cannot run
   ``COPY ... TO PROGRAM`` unless it switches the role back itself.

Not covered: a function in the restored database that is SECURITY DEFINER owned by a
superuser, or that runs ``RESET ROLE``, can still do what its owner can; give the staging
connection a role that is not a superuser (see docs/dr.md).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from include.backup.dr.destinations import CONN_PREFIX
from include.backup.errors import RestoreRefused
from include.backup.sources.postgres import PgParams, params_from_connection, redact

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_S = 60.0
LOCK_TIMEOUT_S = 5.0
MAX_QUERY_CHARS = 10_000
READ_ROLE = "pg_read_all_data"  # PostgreSQL 14+: SELECT on everything, nothing else

# What a smoke query may start with: statements that only read.
FIRST_WORDS = frozenset({"select", "with", "values", "table", "explain", "show"})
# Words that, anywhere outside literals and quoted identifiers, make a statement that starts
# with one of those write: data-modifying CTEs, SELECT INTO, FOR UPDATE, EXPLAIN ANALYZE of
# a write, of EXECUTE, DECLARE or CREATE TABLE AS; and, to say so clearly, the statements
# that run programs or change objects.
FORBIDDEN_WORDS = frozenset(
    {
        "insert", "update", "delete", "merge", "into", "execute", "declare", "create",
        "copy", "drop", "alter", "truncate", "grant", "revoke", "do", "call",
    }
)  # fmt: skip
# Functions that write, touch server files, signal other sessions, change settings or
# reach other servers: refused by name (a bonus: the role drop is what stops most).
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "set_config", "pg_reload_conf", "pg_rotate_logfile", "pg_terminate_backend",
        "pg_cancel_backend", "pg_promote", "pg_switch_wal", "pg_switch_xlog",
        "pg_create_restore_point", "pg_stat_file", "pg_notify", "pg_import_system_collations",
        "pg_log_backend_memory_contexts", "pg_start_backup", "pg_stop_backup",
        "pg_drop_replication_slot", "pg_truncate_visibility_map", "pg_stat_statements_reset",
    }
)  # fmt: skip
FORBIDDEN_PREFIXES = (
    "lo_", "pg_read_", "pg_ls_", "pg_file_", "pg_logical_", "pg_replication_", "pg_create_",
    "pg_copy_", "pg_backup_", "pg_wal_replay_", "pg_advisory", "pg_try_advisory",
    "pg_stat_reset", "dblink", "query_to_xml", "binary_upgrade_",
)  # fmt: skip


# --- the statement filter ------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # "word" (unquoted, lower-cased), "ident" (quoted), "punct", "other"
    text: str


_WORD_START = re.compile(r"[A-Za-z_\u0080-\uffff]")
_WORD = re.compile(r"[A-Za-z0-9_$\u0080-\uffff]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


class _Refused(ValueError):
    pass


def _skip_block_comment(sql: str, i: int) -> int:
    """Index after the comment opened at ``i`` (PostgreSQL block comments nest)."""
    depth, i = 1, i + 2
    while depth:
        if i >= len(sql):
            raise _Refused("an unterminated /* comment")
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool = False) -> tuple[int, str]:
    """(index after, content) of the literal opened at ``i``; a doubled quote is one."""
    out: list[str] = []
    i += 1
    while i < len(sql):
        ch = sql[i]
        if backslash and ch == "\\":
            out.append(sql[i : i + 2])
            i += 2
            continue
        if ch == quote:
            if sql.startswith(quote * 2, i):
                out.append(quote)
                i += 2
                continue
            return i + 1, "".join(out)
        out.append(ch)
        i += 1
    raise _Refused(f"an unterminated {quote} literal")


def tokens(sql: str) -> Iterator[Token]:  # noqa: C901 - one branch per lexical element
    """PostgreSQL's lexical elements, as far as the filter needs them (with
    standard_conforming_strings on, which the smoke session sets): comments dropped,
    string constants (plain, E'', dollar-quoted) as "other", quoted identifiers kept."""
    i = 0
    while i < len(sql):
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif ch == "'":
            i, _ = _skip_quoted(sql, i, "'")
            yield Token("other", "'…'")
        elif ch == '"':
            i, name = _skip_quoted(sql, i, '"')
            yield Token("ident", name)
        elif ch == "$" and (m := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end < 0:
                raise _Refused(f"an unterminated {m.group(0)} quote")
            i = end + len(m.group(0))
            yield Token("other", "$…$")
        elif _WORD_START.match(ch):
            rest = _WORD.match(sql, i + 1)  # "*": always matches
            end = rest.end() if rest else i + 1
            word, i = sql[i:end], end
            if word.lower() in ("u", "e") and i < len(sql) and sql[i] == "&":
                raise _Refused("a U& escape (write the characters themselves)")
            if word.lower() == "e" and i < len(sql) and sql[i] == "'":
                i, _ = _skip_quoted(sql, i, "'", backslash=True)
                yield Token("other", "E'…'")
                continue
            yield Token("word", word.lower())
        elif ch in ";()":
            i += 1
            yield Token("punct", ch)
        else:
            i += 1
            yield Token("other", ch)


def _function_refused(name: str) -> bool:
    return name in FORBIDDEN_FUNCTIONS or name.startswith(FORBIDDEN_PREFIXES)


def _check_token(tok: Token, nxt: Token | None) -> None:
    if tok.kind == "word" and tok.text in FORBIDDEN_WORDS:
        raise _Refused(
            f"{tok.text.upper()} is not allowed in a read-only query (a column of that "
            f'name can be written as a quoted identifier, "{tok.text}")'
        )
    if tok.kind == "word" and tok.text == "for" and nxt is not None and nxt.text in ("share", "key", "no"):
        raise _Refused("FOR SHARE / FOR KEY SHARE takes row locks")
    if tok.kind in ("word", "ident") and nxt is not None and nxt.text == "(" and _function_refused(tok.text):
        raise _Refused(
            f"function {tok.text}() writes, reads server files, signals sessions or changes settings"
        )


def _check_tokens(toks: list[Token]) -> str:
    """The statement's first word, if the tokens make one read-only statement."""
    while toks and toks[-1].text == ";":
        toks.pop()
    if any(t.kind == "punct" and t.text == ";" for t in toks):
        raise _Refused("more than one statement (a ';' before the end)")
    first = next((t for t in toks if t.text != "("), None)
    if first is None:
        raise _Refused("no statement")
    if first.kind != "word" or first.text not in FIRST_WORDS:
        allowed = ", ".join(sorted(w.upper() for w in FIRST_WORDS))
        raise _Refused(f"it starts with {first.text.upper()!r}, not one of {allowed}")
    for n, tok in enumerate(toks):
        _check_token(tok, toks[n + 1] if n + 1 < len(toks) else None)
    return first.text


def check_smoke_query(query: Any, index: int) -> str:
    """The query, stripped, if it is one read-only statement; RestoreRefused naming it
    and the reason otherwise. Runs before anything is restored or connected to."""
    if not isinstance(query, str) or not query.strip():
        raise RestoreRefused(f"param 'smoke_queries': query {index} is empty or not a string")
    text = query.strip()
    label = text if len(text) <= 80 else text[:79] + "…"
    if len(text) > MAX_QUERY_CHARS:
        raise RestoreRefused(
            f"param 'smoke_queries': query {index} is {len(text)} characters; at most {MAX_QUERY_CHARS}"
        )
    try:
        _check_tokens(list(tokens(text)))
    except _Refused as exc:
        raise RestoreRefused(
            f"param 'smoke_queries': query {index} ({label}) is refused: {exc}. A smoke query is "
            "one read-only statement (SELECT, WITH ... SELECT, VALUES, TABLE, EXPLAIN, SHOW) that "
            "must return at least one row; it runs read-only in the restored copy"
        ) from None
    return text.rstrip("; \t\r\n")


def first_word(query: str) -> str:
    """The first word of a query that passed :func:`check_smoke_query`."""
    return _check_tokens(list(tokens(query)))


def check_smoke_queries(queries: list[str]) -> list[str]:
    return [check_smoke_query(q, i) for i, q in enumerate(queries, 1)]


# --- where and how they run ----------------------------------------------------------------


def server_key(host: str | None, port: int | None) -> tuple[str, int]:
    """(host, port) with the local spellings folded together: the same server, however named."""
    h = (host or "").strip().lower()
    if h in ("", "localhost", "127.0.0.1", "::1", "0.0.0.0") or h.startswith("/"):  # noqa: S104 - compared, not bound
        h = "local"
    return h, int(port or 5432)


def smoke_place_problem(into: str, *, physical: bool) -> str | None:
    """Why smoke queries cannot run in a copy restored into ``into`` (resolved: ``conn:<id>``,
    an absolute data directory for a ``physical`` source, or else a database name on the
    source's server), or None."""
    if into.startswith(CONN_PREFIX) or (physical and into.startswith("/")):
        return None
    return (
        f"param 'smoke_queries' needs target_environment to be a staging connection "
        f"(conn:<conn_id>, on another server) or, for a physical backup, a data directory: "
        f"{into!r} is a database on the source's server, reached with the source's "
        "credentials, and smoke queries never run there"
    )


def smoke_connection(source_cfg: Any, into: str, stats: Mapping[str, Any]) -> Any:
    """Where the smoke queries of a copy restored into ``into`` run: a PgParams for the
    restored copy only. Refuses the source's connection and the source's server."""
    physical = "port" in stats and "data_dir" in stats  # what a physical restore reports
    problem = smoke_place_problem(into, physical=physical)
    if problem:
        raise RestoreRefused(problem)
    prod = params_from_connection(source_cfg.conn_id, source_cfg.database)
    if physical:
        # A physical restore: the cluster it started on this machine (trust auth as postgres).
        dest = PgParams(
            conn_id=f"restored cluster {stats['data_dir']}",
            host="127.0.0.1",
            port=int(stats["port"]),
            user="postgres",
            password=None,
            dbname=prod.dbname,
        )
    else:
        conn_id = into[len(CONN_PREFIX) :]
        if conn_id == source_cfg.conn_id:
            raise RestoreRefused(f"smoke queries never run through the source's connection {conn_id!r}")
        dest = params_from_connection(conn_id)
        if stats.get("database") and stats["database"] != dest.dbname:
            raise RestoreRefused(
                f"the restore reported database {stats['database']!r}, the connection names "
                f"{dest.dbname!r}: smoke queries run only in the restored copy"
            )
    if server_key(dest.host, dest.port) == server_key(prod.host, prod.port):
        raise RestoreRefused(
            f"smoke queries never run on the source's server ({prod.describe()}): the copy in "
            f"{dest.describe()} is on it; restore into a staging connection on another server"
        )
    return dest


def _session_options(existing: str | None) -> str:
    """libpq ``options``: the connection's own, then read-only defaults that a query cannot
    lift without SET (which the filter refuses)."""
    ours = (
        "-c default_transaction_read_only=on -c standard_conforming_strings=on "
        f"-c statement_timeout={int(STATEMENT_TIMEOUT_S * 1000)} -c lock_timeout={int(LOCK_TIMEOUT_S * 1000)}"
    )
    return f"{existing} {ours}" if existing else ours


@contextmanager
def _session(params: Any) -> Iterator[Any]:
    import psycopg2  # type: ignore[import-untyped]  # lazy: the driver: only when a query runs

    kwargs = params.connect_kwargs()
    kwargs["options"] = _session_options(kwargs.get("options"))
    kwargs["application_name"] = "airflow-backup-dr-smoke"
    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.Error as exc:
        raise RestoreRefused(
            f"cannot connect to the restored copy ({params.describe()}) for the smoke queries: "
            f"{redact(str(exc).strip(), params.password)}"
        ) from None
    conn.autocommit = False
    try:
        yield conn
    finally:
        conn.close()


_CAN_READ_ROLE = (
    "SELECT 1 FROM pg_roles r WHERE r.rolname = %s AND pg_has_role(current_user, r.oid, 'MEMBER')"
)


def _begin_read_only(conn: Any, drop_role: bool) -> None:
    """The first statements of each smoke query's transaction (psycopg2 opens it)."""
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(f"SET LOCAL statement_timeout = {int(STATEMENT_TIMEOUT_S * 1000)}")
        cur.execute(f"SET LOCAL lock_timeout = {int(LOCK_TIMEOUT_S * 1000)}")
        cur.execute("SET LOCAL standard_conforming_strings = on")
        if drop_role:
            cur.execute(f"SET LOCAL ROLE {READ_ROLE}")


def run_smoke_queries(params: Any, queries: list[str]) -> list[str]:
    """Run each query in the copy at ``params``: read-only, timed out, rolled back. Each
    must return at least one row; returns the issues (one per failing query)."""
    checked = check_smoke_queries(queries)  # again: nothing unchecked reaches a server
    issues: list[str] = []
    with _session(params) as conn:
        with conn.cursor() as cur:
            cur.execute(_CAN_READ_ROLE, (READ_ROLE,))
            drop_role = cur.fetchone() is not None
        conn.rollback()
        if not drop_role:
            log.info("smoke queries run as the connection's own role: it may not take %s", READ_ROLE)
        for i, query in enumerate(checked, 1):
            issue = _run_one(conn, query, drop_role)
            if issue:
                label = query if len(query) <= 80 else query[:79] + "…"
                issues.append(f"smoke query {i} ({label}) {issue}")
    return issues


def _run_one(conn: Any, query: str, drop_role: bool) -> str | None:
    import psycopg2  # type: ignore[import-untyped]  # lazy: the driver: only when a query runs

    # A query that returns rows goes through a server-side cursor: one row is fetched,
    # not a whole table into the worker's memory. SHOW and EXPLAIN output is small.
    streamed = first_word(query) in ("select", "with", "values", "table")
    try:
        _begin_read_only(conn, drop_role)
        with conn.cursor(name="dr_smoke") if streamed else conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone() if streamed or cur.description else None
    except psycopg2.Error as exc:
        return f"failed: {str(exc).strip().splitlines()[0]}"
    finally:
        conn.rollback()  # a smoke query never commits anything
    return None if row is not None else "returned no row"
