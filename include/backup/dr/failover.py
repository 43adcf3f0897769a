"""Failover (the ``failover`` DAG), following the documented DR plan::

    assess ─► switch ─► restore ─► verify ─► notify

- ``assess``: the newest *verified* backup of the source (SCHEMA backups excepted) at any
  target of its schedules, and its age against ``dr.rpo_hours``. No backup: no failover.
- ``switch``: the action configured in ``dr.failover.<source>.switch`` (docs/dr.md):
  ``command`` (a program and its arguments, no shell: promote a standby, flip DNS, ...),
  ``airflow_variable`` (set a Variable to the secondary's value) or ``airflow_connection``
  (record in the Variable ``backup_failover__<source>`` which connection to use from now
  on: Airflow 3's Task SDK lets a task set Variables but not write connections), or
  ``promote_standby`` (``pg_promote()`` on a PostgreSQL hot standby, after recording how
  far its replay was behind: :func:`promote_standby`). With ``dry_run`` the action is only
  described.
- ``restore``: that backup (and its chain) into the secondary (the ``secondary`` param,
  else ``dr.failover.<source>.secondary``): a database name, ``conn:<conn_id>``, or a
  directory for files sources. Never into the source itself. With ``promote_standby``
  nothing is restored: the standby holds the data (and newer data than any backup).
- ``verify``: the restored data against the manifest's recorded stats
  (:func:`include.backup.dr.drtest.compare_with_manifest`); after ``promote_standby``, the
  promoted server: out of recovery, takes a write, holds every table of the latest backup,
  and how far it was behind the primary and the backup (:func:`verify_standby`).
- ``notify``: a DR_ACTIVATED mail to ``dr.notification_emails`` with every step's outcome.

The DAG refuses to start without ``confirm`` equal to the source name (unless
``dr.auto_failover`` is on), before anything is touched. FAILOVER_TEST DR tests run the
same steps through :func:`rehearse`, with the switch in dry-run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from include.backup.config.schema import BackupConfig, FailoverSwitch
from include.backup.errors import BackupError, RestoreRefused

log = logging.getLogger(__name__)

CHAIN_TYPES = ("FULL", "INCREMENTAL", "TRANSACTION_LOG")
VARIABLE_PREFIX = "backup_failover__"
STEPS = ("assess", "switch", "restore", "verify")
PROMOTE_STANDBY = "promote_standby"
CONN_PREFIX = "conn:"


@dataclass(frozen=True)
class FailoverRequest:
    source: str
    secondary: str
    target: str | None
    dry_run: bool
    overwrite: bool
    notes: str = ""

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> FailoverRequest:
        return cls(**dict(data))


def failover_variable(source: str) -> str:
    return f"{VARIABLE_PREFIX}{source}"


def parse_failover_params(params: Mapping[str, Any], config: BackupConfig) -> FailoverRequest:
    """Check the params of the ``failover`` DAG before anything is touched."""
    from include.backup.dr.drtest import _bool, _text, check_not_production, source_targets

    source = _text(params, "source")
    if source is None:
        raise RestoreRefused(
            f"param 'source' is required: the source to fail over ({', '.join(config.sources) or 'none'})"
        )
    if source not in config.sources:
        raise RestoreRefused(
            f"param 'source': no source named {source!r}; known: {', '.join(config.sources) or 'none'}"
        )
    confirm = _text(params, "confirm")
    if confirm != source and not config.dr.auto_failover:
        raise RestoreRefused(
            f"failover of {source!r} refused: set param 'confirm' to {source!r} to confirm "
            "(a failover switches production to the secondary); nothing was touched"
        )
    settings = config.dr.failover.get(source)
    secondary = _secondary(params, config, source)
    check_not_production(config, source, secondary, "secondary")
    target = _text(params, "target") or (settings.target if settings else None)
    if target is not None and target not in config.targets:
        raise RestoreRefused(
            f"param 'target': no target named {target!r}; known: {', '.join(config.targets)}"
        )
    if not source_targets(config, source):
        raise RestoreRefused(f"source {source!r} has no schedule with a target: no backup to fail over to")
    notes = params.get("notes") or ""
    if not isinstance(notes, str):
        raise RestoreRefused("param 'notes' must be a string")
    return FailoverRequest(
        source=source,
        secondary=secondary,
        target=target,
        dry_run=_bool(params, "dry_run", False),
        overwrite=_bool(params, "overwrite", False),
        notes=notes.strip(),
    )


def _secondary(params: Mapping[str, Any], config: BackupConfig, source: str) -> str:
    """The ``secondary`` param, else the configured one; with ``promote_standby`` it can
    only be that standby (``conn:<conn_id>``, also the default)."""
    from include.backup.dr.drtest import _text

    settings = config.dr.failover.get(source)
    promote = promote_switch(config, source)
    default = settings.secondary if settings else None
    if promote is not None:
        kind = config.sources[source].type
        if kind != "postgres":
            raise RestoreRefused(
                f"dr.failover.{source}.switch: kind promote_standby promotes a PostgreSQL standby "
                f"but {source!r} is a {kind} source; use kind command for its own tooling"
            )
        default = default or f"{CONN_PREFIX}{promote.conn_id}"
    secondary = _text(params, "secondary") or default
    if not secondary:
        raise RestoreRefused(
            f"no secondary for {source!r}: pass param 'secondary' (conn:<conn_id>, a database "
            f"name, or a directory) or set dr.failover.{source}.secondary in the config"
        )
    if promote is not None and secondary.strip() not in (promote.conn_id, f"{CONN_PREFIX}{promote.conn_id}"):
        raise RestoreRefused(
            f"param 'secondary' {secondary!r}: the switch of {source!r} promotes the standby "
            f"{CONN_PREFIX}{promote.conn_id}, which then holds the data; leave 'secondary' empty "
            f"or set it to {CONN_PREFIX}{promote.conn_id}"
        )
    return secondary


def promote_switch(config: BackupConfig, source: str) -> FailoverSwitch | None:
    """The source's switch when it is ``promote_standby``, else None."""
    settings = config.dr.failover.get(source)
    action = settings.switch if settings else None
    return action if action is not None and action.kind == PROMOTE_STANDBY else None


# --- the steps -------------------------------------------------------------------------


def assess(
    config: BackupConfig, source: str, target: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The newest verified backup of ``source`` (at ``target``, else any target of its
    schedules) and its age. Raises BackupError when there is none."""
    from include.backup.catalog.catalog import as_utc, latest
    from include.backup.dr.drtest import source_targets
    from include.backup.targets import build_target

    moment = now or datetime.now(UTC)
    names = [target] if target else source_targets(config, source)
    best: tuple[Any, str] | None = None
    unreachable: list[str] = []
    for name in names:
        try:
            found = latest(
                build_target(name, config.targets[name]), source, types=CHAIN_TYPES, verified_only=True
            )
        except Exception as exc:  # noqa: BLE001 - another target may hold it
            unreachable.append(f"{name}: {exc}")
            continue
        if found is not None and (best is None or as_utc(found.started_at) > as_utc(best[0].started_at)):
            best = (found, name)
    if best is None:
        raise BackupError(
            f"no verified backup of {source!r} at {', '.join(names) or 'any target'}"
            + (f" (unreachable: {'; '.join(unreachable)})" if unreachable else "")
            + ": there is nothing to fail over to"
        )
    manifest, name = best
    age = (moment - as_utc(manifest.started_at)).total_seconds()
    result = {
        "source": source,
        "backup_id": manifest.backup_id,
        "backup_type": manifest.backup_type,
        "target": name,
        "backup_started_at": as_utc(manifest.started_at).isoformat(),
        "age_seconds": round(max(age, 0.0), 3),
        "age_hours": round(max(age, 0.0) / 3600, 3),
        "rpo_hours": config.dr.rpo_hours,
        "rpo_ok": age <= config.dr.rpo_hours * 3600,
        "unreachable_targets": unreachable,
    }
    log.info(
        "assess %s: latest verified backup %s at %s, %.2f h old (RPO %s h)",
        source,
        manifest.backup_id,
        name,
        result["age_hours"],
        config.dr.rpo_hours,
    )
    return result


def switch(
    config: BackupConfig, source: str, secondary: str, *, backup_id: str | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Run the configured switch action (or describe it, with ``dry_run``)."""
    from include.backup.alerts.notify import redact

    settings = config.dr.failover.get(source)
    action = settings.switch if settings else None
    if action is None:
        return {
            "action": "none",
            "dry_run": dry_run,
            "done": False,
            "detail": f"no switch configured (dr.failover.{source}.switch): only the restore "
            "into the secondary is done; repoint clients by hand",
        }
    if action.kind == PROMOTE_STANDBY:
        return _switch_promote(action, dry_run=dry_run)
    if action.kind == "command":
        what = f"run {action.command!r}"
    elif action.kind == "airflow_variable":
        what = f"set Variable {action.variable!r} to {(action.value or secondary)!r}"
    else:
        what = f"set Variable {failover_variable(source)!r} to connection {action.conn_id!r}"
    if dry_run:
        log.info("failover switch (dry run): would %s", what)
        return {"action": action.kind, "dry_run": True, "done": False, "detail": f"dry run: would {what}"}
    if action.kind == "command":
        env = {
            **os.environ,
            "BACKUP_FAILOVER_SOURCE": source,
            "BACKUP_FAILOVER_SECONDARY": secondary,
            "BACKUP_FAILOVER_BACKUP_ID": backup_id or "",
        }
        try:
            proc = subprocess.run(  # noqa: S603 - a configured argv, no shell
                list(action.command or []),
                env=env,
                capture_output=True,
                text=True,
                timeout=action.timeout_seconds,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackupError(f"failover switch: {what} failed: {redact(exc)}") from None
        tail = redact((proc.stdout + proc.stderr).strip()[-1000:])
        if tail:
            log.info("switch command output:\n%s", tail)
        if proc.returncode != 0:
            raise BackupError(f"failover switch: {what} exited with {proc.returncode}: {tail[-300:]}")
        detail = f"ran {action.command[0] if action.command else ''} (exit 0)"
    else:
        from airflow.sdk import Variable

        if action.kind == "airflow_variable":
            if not action.variable:  # the config schema requires it; say so if it slipped
                raise BackupError("failover switch: kind airflow_variable needs `variable:` in the config")
            Variable.set(action.variable, action.value or secondary)
        else:
            Variable.set(
                failover_variable(source),
                action.conn_id,
                description=f"failover of {source}: the connection to use now",
            )
        detail = what
    log.info("failover switch done: %s", detail)
    return {"action": action.kind, "dry_run": False, "done": True, "detail": detail}


# --- promote_standby -------------------------------------------------------------------

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
    from include.backup.alerts.notify import redact

    text = " ".join(str(exc).split()) or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    return redact(text)


@contextmanager
def standby_cursor(conn_id: str, database: str | None = None) -> Iterator[tuple[Any, str]]:
    """``(cursor, "host:port")`` on the Airflow Postgres connection ``conn_id`` (its own
    database, or ``database``), in autocommit. Errors become BackupErrors that name the
    connection and the server, never the password."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

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


def _switch_promote(action: FailoverSwitch, *, dry_run: bool) -> dict[str, Any]:
    conn_id = str(action.conn_id)
    base = {"action": PROMOTE_STANDBY, "conn_id": conn_id}
    if dry_run:
        what = (
            f"promote the standby behind connection {conn_id!r} (pg_promote, waiting up to "
            f"{action.timeout_seconds} s); no backup would be restored over it"
        )
        log.info("failover switch (dry run): would %s", what)
        return {**base, "dry_run": True, "done": False, "detail": f"dry run: would {what}"}
    return {**base, **promote_standby(conn_id, action.timeout_seconds), "dry_run": False, "done": True}


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
    from include.backup.dr.restore import locate

    _, manifest = locate(config, restored["backup_id"], restored.get("target"))
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


def restore_secondary(
    config: BackupConfig,
    source: str,
    secondary: str,
    *,
    backup_id: str | None,
    target: str | None,
    overwrite: bool = False,
    keys: Any = None,
    switched: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore ``backup_id`` (and its chain) into the secondary; raises on failure. When
    the switch promotes a standby (``switched``: its result), nothing is restored: see
    :func:`standby_holds_the_data`."""
    promote = promote_switch(config, source)
    if promote is not None:
        return standby_holds_the_data(str(promote.conn_id), backup_id, target, switched)
    from include.backup import tasks
    from include.backup.dr.drtest import (
        check_not_production,
        check_not_same_database,
        resolve_environment,
    )
    from include.backup.dr.restore import restore_backup

    into = resolve_environment(config, source, secondary)
    check_not_production(config, source, into, "secondary")
    check_not_same_database(config, source, into)
    result = restore_backup(
        config,
        backup_id,
        into,
        keys=keys if keys is not None else tasks.load_keys(config),
        target_name=target,
        overwrite=overwrite,
        source_name=source,
    )
    log.info("restored %s into %s in %.1f s", result.backup_id, into, result.seconds)
    return {
        "backup_id": result.backup_id,
        "target": result.target,
        "into": into,
        "chain": result.chain,
        "seconds": round(result.seconds, 3),
        "stats": {k: v for k, v in result.stats.items() if not isinstance(v, list)},
    }


def verify_secondary(config: BackupConfig, restored: Mapping[str, Any]) -> dict[str, Any]:
    """Compare what the restore gave back with the manifest; raises when they differ.
    After promote_standby (the restore was skipped) the standby is checked instead."""
    if restored.get("skipped") and restored.get("standby_conn_id"):
        return verify_standby(config, restored)
    from include.backup.dr.drtest import compare_with_manifest
    from include.backup.dr.restore import locate

    _, manifest = locate(config, restored["backup_id"], restored.get("target"))
    issues, notes = compare_with_manifest(
        manifest.source_type,
        manifest.stats,
        restored.get("stats") or {},
        chain_length=len(restored.get("chain") or [1]),
    )
    if issues:
        raise BackupError(f"verification of the secondary failed: {'; '.join(issues)}")
    return {"ok": True, "backup_id": manifest.backup_id, "notes": notes}


def rehearse(
    config: BackupConfig,
    source: str,
    environment: str,
    *,
    target: str | None = None,
    overwrite: bool = False,
    keys: Any = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """FAILOVER_TEST: the failover steps against ``environment``, the switch in dry-run.
    Returns ``{ok, issues, notes, backup_id, seconds, rpo_seconds, steps}``; never raises
    for a failed step (it is the test's finding)."""
    from include.backup.dr.drtest import _error

    started = time.monotonic()
    steps: dict[str, str] = {}
    out: dict[str, Any] = {
        "ok": False,
        "issues": [],
        "notes": [],
        "backup_id": None,
        "seconds": None,
        "rpo_seconds": None,
    }
    try:
        a = assess(config, source, target, now)
        out.update(backup_id=a["backup_id"], rpo_seconds=a["age_seconds"])
        steps["assess"] = f"ok: {a['backup_id']} at {a['target']}, {a['age_hours']:.2f} h old"
        s = switch(config, source, environment, backup_id=a["backup_id"], dry_run=True)
        steps["switch"] = s["detail"]
        r = restore_secondary(
            config,
            source,
            environment,
            backup_id=a["backup_id"],
            target=a["target"],
            overwrite=overwrite,
            keys=keys,
            switched=s,
        )
        steps["restore"] = (
            r["detail"]
            if r.get("skipped")
            else f"ok: {r['backup_id']} into {r['into']} in {r['seconds']:.1f} s"
        )
        v = verify_secondary(config, r)
        steps["verify"] = "ok" + (f" ({'; '.join(v['notes'])})" if v["notes"] else "")
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the test's finding
        failed = next(s for s in STEPS if s not in steps)
        steps[failed] = f"FAILED: {_error(exc)}"
        out["issues"].append(f"failover step {failed} failed: {_error(exc)}")
    out["seconds"] = round(time.monotonic() - started, 3)
    out["steps"] = steps
    out["notes"].append("failover steps: " + "; ".join(f"{k}: {v}" for k, v in steps.items()))
    return out


# --- notification ----------------------------------------------------------------------


def activated_alert(
    request: FailoverRequest,
    outcomes: Mapping[str, Any],
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
) -> Any:
    """The DR_ACTIVATED alert: every step's outcome (None: the step did not finish)."""
    from include.backup.alerts.notify import Alert, AlertKind, Severity

    facts: dict[str, str] = {
        "source": request.source,
        "secondary": request.secondary,
        "mode": "DRY RUN" if request.dry_run else "live",
    }
    ok = True
    for step in STEPS:
        value = outcomes.get(step)
        if value is None:
            ok = False
            facts[step] = "did not complete (see the task log)"
        elif step == "assess":
            facts[step] = (
                f"backup {value['backup_id']} at {value['target']}, "
                f"{value['age_hours']:.2f} h old (RPO {value['rpo_hours']:g} h)"
            )
        elif step == "switch" or (step == "restore" and value.get("skipped")):
            facts[step] = str(value.get("detail"))
        elif step == "restore":
            facts[step] = f"{value['backup_id']} into {value['into']} in {value['seconds']:.1f} s"
        else:
            facts[step] = "ok" + (f" ({'; '.join(value.get('notes') or [])})" if value.get("notes") else "")
    if request.notes:
        facts["notes"] = request.notes
    state = "completed" if ok else "INCOMPLETE"
    return Alert(
        AlertKind.DR_ACTIVATED,
        request.source,
        summary=f"{'dry-run ' if request.dry_run else ''}failover to {request.secondary} {state}",
        facts=facts,
        severity=Severity.INFO if request.dry_run and ok else None,
        key=f"DR_ACTIVATED:{request.source}:{run_id or datetime.now(UTC).isoformat()}",
        dag_id=dag_id,
        run_id=run_id,
    )
