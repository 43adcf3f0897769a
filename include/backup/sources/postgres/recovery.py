"""Point-in-time recovery of a physical PostgreSQL chain into a new data directory.

``into`` is a new (missing or empty) data directory, optionally followed by ``:PORT``
(default: a free port), checked strictly before anything is touched (pg_ctl starts the
server through /bin/sh). The base is extracted (tarfile's "data" filter) into a new hidden
directory of the restore, the chain's WAL into another, ``recovery.signal`` and
``postgresql.auto.conf`` settings are written (restore_command = walrestore.py with
shlex-quoted arguments, recovery_target_time when ``until`` is inside the chain,
recovery_target_action = promote, port, listen_addresses 127.0.0.1, the socket in the data
dir, archive_mode off), the result is published at ``into`` by rename, and the server is
started as the ``postgres`` OS user (when root) with pg_ctl, then waited for until
recovery is over. A failure removes what the restore wrote and says so. ``overwrite``
replaces only a data directory an earlier restore created (``RESTORE_MARKER``). The
server is left running: stop it with
:func:`~include.backup.sources.postgres.cluster.stop_restored_server`.

Here: the restore's steps, the chain and target-time checks and the recovery settings;
the destination and its extraction: :mod:`~include.backup.sources.postgres.datadir`; the
restored server: :mod:`~include.backup.sources.postgres.cluster`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from include.backup.catalog.chains import ChainRules, check_chain, end_time, format_time
from include.backup.catalog.manifest import Manifest
from include.backup.errors import BackupError, RestoreRefused
from include.backup.progress import Progress
from include.backup.sources.postgres.cluster import (
    PG_OS_USER,
    as_owner,
    count_tables,
    free_port,
    pg_ctl,
    stop_restored_server,
    wait_recovered,
)
from include.backup.sources.postgres.datadir import (
    AUTO_CONF_MARK,
    Workspace,
    check_data_dir,
    extract_base,
    extract_wal,
    parse_into,
    write_marker,
)
from include.backup.sources.postgres.wal import (
    DEFAULT_SEGMENT_SIZE,
    FORMAT_BASE,
    FORMAT_WAL,
    check_wal_complete,
    continuity,
    split_segment,
)
from include.backup.wal.archive import WalPrefetcher

if TYPE_CHECKING:
    from include.backup.wal.plan import PushedRestore

log = logging.getLogger(__name__)


def restore_chain(
    source_name: str,
    links: list[tuple[Manifest, BinaryIO]],
    into: str,
    *,
    only: list[str] | None = None,
    overwrite: bool = False,
    until: datetime | None = None,
    pushed: PushedRestore | None = None,
) -> dict[str, Any]:
    """Restore ``links`` (a base backup, then its WAL backups, each with its payload
    stream) into ``into`` and start the server (see the module docstring). ``pushed``:
    replay the pushed WAL after the base, fetched while replay runs (wal-push sources)."""
    manifests = [m for m, _ in links]
    _check_chain(manifests, only, source_name)
    last_end = end_time(manifests[-1]) if pushed is None else pushed.window_end
    target_time = None if until is None else _target_time(manifests, until, source_name, pushed)
    # Everything refused below is refused before anything is touched.
    data_dir, port = parse_into(into)
    check_data_dir(data_dir, overwrite)
    python = _restore_python()
    work = Workspace.create(data_dir)
    started = False
    fetcher: WalPrefetcher | None = None
    try:
        extract_base(links[0][1], work.staging, work.wal, manifests[0].backup_id)
        for m, stream in links[1:]:
            extract_wal(stream, work.wal, m.backup_id)
        if pushed is None:
            check_wal_complete(work.wal, manifests)
        else:  # fetched while the server replays; walrestore.py --wait picks each one up
            names = pushed.wal.replay_names(manifests[0].position["wal_first"])
            fetcher = WalPrefetcher(pushed.wal, pushed.keys, work.wal, names).start()
        port = port or free_port()
        command = _restore_command(python, _install_wal_restore(work.wal), work.wal, wait=fetcher is not None)
        _write_recovery_conf(work.staging, data_dir, command, port, target_time)
        write_marker(work.staging, manifests)
        work.publish()
        work.own()
        t0 = time.monotonic()
        started = True
        pg_ctl(data_dir, "start", server_major=manifests[0].position.get("server_version_num"))
        last_wal = pushed.wal.segments[-1] if pushed is not None and pushed.wal.segments else None
        with _replay_progress(source_name, manifests, target_time, last_wal) as (replay, wal_start):
            wait_recovered(data_dir, port, source_name, progress=replay, wal_start=wal_start)
        replay_s = time.monotonic() - t0
        tables = count_tables(port, data_dir)
        refused = fetcher.refused() if fetcher is not None else []
    except BaseException as exc:
        if started:
            stop_restored_server(str(data_dir), quiet=True)
        _add_note(exc, work.discard())
        raise
    finally:
        if fetcher is not None:
            fetcher.stop()
        shutil.rmtree(work.wal, ignore_errors=True)
    recovered_to = format_time(target_time) if target_time else f"end of WAL ({format_time(last_end)})"
    stats = {
        "data_dir": str(data_dir),
        "port": port,
        "recovered_to": recovered_to,
        "replay_seconds": round(replay_s, 3),
        "tables": tables,
    }
    if refused:  # replay ended at the last good file: say where, and why
        name, reason = refused[0]
        stats["recovered_to"] = f"the end of the WAL file before {name}, which was refused"
        stats["wal_refused"] = {"file": name, "reason": reason}
        log.warning("restore of %s: WAL replay stopped before %s: %s", source_name, name, reason)
    return stats


# --- chain and target-time checks ------------------------------------------------------------

_NEEDS_BASE = "a physical restore starts with a FULL base backup (pg_basebackup-tar); got "
CHAIN_RULES = ChainRules(
    base_format=FORMAT_BASE,
    link_format=FORMAT_WAL,
    empty=_NEEDS_BASE + "nothing",
    wrong_format=_NEEDS_BASE + "{first.backup_id}",
    wrong_start=_NEEDS_BASE + "{first.backup_id}",
    wrong_link_format="backup {m.backup_id} ({m.payload_format}) is not a WAL backup",
)


@contextlib.contextmanager
def _replay_progress(
    source_name: str, manifests: list[Manifest], target_time: datetime | None, last_wal: str | None = None
) -> Iterator[tuple[Progress, int]]:
    """A Progress for the WAL replay: bytes of WAL from the base backup's first segment
    to the end of the last WAL backup's (or ``last_wal``, the newest pushed segment), and
    the WAL position reached against the target."""
    seg = int(manifests[0].position.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
    start = split_segment(manifests[0].position["wal_first"], seg)[1] * seg
    end = (split_segment(last_wal or manifests[-1].position["wal_last"], seg)[1] + 1) * seg
    goal = f"target time {format_time(target_time)}" if target_time else "the end of the WAL"
    with Progress(f"replay WAL of {source_name} up to {goal}", end - start) as replay:
        yield replay, start


def _check_chain(manifests: list[Manifest], only: list[str] | None, source_name: str) -> None:
    """Refuse what a physical restore cannot do; check the chain links up."""
    if only:
        raise RestoreRefused(
            f"postgres source {source_name!r}: a physical backup restores the whole cluster; "
            "partial restores (only=) need a logical backup (method: logical, pg_dump)"
        )
    check_chain(manifests, CHAIN_RULES, continuity)


def _target_time(
    manifests: list[Manifest], until: datetime, source_name: str, pushed: PushedRestore | None = None
) -> datetime | None:
    """The recovery_target_time for ``until`` (None: replay all the WAL); refuse a
    point in time the chain (or the pushed WAL after its base) does not reach."""
    first_end = end_time(manifests[0])
    last_end = end_time(manifests[-1]) if pushed is None else pushed.window_end
    until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    if until < first_end:
        raise RestoreRefused(
            f"point in time {format_time(until)} is before the consistent point of base "
            f"backup {manifests[0].backup_id} ({format_time(first_end)})"
        )
    if until > last_end:
        raise RestoreRefused(
            f"point in time {format_time(until)} is outside the reachable window "
            f"{format_time(first_end)} – {format_time(last_end)} of this "
            f"chain of source {source_name}"
        )
    if until < last_end and (len(manifests) > 1 or pushed is not None):
        return until
    return None


# --- recovery settings ---------------------------------------------------------------------


def _add_note(exc: BaseException, note: str) -> None:
    """Append ``note`` to the message of one of our errors (callers and reports show
    str(exc)); other exceptions get it as a traceback note."""
    if isinstance(exc, BackupError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} ({note})",)
    else:
        exc.add_note(note)


def _conf(value: str) -> str:
    """A postgresql.conf string: PostgreSQL reads backslash escapes and '' inside quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


WAL_RESTORE_SCRIPT = Path(__file__).with_name("walrestore.py")


def _install_wal_restore(wal_dir: Path) -> Path:
    """A copy of walrestore.py in the restore's own WAL dir: the server's OS user can read
    it there even when it cannot read this code (e.g. a virtualenv under /root)."""
    dest = wal_dir / WAL_RESTORE_SCRIPT.name  # never a WAL file name: no clash
    shutil.copyfile(WAL_RESTORE_SCRIPT, dest)
    os.chmod(dest, 0o644)
    return dest


def _restore_python() -> str:
    """A Python 3 the server's OS user can run (walrestore.py needs only the stdlib).
    Our own interpreter first; when root, the first one ``postgres`` can execute."""
    seen: list[str] = []
    for c in (sys.executable, os.path.realpath(sys.executable), shutil.which("python3"),
              "/usr/bin/python3", "/usr/local/bin/python3"):  # fmt: skip
        if c and c not in seen and os.access(c, os.X_OK):
            seen.append(c)
    if os.geteuid() != 0 and seen:
        return seen[0]
    for c in seen:
        probe = subprocess.run(
            as_owner([c, "-I", "-c", "import shutil, re"]), check=False, capture_output=True, cwd="/"
        )
        if probe.returncode == 0:
            return c
    raise RestoreRefused(
        f"the {PG_OS_USER} OS user can run none of the Python interpreters "
        f"{', '.join(seen) or '(none found)'}; the restored server's restore_command needs "
        f"one: install python3 system-wide (e.g. apt-get install python3-minimal)"
    )


def _restore_command(python: str, script: Path, wal_dir: Path, *, wait: bool = False) -> str:
    """restore_command: our fixed program, each of our arguments quoted for /bin/sh and
    its '%' doubled (PostgreSQL expands %f/%p/%r in the string), then %f and %p (a WAL file
    name and pg_wal/RECOVERYXLOG: PostgreSQL's own, plain characters). ``wait``: the WAL
    is still being fetched into ``wal_dir`` (pushed WAL)."""
    ours = [python, "-I", str(script), *(["--wait"] if wait else []), str(wal_dir)]
    return " ".join([*(shlex.quote(a).replace("%", "%%") for a in ours), "%f", "%p"])


def _write_recovery_conf(
    staging: Path, data_dir: Path, restore_command: str, port: int, target: datetime | None
) -> None:
    """recovery.signal and the restore's settings, written into ``staging`` (the data
    directory before it is published at ``data_dir``, the path the server will see)."""
    for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        (staging / stale).unlink(missing_ok=True)
    settings = {
        "restore_command": _conf(restore_command),
        "recovery_target_action": "'promote'",
        "recovery_target_timeline": "'current'",
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        # A list setting: double quotes keep a ',' or spaces in the path one directory.
        "unix_socket_directories": _conf(f'"{data_dir}"'),
        "archive_mode": "'off'",
        "archive_command": "''",
        "logging_collector": "off",
    }
    if target is not None:
        settings["recovery_target_time"] = _conf(target.isoformat())
        settings["recovery_target_inclusive"] = "on"
    with open(staging / "postgresql.auto.conf", "a", encoding="utf-8") as f:
        f.write(f"\n{AUTO_CONF_MARK}\n")
        f.writelines(f"{k} = {v}\n" for k, v in settings.items())
    (staging / "recovery.signal").write_text("")
    os.chmod(staging, 0o700)
