"""The ``promote_standby`` failover switch: a PostgreSQL hot standby promoted with
``pg_promote()``, after recording how far its replay was behind (the data-loss window),
and the checks of the promoted server that the failover's verify step runs.

- :func:`promote_standby`: the switch itself (idempotent: a server promoted by a previous
  try is accepted; a server that never was a standby is refused, changing nothing);
- :func:`standby_holds_the_data`: the restore step's result after it (nothing restored);
- :func:`verify_standby`: out of recovery, takes a write, holds every table of the latest
  backup, and how far it was behind the primary and the backup (:func:`standby_findings`).

The orchestration (assess → switch → restore → verify → notify) is
:mod:`include.backup.dr.failover`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from include.backup.alerts.notify import redact
from include.backup.config.schema import BackupConfig
from include.backup.dr import restore as dr_restore  # module attribute: tests replace locate
from include.backup.dr.destinations import CONN_PREFIX
from include.backup.errors import BackupError

log = logging.getLogger(__name__)

# One round trip for everything the decision and the report need. The timeline comes from
# the WAL file name of the insert position: pg_control_checkpoint() only moves to the new
# timeline after the end-of-recovery checkpoint, which can take minutes after a promote.
_STANDBY_STATE_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
       pg_last_wal_replay_lsn()::text,
       pg_last_wal_receive_lsn()::text,
       pg_last_xact_replay_timestamp(),
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8,
       current_setting('default_transaction_read_only') = 'on'
"""

_USER_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
"""

Decision = Literal["promote", "already_promoted", "not_standby"]


@dataclass(frozen=True)
class StandbyState:
    """What a PostgreSQL server says about its replication role. After a promotion the
    replay position and timestamp stay readable until the server restarts."""

    in_recovery: bool
    timeline: int | None  # the WAL timeline it writes on; None while in recovery
    replay_lsn: str | None  # pg_last_wal_replay_lsn()
    receive_lsn: str | None  # pg_last_wal_receive_lsn()
    last_replayed_at: datetime | None  # commit time of the last transaction replayed
    replay_lag_seconds: float | None  # the server's clock minus last_replayed_at
    read_only_default: bool  # default_transaction_read_only

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StandbyState:
        in_recovery, timeline, replay, receive, replayed_at, lag, read_only = row
        return cls(
            in_recovery=bool(in_recovery),
            timeline=int(timeline) if timeline is not None else None,
            replay_lsn=replay,
            receive_lsn=receive,
            last_replayed_at=replayed_at,
            replay_lag_seconds=None if lag is None else round(max(float(lag), 0.0), 3),
            read_only_default=bool(read_only),
        )


def read_standby_state(cur: Any) -> StandbyState:
    cur.execute(_STANDBY_STATE_SQL)
    return StandbyState.from_row(tuple(cur.fetchone()))


def promotion_decision(state: StandbyState) -> Decision:
    """In recovery: promote it. Out of recovery on a timeline after 1: promoted earlier
    (every promotion starts a new timeline, initdb's is 1), typically by a previous try of
    this task, so there is nothing left to do. Out of recovery on timeline 1: it was never
    a standby (most likely the primary itself): refused."""
    if state.in_recovery:
        return "promote"
    if state.timeline is not None and state.timeline > 1:
        return "already_promoted"
    return "not_standby"


def lsn_bytes(lsn: str) -> int:
    """A WAL position (``16/B374D848``) as a byte offset, to subtract two of them."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def _clean(exc: BaseException, password: str | None) -> str:
    """A driver's message on one line, with the connection's password (should a driver
    ever quote it) and anything else secret-looking masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    return redact(text)


@contextmanager
def standby_cursor(conn_id: str, database: str | None = None) -> Iterator[tuple[Any, str]]:
    """``(cursor, "host:port")`` on the Airflow Postgres connection ``conn_id`` (its own
    database, or ``database``), in autocommit. Errors become BackupErrors that name the
    connection and the server, never the password."""
    # The Postgres provider pulls in SQLAlchemy and the DB-API driver: only when connecting.
    from airflow.providers.postgres.hooks.postgres import (
        PostgresHook,  # lazy: provider hook: loaded when the connection is used
    )

    hook = PostgresHook(postgres_conn_id=conn_id, database=database) if database else PostgresHook(
        postgres_conn_id=conn_id
    )
    try:
        conn_info = hook.connection
    except Exception as exc:  # noqa: BLE001 - AirflowNotFoundException, a secrets backend down
        raise BackupError(
            f"Airflow connection {conn_id!r} could not be loaded ({_clean(exc, None)}); create it "
            f"(UI: Admin > Connections, or env AIRFLOW_CONN_{conn_id.upper()}="
            "'postgres://user:password@standby-host:5432/dbname')"
        ) from None
    server = f"{conn_info.host or 'local socket'}:{conn_info.port or 5432}"
    password = conn_info.password
    try:
        conn: Any = hook.get_conn()  # psycopg 3 or psycopg2, as the provider picks
    except Exception as exc:  # noqa: BLE001 - psycopg / psycopg2 OperationalError
        raise BackupError(
            f"cannot connect to {server} (Airflow connection {conn_id!r}): {_clean(exc, password)}; "
            "check the connection's host, port, login and password, and that the server is running"
        ) from None
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            yield cur, server
    except BackupError:
        raise
    except Exception as exc:  # noqa: BLE001 - the driver's errors, whichever driver the hook uses
        detail = _clean(exc, password)
        if "permission denied for function pg_promote" in detail:
            detail += (
                " (connect as a superuser, or GRANT EXECUTE ON FUNCTION pg_promote TO the "
                "connection's login)"
            )
        raise BackupError(f"query on {server} (Airflow connection {conn_id!r}) failed: {detail}") from None
    finally:
        conn.close()


def _replay_facts(state: StandbyState) -> dict[str, Any]:
    return {
        "replay_lsn": state.replay_lsn,
        "receive_lsn": state.receive_lsn,
        "last_replayed_at": _iso(state.last_replayed_at),
    }


def _lag_text(state: StandbyState) -> str:
    if state.last_replayed_at is None:
        return "no transaction replayed since the standby started"
    return (
        f"last replayed transaction committed at {_iso(state.last_replayed_at)}, "
        f"{state.replay_lag_seconds:.1f} s before the promotion: transactions the primary "
        "committed after it are not on the promoted server"
    )


def promote_standby(conn_id: str, timeout_seconds: int) -> dict[str, Any]:
    """Promote the hot standby behind ``conn_id`` and return the switch step's result:
    ``promoted`` (this run did it) or ``already_promoted`` (a retry), the replay position
    and ``last_replayed_at`` / ``replay_lag_seconds`` read just before the promotion (the
    data-loss window), the new ``timeline``. Raises BackupError, changing nothing, when the
    server is not a standby; raises when pg_promote does not finish in time."""
    with standby_cursor(conn_id) as (cur, server):
        before = read_standby_state(cur)
        decision = promotion_decision(before)
        facts: dict[str, Any] = {"conn_id": conn_id, "server": server, **_replay_facts(before)}
        if decision == "not_standby":
            raise BackupError(
                f"failover switch: {server} (Airflow connection {conn_id!r}) is not a standby: "
                "pg_is_in_recovery() is false and it writes on timeline 1, so it was never promoted "
                "either (it looks like a primary); nothing was changed. Point "
                "dr.failover.<source>.switch.conn_id at the hot standby (a server replicating "
                "from the primary: standby.signal and primary_conninfo, as pg_basebackup -R sets up)"
            )
        if decision == "already_promoted":
            detail = (
                f"{server} (connection {conn_id!r}) is already out of recovery on timeline "
                f"{before.timeline}: promoted earlier (a previous try of this task?); nothing to do"
                + (f"; its last replayed transaction committed at {facts['last_replayed_at']}"
                   if facts["last_replayed_at"] else "")
            )
            log.info("failover switch: %s", detail)
            return {**facts, "promoted": False, "already_promoted": True, "timeline": before.timeline,
                    "replay_lag_seconds": None, "detail": detail}
        log.info("failover switch: promoting %s (connection %r); %s", server, conn_id, _lag_text(before))
        cur.execute("SET statement_timeout = 0")  # pg_promote's own wait_seconds bounds it
        cur.execute("SELECT pg_promote(wait => true, wait_seconds => %(s)s)", {"s": int(timeout_seconds)})
        row = cur.fetchone()
        if not (row and row[0]):
            raise BackupError(
                f"failover switch: pg_promote on {server} (connection {conn_id!r}) returned false: "
                f"the standby did not finish its promotion within {timeout_seconds} s "
                "(switch.timeout_seconds). It may still complete: read its server log, then clear "
                "this task (a server promoted meanwhile is accepted as done)"
            )
        after = read_standby_state(cur)
        if after.in_recovery:
            raise BackupError(
                f"failover switch: {server} is still in recovery after pg_promote returned true"
            )
    detail = (
        f"promoted standby {server} (connection {conn_id!r}) to timeline {after.timeline}; "
        f"{_lag_text(before)}"
    )
    log.info("failover switch: %s", detail)
    return {**facts, "promoted": True, "already_promoted": False, "timeline": after.timeline,
            "replay_lag_seconds": before.replay_lag_seconds, "detail": detail}


def standby_holds_the_data(
    conn_id: str, backup_id: str | None, target: str | None, switched: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The restore step's result when the switch promotes a standby: nothing is restored
    (a backup is older than what the standby replayed, and a standby cannot be written);
    what verify needs to check the standby instead."""
    switched = switched or {}
    dry_run = not switched.get("done", False)
    if dry_run:
        detail = (
            f"skipped: dry run: the standby {CONN_PREFIX}{conn_id} would be promoted and hold the "
            "data; no backup is restored over a standby (verify checks it read-only)"
        )
    else:
        detail = (
            f"skipped: the standby {CONN_PREFIX}{conn_id} was promoted, it holds the data "
            f"(backup {backup_id} not restored over it)"
        )
    keep = ("server", "promoted", "already_promoted", "timeline", "replay_lsn", "receive_lsn",
            "last_replayed_at", "replay_lag_seconds")
    return {
        "skipped": True,
        "detail": detail,
        "backup_id": backup_id,
        "target": target,
        "into": f"{CONN_PREFIX}{conn_id}",
        "standby_conn_id": conn_id,
        "dry_run": dry_run,
        "switch": {k: switched[k] for k in keep if k in switched},
        "chain": [],
        "seconds": 0.0,
        "stats": {},
    }


def standby_findings(
    state: StandbyState,
    *,
    promoted: bool,
    tables: set[str],
    recorded_tables: Mapping[str, Any] | None,
    backup_id: str,
    backup_lsn: str | None,
    switched: Mapping[str, Any],
    write_error: str | None,
) -> tuple[list[str], list[str]]:
    """(issues, notes) of verify after promote_standby: the server's role, the backup's
    tables, and how far it was behind the primary and the latest backup."""
    issues: list[str] = []
    notes: list[str] = []
    if promoted:
        if state.in_recovery:
            issues.append("the promoted server is still in recovery: it does not accept writes")
        elif write_error:
            issues.append(f"the promoted server does not accept writes: {write_error}")
        elif state.read_only_default:
            issues.append("default_transaction_read_only is on: clients get read-only transactions; "
                          "turn it off on the promoted server")
    else:
        # A dry run asks "would the failover work now": only a server still replicating does.
        decision = promotion_decision(state)
        if decision == "not_standby":
            issues.append("the standby is not in recovery and was never promoted (timeline 1): it is "
                          "not a standby, a live failover would refuse it")
        elif decision == "already_promoted":
            issues.append(f"the standby is already out of recovery (timeline {state.timeline}): it no "
                          "longer replicates from the primary, a failover would promote nothing; "
                          "re-create the standby or point switch.conn_id at the current one")
    if recorded_tables is None:
        notes.append("the backup records no table list (physical backup): tables not compared")
    else:
        missing = sorted(set(recorded_tables) - tables)
        issues += [f"table {t} of backup {backup_id} is missing on the standby" for t in missing]
        notes.append(f"{len(recorded_tables) - len(missing)} of {len(recorded_tables)} tables of "
                     f"backup {backup_id} present")
    lag = switched.get("replay_lag_seconds") if promoted else state.replay_lag_seconds
    last = switched.get("last_replayed_at") if promoted else _iso(state.last_replayed_at)
    if last is not None and (promoted or state.in_recovery):
        when = "before the promotion" if promoted else "ago"
        notes.append(f"behind the primary: last replayed transaction committed at {last}"
                     + (f", {float(lag):.1f} s {when}" if lag is not None else ""))
    # After a promotion pg_last_wal_replay_lsn() is where recovery ended: every WAL record
    # the standby had received is in, which is more than the switch saw before promoting.
    replay = state.replay_lsn or switched.get("replay_lsn")
    if backup_lsn and replay:
        ahead = lsn_bytes(replay) - lsn_bytes(backup_lsn)
        if ahead >= 0:
            notes.append(f"the standby replayed {ahead} bytes of WAL past the start of backup "
                         f"{backup_id} ({backup_lsn}): it holds everything the backup holds, and newer")
        else:
            issues.append(
                f"the standby replayed WAL only up to {replay}, {-ahead} bytes before backup "
                f"{backup_id} started ({backup_lsn}): changes in that backup may be missing here; "
                "restore the backup elsewhere (restore DAG) and compare before clients write"
            )
    elif not backup_lsn:
        notes.append(f"backup {backup_id} records no WAL position: standby and backup not compared")
    return issues, notes


def _write_probe(cur: Any) -> str | None:
    """None when the server takes a write transaction, else why not. A temporary table,
    rolled back: it touches no user data."""
    try:
        cur.execute("BEGIN")
        cur.execute("CREATE TEMPORARY TABLE backup_failover_write_probe (x int)")
        cur.execute("INSERT INTO backup_failover_write_probe VALUES (1)")
    except Exception as exc:  # noqa: BLE001 - the driver's error is the finding
        cur.execute("ROLLBACK")
        return _clean(exc, None)
    cur.execute("ROLLBACK")
    return None


def verify_standby(config: BackupConfig, restored: Mapping[str, Any]) -> dict[str, Any]:
    """Verify after promote_standby (or its dry run): the standby itself, in the database
    the latest backup was taken from. Raises BackupError listing the issues."""
    _, manifest = dr_restore.locate(config, restored["backup_id"], restored.get("target"))
    conn_id = str(restored["standby_conn_id"])
    promoted = not restored.get("dry_run", False)
    database = manifest.position.get("database")
    with standby_cursor(conn_id, database) as (cur, server):
        state = read_standby_state(cur)
        cur.execute(_USER_TABLES_SQL)
        # Named as the PostgreSQL source names them in its stats: bare in public.
        tables = {name if schema == "public" else f"{schema}.{name}" for schema, name in cur.fetchall()}
        write_error = _write_probe(cur) if promoted and not state.in_recovery else None
    recorded = manifest.stats.get("tables")
    issues, notes = standby_findings(
        state,
        promoted=promoted,
        tables=tables,
        recorded_tables=recorded if isinstance(recorded, dict) else None,
        backup_id=manifest.backup_id,
        backup_lsn=manifest.position.get("lsn") or manifest.position.get("end_lsn"),
        switched=restored.get("switch") or {},
        write_error=write_error,
    )
    what = "promoted server" if promoted else "standby (dry run)"
    if issues:
        raise BackupError(f"verification of the {what} {server} failed: {'; '.join(issues)}")
    log.info("verified the %s %s: %s", what, server, "; ".join(notes))
    return {
        "ok": True,
        "backup_id": manifest.backup_id,
        "notes": notes,
        "standby": {"conn_id": conn_id, "server": server, "in_recovery": state.in_recovery,
                    "timeline": state.timeline, **_replay_facts(state)},
    }
