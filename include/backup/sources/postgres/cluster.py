"""The server a physical PostgreSQL restore starts on its restored data directory: run as
the ``postgres`` OS user (when root), started and stopped with pg_ctl, waited for until
recovery is over, its tables counted."""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from include.backup.errors import SourceError
from include.backup.progress import Progress
from include.backup.sources.postgres.client import find_client_binary, table_row_counts
from include.backup.sources.postgres.wal import parse_lsn

RECOVERY_WAIT_S = 1800
PG_OS_USER = "postgres"


# --- the server's OS user -------------------------------------------------------------------


def own_paths(*paths: Path) -> None:
    """Hand ``paths`` (recursively) to the server's OS user, when running as root."""
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(PG_OS_USER)
    for top in paths:
        os.chown(top, pw.pw_uid, pw.pw_gid)
        for root, dirs, files in os.walk(top):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)


def as_owner(argv: list[str]) -> list[str]:
    """``argv`` run as the server's OS user (through runuser) when running as root."""
    return ["runuser", "-u", PG_OS_USER, "--", *argv] if os.geteuid() == 0 else argv


# --- start, wait, stop -----------------------------------------------------------------------


def _pg_ctl_path(server_major: int | None = None) -> str:
    return find_client_binary("pg_ctl", (server_major // 10000) if server_major else None)


def pg_ctl(data_dir: Path, action: str, *, server_major: int | None = None) -> None:
    """``pg_ctl start`` (logging to restore.log in the data dir) or ``stop -m fast``;
    ``server_major`` is a server_version_num (picks the matching pg_ctl)."""
    logfile = data_dir / "restore.log"
    argv = [_pg_ctl_path(server_major), "-D", str(data_dir), "-w", "-t", str(RECOVERY_WAIT_S)]
    if action == "start":
        argv += ["-l", str(logfile), "start"]
    else:
        argv += ["-m", "fast", "stop"]
    proc = subprocess.run(as_owner(argv), check=False, capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        tail = _log_tail(logfile)
        reason = ""
        if "recovery ended before configured recovery target was reached" in tail:
            reason = " — the WAL in the chain ends before the target time; pick an earlier time"
        raise SourceError(
            f"pg_ctl {action} of the restored cluster in {data_dir} failed{reason}: "
            f"{(proc.stderr or proc.stdout).strip()}\nserver log:\n{tail}"
        )


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _connect_local(port: int, data_dir: Path, dbname: str = "postgres") -> Any:
    # Imported here: psycopg2 is needed only when a job runs, not to import this module.
    import psycopg2  # type: ignore[import-untyped]  # lazy: psycopg2: loaded when PostgreSQL is used

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname, connect_timeout=10)
    conn.autocommit = True
    return conn


def wait_recovered(
    data_dir: Path, port: int, source_name: str, *, progress: Progress | None = None, wal_start: int = 0
) -> None:
    """Until the started server accepts connections and is out of recovery. While it
    replays, ``progress`` gets the WAL position reached (bytes past ``wal_start``) and the
    time of the last transaction replayed."""
    deadline = time.monotonic() + RECOVERY_WAIT_S
    while True:
        try:
            conn = _connect_local(port, data_dir)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_is_in_recovery()")
                    in_recovery = cur.fetchone()[0]
                    if progress is not None:  # after recovery: where it stopped
                        _report_replay(cur, progress, wal_start)
                    if not in_recovery:
                        return
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 - still starting up
            last = str(exc)
            if not (data_dir / "postmaster.pid").exists():
                tail = _log_tail(data_dir / "restore.log")
                reason = ""
                if "recovery ended before configured recovery target was reached" in tail:
                    reason = "the WAL in the chain ends before the target time; "
                raise SourceError(
                    f"postgres source {source_name!r}: the restored cluster in {data_dir} stopped "
                    f"during recovery ({reason}see the server log):\n{tail}"
                ) from None
        else:
            last = "still in recovery"
        if time.monotonic() > deadline:
            raise SourceError(
                f"postgres source {source_name!r}: the restored cluster in {data_dir} did not "
                f"finish recovery within {RECOVERY_WAIT_S}s ({last}); server log:\n"
                + _log_tail(data_dir / "restore.log")
            )
        time.sleep(0.2)


def _report_replay(cur: Any, progress: Progress, wal_start: int) -> None:
    cur.execute("SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()")
    lsn, replayed = cur.fetchone()
    if lsn:
        done = parse_lsn(lsn) - wal_start
        at = f", transactions replayed to {replayed.isoformat(timespec='seconds')}" if replayed else ""
        progress.set(max(done, 0), detail=f"LSN {lsn}{at}")


def count_tables(port: int, data_dir: Path) -> dict[str, dict[str, int]]:
    """Exact row counts per table, per non-template database: {db: {table: rows}}."""
    conn = _connect_local(port, data_dir)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1")
            dbs = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    out: dict[str, dict[str, int]] = {}
    for db in dbs:
        conn = _connect_local(port, data_dir, db)
        try:
            with conn.cursor() as cur:
                out[db] = table_row_counts(cur, exact=True)
        finally:
            conn.close()
    return out


def stop_restored_server(data_dir: str, *, quiet: bool = False) -> None:
    """Stop a cluster started by a physical restore (pg_ctl stop -m fast)."""
    # No destination check here: stopping runs pg_ctl with an argv (no shell), and a
    # server restored before the check existed must still be stoppable.
    path = Path(re.sub(r":\d{2,5}\Z", "", data_dir))
    if not (path / "postmaster.pid").exists():
        return
    try:
        pg_ctl(path, "stop")
    except SourceError:
        if not quiet:
            raise


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
