"""PostgreSQL physical backups: base backups (pg_basebackup), WAL from the archive spool,
and point-in-time recovery into a new data directory.

Selected by ``method: physical`` on a postgres source (``PostgresSource`` in postgres.py
delegates here); needs ``wal_archive_dir``, the directory the server's ``archive_command``
copies WAL segments into, readable by the worker.

Backup types:
  FULL             ``pg_basebackup -Ft -X none --checkpoint=fast`` into a temp dir, plus the
                   WAL segments the base needs to be consistent, copied from the spool (so a
                   FULL restores on its own). Payload format ``pg_basebackup-tar``: a tar of
                   ``base.tar``, ``backup_manifest`` and ``wal/<segment>``.
  TRANSACTION_LOG  the WAL segments after the parent's ``wal_last`` up to now, taken from the
                   spool after a forced segment switch (``pg_switch_wal()``), so the RPO is
                   the schedule's interval. Payload format ``pg_wal-tar`` (segment files).
  INCREMENTAL      server-side incremental base backups need PostgreSQL 17; on older servers
                   INCREMENTAL means the WAL since the last base backup (same payload as a
                   TRANSACTION_LOG, parent = that base).
  SCHEMA           pg_dump --schema-only (the logical source does it).

Position keys (see include/backup/catalog/chains.py for the common ones): ``start_time``,
``end_time`` (ISO-8601 UTC), ``start_lsn``, ``end_lsn``, ``timeline``, ``wal_first``,
``wal_last`` (segment file names), ``wal_segment_size``, ``base_id`` and
``base_wal_last`` (the base backup this chain grows from). For a FULL the consistent point
is the end of its WAL (``end_lsn``); ``end_time`` is read from the server right after the
backup stopped. A log backup's ``end_time`` is the start of a marker transaction committed
just before the segment switch, so every target time inside a log's range is followed by
a commit record in that log and ``recovery_target_time`` is always reached.

Restore: ``into`` is a new (missing or empty) data directory, optionally followed by
``:PORT`` (default: a free port), checked strictly before anything is touched (pg_ctl
starts the server through /bin/sh). The base is extracted (tarfile's "data" filter) into
a new hidden directory of the restore, the chain's WAL into another, ``recovery.signal``
and ``postgresql.auto.conf`` settings are written (restore_command = walrestore.py with
shlex-quoted arguments, recovery_target_time when ``until`` is inside the chain,
recovery_target_action = promote, port, listen_addresses 127.0.0.1, the socket in the data
dir, archive_mode off), the result is published at ``into`` by rename, and the server is
started as the ``postgres`` OS user (when root) with pg_ctl, then waited for until
recovery is over. A failure removes what the restore wrote and says so. ``overwrite``
replaces only a data directory an earlier restore created (``RESTORE_MARKER``). The
server is left running: stop it with :func:`stop_restored_server`.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, BinaryIO

from include.backup.catalog.manifest import Manifest
from include.backup.dr.destinations import check_path
from include.backup.errors import BackupError, IntegrityError, RestoreRefused, SourceError
from include.backup.sources.base import DumpResult
from include.backup.sources.walrestore import wal_file_name_ok

log = logging.getLogger(__name__)

FORMAT_BASE = "pg_basebackup-tar"
FORMAT_WAL = "pg_wal-tar"
PHYSICAL_FORMATS = (FORMAT_BASE, FORMAT_WAL)
PHYSICAL_TYPES = ("FULL", "INCREMENTAL", "TRANSACTION_LOG")
DEFAULT_SEGMENT_SIZE = 16 << 20
ARCHIVE_WAIT_S = 120
RECOVERY_WAIT_S = 1800
BLOCK = 1 << 20
PG_OS_USER = "postgres"
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


# --- WAL names -------------------------------------------------------------------------


def parse_lsn(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def segment_name(timeline: int, segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_of(lsn: str | int, timeline: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    value = parse_lsn(lsn) if isinstance(lsn, str) else lsn
    return segment_name(timeline, value // seg_size, seg_size)


def split_segment(name: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, segment number) of a WAL file name."""
    if not _SEGMENT.match(name):
        raise ValueError(f"{name!r} is not a WAL segment file name")
    per_id = 0x100000000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:], 16)


def next_segment(name: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    tli, segno = split_segment(name, seg_size)
    return segment_name(tli, segno + 1, seg_size)


def segment_range(first: str, last: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    tli, a = split_segment(first, seg_size)
    tli2, b = split_segment(last, seg_size)
    if tli != tli2:
        raise ValueError(f"WAL range {first}..{last} crosses a timeline switch")
    return [segment_name(tli, n, seg_size) for n in range(a, b + 1)]


def continuity(prev: Manifest, cur: Manifest) -> str | None:
    """None when ``cur``'s WAL starts with the segment right after ``prev``'s last one
    (same timeline), else what is missing. Logical backups have no WAL: no opinion."""
    if cur.payload_format != FORMAT_WAL or prev.payload_format not in PHYSICAL_FORMATS:
        return None
    seg = int(prev.position.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
    last, first = prev.position.get("wal_last"), cur.position.get("wal_first")
    if not last or not first:
        return f"{prev.backup_id} or {cur.backup_id} records no WAL range (wal_last/wal_first)"
    expected = next_segment(last, seg)
    if first == expected:
        return None
    try:
        (t1, a), (t2, b) = split_segment(expected, seg), split_segment(first, seg)
    except ValueError as exc:
        return str(exc)
    if t1 != t2:
        return f"timeline changes from {t1} to {t2} between {last} and {first}"
    if b > a:
        missing = segment_name(t1, b - 1, seg)
        span = expected if expected == missing else f"{expected} – {missing}"
        return f"WAL segments {span} are in no backup (next needed after {last}, got {first})"
    return f"WAL overlaps: {cur.backup_id} starts at {first}, expected {expected}"


# --- the physical side of the postgres source --------------------------------------------


class PhysicalPostgres:
    """Base backups, WAL and PITR for one postgres source (``cfg.method == "physical"``)."""

    def __init__(self, name: str, cfg: Any, *, work_dir: Path | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.work_dir = work_dir
        self.spool = Path(cfg.wal_archive_dir) if cfg.wal_archive_dir else None

    # -- helpers

    def _params(self) -> Any:
        from include.backup.sources.postgres import params_from_connection

        return params_from_connection(self.cfg.conn_id, self.cfg.database)

    def _query(self, params: Any, sql: str) -> tuple[Any, ...]:
        from include.backup.sources.postgres import _connect

        with _connect(params, self.name) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return tuple(cur.fetchone())

    def _need_spool(self) -> Path:
        if self.spool is None or not self.spool.is_dir():
            raise SourceError(
                f"postgres source {self.name!r}: wal_archive_dir {self.spool} is not a "
                "directory this worker can read; point it at the server's archive spool"
            )
        return self.spool

    def _wait_archived(self, segments: list[str], seg_size: int, params: Any) -> None:
        """Wait until the server says the last segment is archived (pg_stat_archiver) and
        every segment present in the spool is complete: archive_command may be a plain cp
        that is still writing when the file appears."""
        spool = self._need_spool()
        deadline = time.monotonic() + ARCHIVE_WAIT_S
        last = segments[-1]
        while True:
            (archived,) = self._query(
                params, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"
            )
            done = bool(archived) and archived[:8] == last[:8] and archived[:24] >= last
            missing = [
                s for s in segments
                if not (spool / s).is_file() or (spool / s).stat().st_size != seg_size
            ]  # fmt: skip
            if done and not missing:
                return
            if done and time.monotonic() > deadline - ARCHIVE_WAIT_S + 5:
                # archived by the server but not (completely) in the spool: a gap
                return
            if time.monotonic() > deadline:
                raise SourceError(
                    f"postgres source {self.name!r}: WAL segment {missing[0]} did not reach the "
                    f"archive spool {spool} within {ARCHIVE_WAIT_S}s; check archive_mode, "
                    "archive_command and pg_stat_archiver.last_failed_wal on the server"
                )
            time.sleep(0.2)

    # -- dump

    def dump(self, backup_type: str, out: BinaryIO, parent: Manifest | None) -> DumpResult:
        if backup_type in ("FULL", "TRANSACTION_LOG", "INCREMENTAL") and self.spool is not None:
            # The spool is in use until the dump is over: no log backup prunes it meanwhile.
            with spool_in_use(self.spool):
                if backup_type == "FULL":
                    return self._base_backup(out)
                return self._wal_backup(backup_type, out, parent)
        if backup_type == "FULL":
            return self._base_backup(out)
        if backup_type in ("TRANSACTION_LOG", "INCREMENTAL"):
            return self._wal_backup(backup_type, out, parent)
        raise SourceError(
            f"postgres source {self.name!r} (physical): backup type {backup_type} is not "
            f"supported; use one of {', '.join(PHYSICAL_TYPES)} or SCHEMA"
        )

    def _base_backup(self, out: BinaryIO) -> DumpResult:
        from include.backup.sources.postgres import _pg_process, find_client_binary

        self._need_spool()
        params = self._params()
        version_num, seg_size, start_time = self._query(
            params,
            "SELECT current_setting('server_version_num')::int,"
            " current_setting('wal_segment_size')::text, now()",
        )
        seg = _size_setting(seg_size)
        pg_basebackup = find_client_binary("pg_basebackup", version_num // 10000)
        with tempfile.TemporaryDirectory(prefix="pgbase-", dir=self.work_dir) as tmp:
            target = Path(tmp) / "base"
            args = [
                pg_basebackup, "--no-password", "-D", str(target), "-Ft", "-X", "none",
                "--checkpoint=fast", "--no-sync", "-l", f"airflow-backup {self.name}",
            ]  # fmt: skip
            with _pg_process(args, params, self.name, stdout=subprocess.DEVNULL):
                pass
            (end_time,) = self._query(params, "SELECT now()")
            manifest = json.loads((target / "backup_manifest").read_text())
            ranges = manifest.get("WAL-Ranges") or []
            if not ranges:
                raise SourceError(f"postgres source {self.name!r}: backup_manifest has no WAL-Ranges")
            tli = int(ranges[-1]["Timeline"])
            start_lsn, end_lsn = ranges[0]["Start-LSN"], ranges[-1]["End-LSN"]
            wal_first = segment_of(start_lsn, int(ranges[0]["Timeline"]), seg)
            wal_last = segment_of(max(parse_lsn(end_lsn) - 1, 0), tli, seg)
            segments = segment_range(wal_first, wal_last, seg)
            self._wait_archived(segments, seg, params)
            for s in segments:
                if not (self.spool / s).is_file() or (self.spool / s).stat().st_size != seg:  # type: ignore[operator]
                    raise SourceError(
                        f"postgres source {self.name!r}: WAL segment {s} the base backup needs is "
                        f"missing or incomplete in the archive spool {self.spool}"
                    )
            extra = sorted(p.name for p in target.iterdir() if p.name not in ("base.tar", "backup_manifest"))
            if extra:
                raise SourceError(
                    f"postgres source {self.name!r}: the cluster has tablespaces ({', '.join(extra)}); "
                    "physical backups of clusters with tablespaces are not supported in this version"
                )
            written = _write_tar(
                out,
                [("base.tar", target / "base.tar"), ("backup_manifest", target / "backup_manifest")]
                + [(f"wal/{s}", self.spool / s) for s in segments]  # type: ignore[operator]
                + [(f"wal/{h.name}", h) for h in self._history_files()],
            )
        stats = {"dump_bytes": written, "wal_segments": len(segments)}
        log.info("base backup of %s: %d bytes, WAL %s..%s", self.name, written, wal_first, wal_last)
        position = {
            "start_time": _iso(start_time),
            "end_time": _iso(end_time),
            "start_lsn": start_lsn,
            "end_lsn": end_lsn,
            "timeline": tli,
            "wal_first": wal_first,
            "wal_last": wal_last,
            "wal_segment_size": seg,
            "server_version_num": version_num,
        }
        return DumpResult(backup_type="FULL", payload_format=FORMAT_BASE, position=position, stats=stats)

    def _history_files(self) -> list[Path]:
        return sorted(p for p in self._need_spool().glob("*.history") if p.is_file())

    def _wal_backup(self, backup_type: str, out: BinaryIO, parent: Manifest | None) -> DumpResult:
        spool = self._need_spool()
        if parent is None or parent.payload_format not in PHYSICAL_FORMATS:
            raise SourceError(
                f"postgres source {self.name!r}: a {backup_type} backup needs a physical base "
                "backup first (the newest backup of this source at the schedule's targets is "
                f"{'missing' if parent is None else parent.backup_id + ' (' + parent.payload_format + ')'}); "
                "run a FULL schedule of this source (method: physical) once"
            )
        pos = parent.position
        seg = int(pos.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
        base_id = parent.backup_id if parent.backup_type == "FULL" else pos.get("base_id")
        base_wal_last = pos["wal_last"] if parent.backup_type == "FULL" else pos.get("base_wal_last")
        base_end = pos.get("end_time") if parent.backup_type == "FULL" else pos.get("base_end_time")
        if backup_type == "INCREMENTAL":
            # WAL since the last base backup (PostgreSQL < 17 has no incremental base backups).
            if not base_id or not base_wal_last:
                raise SourceError(
                    f"postgres source {self.name!r}: parent {parent.backup_id} names no base backup"
                )
            parent_id, after, start_from = base_id, base_wal_last, base_end
        else:
            parent_id, after, start_from = parent.backup_id, pos["wal_last"], pos.get("end_time")
        params = self._params()
        # A marker commit (its record carries a timestamp >= end_time), then the switch:
        # the segment holding everything up to now gets archived.
        from include.backup.sources.postgres import _connect

        with _connect(params, self.name) as conn, conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT pg_current_xact_id(), now()")
            _, end_time = cur.fetchone()
            cur.execute("COMMIT")
            cur.execute(
                "SELECT pg_walfile_name(pg_switch_wal()), pg_current_wal_lsn()::text,"
                " (SELECT timeline_id FROM pg_control_checkpoint())"
            )
            wal_last, end_lsn, _tli = cur.fetchone()
        first = next_segment(after, seg)
        if split_segment(wal_last, seg)[0] != split_segment(first, seg)[0]:
            raise SourceError(
                f"postgres source {self.name!r}: the server is on another timeline ({wal_last}) "
                f"than the chain ({after}); take a new FULL backup"
            )
        segments = segment_range(first, wal_last, seg) if first <= wal_last else []
        if not segments:
            raise SourceError(
                f"postgres source {self.name!r}: no new WAL after {after} (server at {wal_last})"
            )
        # The archiver works in order: once wal_last is there, a missing one is a gap.
        self._wait_archived([wal_last], seg, params)
        if not (spool / segments[0]).is_file():
            raise SourceError(
                f"postgres source {self.name!r}: WAL segment {segments[0]} (the first after "
                f"{parent.backup_id if backup_type == 'TRANSACTION_LOG' else base_id}, which ends "
                f"at {after}) is missing from the archive spool {spool}; the chain has a gap — "
                "take a new FULL backup"
            )
        for s in segments:
            if not (spool / s).is_file() or (spool / s).stat().st_size != seg:
                raise SourceError(
                    f"postgres source {self.name!r}: WAL segment {s} is missing from the archive "
                    f"spool {spool} (needed between {after} and {wal_last}); the chain has a gap — "
                    "take a new FULL backup"
                )
        written = _write_tar(
            out,
            [(s, spool / s) for s in segments] + [(h.name, h) for h in self._history_files()],
        )
        position = {
            "start_time": start_from or _iso(end_time),
            "end_time": _iso(end_time),
            "start_lsn": _lsn(split_segment(first, seg)[1] * seg),
            "end_lsn": end_lsn,
            "timeline": split_segment(wal_last, seg)[0],
            "wal_first": first,
            "wal_last": wal_last,
            "wal_segment_size": seg,
            "base_id": base_id,
            "base_wal_last": base_wal_last,
            "base_end_time": base_end,
        }
        if self.cfg.prune_wal_archive and backup_type == "TRANSACTION_LOG":
            self._prune_spool(spool, after)
        stats = {"dump_bytes": written, "wal_segments": len(segments)}
        log.info("%s of %s: %d segments %s..%s", backup_type, self.name, len(segments), first, wal_last)
        return DumpResult(
            backup_type=backup_type,
            payload_format=FORMAT_WAL,
            parent_id=parent_id,
            position=position,
            stats=stats,
        )

    def _prune_spool(self, spool: Path, upto: str) -> None:
        """Delete the spool's segments up to ``upto`` (the parent's last one: already in a
        stored backup; never this run's WAL) — only when no other dump reads this spool.

        A base backup in flight still has to copy segments that a log backup published
        meanwhile may hold, and a log backup that chose an older parent still has to copy
        the segments after it: pruning under them would fail their dump. So pruning waits
        for a moment when this dump is alone; the next log backup prunes what this one
        left (the rule is cumulative)."""
        with spool_in_use(spool) as use, use.exclusive() as alone:
            if not alone:
                log.info(
                    "not pruning the WAL spool %s of %s up to %s: another backup is reading it; "
                    "a later log backup will", spool, self.name, upto,
                )  # fmt: skip
                return
            removed = 0
            for p in spool.iterdir():
                if _SEGMENT.match(p.name) and p.name[:8] == upto[:8] and p.name <= upto:
                    p.unlink(missing_ok=True)
                    removed += 1
            log.info("pruned %d WAL segments up to %s from the spool %s", removed, upto, spool)

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
        links = list(chain)
        manifests = [m for m, _ in links]
        self._check_chain(manifests, only)
        from include.backup.catalog.chains import end_time, format_time

        last_end = end_time(manifests[-1])
        target_time = None if until is None else self._target_time(manifests, until)
        # Everything refused below is refused before anything is touched.
        data_dir, port = _parse_into(into)
        _check_data_dir(data_dir, overwrite)
        python = _restore_python()
        work = _Workspace.create(data_dir)
        started = False
        try:
            self._extract_base(links[0][1], work.staging, work.wal, manifests[0].backup_id)
            for m, stream in links[1:]:
                _extract_wal(stream, work.wal, m.backup_id)
            _check_wal_complete(work.wal, manifests)
            port = port or _free_port()
            command = _restore_command(python, _install_wal_restore(work.wal), work.wal)
            _write_recovery_conf(work.staging, data_dir, command, port, target_time)
            _write_marker(work.staging, manifests)
            work.publish()
            work.own()
            t0 = time.monotonic()
            started = True
            _pg_ctl(data_dir, "start", server_major=manifests[0].position.get("server_version_num"))
            _wait_recovered(data_dir, port, self.name)
            replay_s = time.monotonic() - t0
            tables = _count_tables(port, data_dir)
        except BaseException as exc:
            if started:
                stop_restored_server(str(data_dir), quiet=True)
            _add_note(exc, work.discard())
            raise
        finally:
            shutil.rmtree(work.wal, ignore_errors=True)
        recovered_to = format_time(target_time) if target_time else f"end of WAL ({format_time(last_end)})"
        return {
            "data_dir": str(data_dir),
            "port": port,
            "recovered_to": recovered_to,
            "replay_seconds": round(replay_s, 3),
            "tables": tables,
        }

    def _check_chain(self, manifests: list[Manifest], only: list[str] | None) -> None:
        """Refuse what a physical restore cannot do; check the chain links up."""
        if only:
            raise RestoreRefused(
                f"postgres source {self.name!r}: a physical backup restores the whole cluster; "
                "partial restores (only=) need a logical backup (method: logical, pg_dump)"
            )
        if not manifests or manifests[0].payload_format != FORMAT_BASE:
            raise RestoreRefused(
                "a physical restore starts with a FULL base backup (pg_basebackup-tar); got "
                + (manifests[0].backup_id if manifests else "nothing")
            )
        for m in manifests[1:]:
            if m.payload_format != FORMAT_WAL:
                raise RestoreRefused(f"backup {m.backup_id} ({m.payload_format}) is not a WAL backup")
        for prev, cur in pairwise(manifests):
            if cur.parent_id != prev.backup_id:
                raise IntegrityError(
                    f"backup chain broken: {cur.backup_id} names parent {cur.parent_id}, "
                    f"not {prev.backup_id}"
                )
            problem = continuity(prev, cur)
            if problem:
                raise IntegrityError(
                    f"backup chain broken between {prev.backup_id} and {cur.backup_id}: {problem}"
                )

    def _target_time(self, manifests: list[Manifest], until: datetime) -> datetime | None:
        """The recovery_target_time for ``until`` (None: replay all the WAL); refuse a
        point in time the chain does not reach."""
        from include.backup.catalog.chains import end_time, format_time

        first_end, last_end = end_time(manifests[0]), end_time(manifests[-1])
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
                f"chain of source {self.name}"
            )
        if until < last_end and len(manifests) > 1:
            return until
        return None

    def _extract_base(self, stream: BinaryIO, data_dir: Path, wal_dir: Path, backup_id: str) -> None:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=BLOCK) as outer:
            for member in outer:
                f = outer.extractfile(member) if member.isfile() else None
                if f is None:
                    continue
                if member.name == "base.tar":
                    _extract_data_dir(f, data_dir, backup_id)
                elif member.name.startswith("wal/"):
                    name = member.name[len("wal/") :]
                    if not wal_file_name_ok(name):
                        raise IntegrityError(
                            f"base backup {backup_id}: member {member.name!r} is not a WAL file "
                            "name; refusing the payload (restore from another target or backup)"
                        )
                    _copy_member(f, wal_dir / name)
                elif member.name == "backup_manifest":
                    _copy_member(f, wal_dir / "backup_manifest")


# --- the spool in use ------------------------------------------------------------------------

SPOOL_LOCK_NAME = ".airflow-backup.lock"  # not a WAL file name: the archiver never touches it


class SpoolUse:
    """A shared lock on a WAL spool, held by every dump reading it (one per process,
    counted: POSIX locks belong to the process, and closing any descriptor of the file
    would drop it). Pruning upgrades it to exclusive without waiting: that succeeds only
    when no other process (on any host sharing the spool over NFS) holds it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd  # None: the spool is read-only here (and so cannot be pruned from here)
        self.users = 0
        self.pid = os.getpid()  # a forked child inherits the object but not the lock

    @contextmanager
    def exclusive(self) -> Iterator[bool]:
        """True (and exclusive until the block ends) when this process is the only user."""
        if self.fd is None:
            yield False
            return
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_SH)  # back to shared: still reading


_SPOOLS: dict[Path, SpoolUse] = {}


@contextmanager
def spool_in_use(spool: Path) -> Iterator[SpoolUse]:
    """Mark ``spool`` as read by this process until the block ends (re-entrant)."""
    key = spool.absolute()
    use = _SPOOLS.get(key)
    if use is None or use.pid != os.getpid():
        use = SpoolUse(key / SPOOL_LOCK_NAME, _open_shared(key / SPOOL_LOCK_NAME))
        _SPOOLS[key] = use
    use.users += 1
    try:
        yield use
    finally:
        use.users -= 1
        if use.users == 0:
            del _SPOOLS[key]
            if use.fd is not None:
                os.close(use.fd)


def _open_shared(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except FileNotFoundError:
        return None  # no spool: the dump itself says so, with the fix
    except PermissionError:
        log.info("WAL spool %s is read-only for this worker: it cannot be pruned from here", path.parent)
        return None
    # Blocks only while another process prunes (a few unlinks).
    fcntl.lockf(fd, fcntl.LOCK_SH)
    return fd


# --- restore helpers -----------------------------------------------------------------------


def _parse_into(into: str) -> tuple[Path, int | None]:
    """``/path`` or ``/path:PORT``, checked strictly (see ``check_path``): the path reaches
    pg_ctl, which starts the server through /bin/sh with it in double quotes."""
    m = re.fullmatch(r"(.+?):(\d{2,5})", into)
    path, port = (m.group(1), int(m.group(2))) if m else (into, None)
    if not path.startswith("/"):
        raise RestoreRefused(
            f"into {into!r}: a physical restore goes into a new data directory given as an "
            "absolute path, optionally followed by :PORT (e.g. /srv/pg-restored:5440)"
        )
    check_path(path, "into")
    if port is not None and not 1 <= port <= 65535:
        raise RestoreRefused(f"into {into!r}: port {port} is not between 1 and 65535")
    data_dir = Path(path)
    if data_dir.parent == data_dir:
        raise RestoreRefused(f"into {into!r} is the root directory; give a new data directory")
    return data_dir, port


def _check_data_dir(data_dir: Path, overwrite: bool) -> None:
    """Refuse a destination the restore may not fill; deletes nothing (a replaced data
    directory goes only once the new one is extracted, see ``_Workspace.publish``)."""
    if data_dir.is_symlink():
        raise RestoreRefused(
            f"{data_dir} is a symbolic link; give the directory it points to, or a new path"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise RestoreRefused(f"{data_dir} exists and is not a directory")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if (data_dir / "postmaster.pid").exists():
            raise RestoreRefused(f"{data_dir} holds a running (or crashed) server; stop it first")
        if not overwrite:
            raise RestoreRefused(
                f"{data_dir} is not empty; restore into a new data directory, or pass "
                "overwrite to replace a data directory an earlier restore created there"
            )
        if not _is_restored_data_dir(data_dir):
            raise RestoreRefused(
                f"{data_dir} is not a PostgreSQL data directory restored by this tool (it needs "
                f"PG_VERSION, global/pg_control and {RESTORE_MARKER}); overwrite replaces only "
                "those. Restore into a new directory, or remove this one yourself if it must go"
            )
    if os.geteuid() == 0:
        probe = data_dir.parent
        while not probe.exists():
            probe = probe.parent
        ok = subprocess.run(
            ["runuser", "-u", PG_OS_USER, "--", "test", "-x", str(probe)], check=False, capture_output=True
        )
        if ok.returncode != 0:
            raise RestoreRefused(
                f"the {PG_OS_USER} OS user cannot reach {probe}; restore into a directory "
                "under a path it can traverse (e.g. under /tmp or /srv)"
            )


# Written into every data directory a restore created: what `overwrite` may replace.
RESTORE_MARKER = "airflow_backup_restore.json"
_AUTO_CONF_MARK = "# written by airflow-backup point-in-time restore"


def _is_restored_data_dir(data_dir: Path) -> bool:
    """A PostgreSQL data directory that a restore of ours created: PG_VERSION and
    global/pg_control, and our marker file (or, from restores before the marker existed,
    our line in postgresql.auto.conf)."""
    if not (data_dir / "PG_VERSION").is_file() or not (data_dir / "global" / "pg_control").is_file():
        return False
    if (data_dir / RESTORE_MARKER).is_file():
        return True
    try:
        return _AUTO_CONF_MARK in (data_dir / "postgresql.auto.conf").read_text(errors="replace")
    except OSError:
        return False


def _write_marker(data_dir: Path, manifests: list[Manifest]) -> None:
    marker = {
        "restored_by": "airflow-backup",
        "restored_at": _iso(datetime.now(UTC)),
        "chain": [m.backup_id for m in manifests],
    }
    (data_dir / RESTORE_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


class _Workspace:
    """Where a restore extracts before the result is published at ``data_dir``.

    Both directories are new (mkdtemp) and hidden, so a restore never reuses (nor deletes)
    a directory it did not create. When ``data_dir`` does not exist they sit beside it
    and publishing is one rename; when it exists (empty, or a data directory of ours to
    replace: it may be a mount point, which cannot be renamed) they sit inside it and
    publishing moves the extracted entries up, PG_VERSION last, so nothing looks like a
    data directory before the whole base is there."""

    def __init__(self, data_dir: Path, holder: Path, staging: Path, wal: Path) -> None:
        self.data_dir = data_dir
        self.holder = holder
        self.staging = staging
        self.wal = wal
        self.published = False

    @classmethod
    def create(cls, data_dir: Path) -> _Workspace:
        inside = data_dir.is_dir()
        if not inside:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
        holder = data_dir if inside else data_dir.parent
        prefix = ".restore" if inside else f".{data_dir.name}.restore"
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}-data-", dir=holder))
        wal = Path(tempfile.mkdtemp(prefix=f"{prefix}-wal-", dir=holder))
        return cls(data_dir, holder, staging, wal)

    def publish(self) -> None:
        if self.holder != self.data_dir:
            os.rename(self.staging, self.data_dir)  # fails if something appeared meanwhile
        else:
            # What is here besides our two directories is a data directory of ours that
            # overwrite replaces (checked by _check_data_dir); it goes only now.
            self._clear(keep_wal=True)
            names = sorted(p.name for p in self.staging.iterdir())
            for name in sorted(names, key=lambda n: n == "PG_VERSION"):
                os.rename(self.staging / name, self.data_dir / name)
            self.staging.rmdir()
            os.chmod(self.data_dir, 0o700)  # PostgreSQL refuses a group/world-readable one
        self.published = True

    def own(self) -> None:
        """Hand the data directory and the WAL to the server's OS user (when root)."""
        if self.holder == self.data_dir:
            _own(self.data_dir)  # the WAL dir is inside
        else:
            _own(self.data_dir, self.wal)

    def discard(self) -> str:
        """Remove what the restore wrote (not the WAL dir: ``finally`` does); say what."""
        if not self.published:
            shutil.rmtree(self.staging, ignore_errors=True)
            if self.holder == self.data_dir:
                return f"nothing was changed in {self.data_dir}"
            return f"{self.data_dir} was not created"
        if self.holder != self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return f"the partly restored data directory {self.data_dir} was removed"
        self._clear(keep_wal=True)
        return f"the partly restored contents of {self.data_dir} were removed (it is empty again)"

    def _clear(self, *, keep_wal: bool) -> None:
        for p in self.data_dir.iterdir():
            if p == self.staging or (keep_wal and p == self.wal):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _add_note(exc: BaseException, note: str) -> None:
    """Append ``note`` to the message of one of our errors (callers and reports show
    str(exc)); other exceptions get it as a traceback note."""
    if isinstance(exc, BackupError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} ({note})",)
    else:
        exc.add_note(note)


def _extract_data_dir(f: IO[bytes], data_dir: Path, backup_id: str) -> None:
    """base.tar into ``data_dir`` with tarfile's "data" filter: device nodes, fifos,
    absolute names, '..' and links leaving the directory are refused, not created."""
    with tarfile.open(fileobj=f, mode="r|", bufsize=BLOCK) as inner:
        try:
            inner.extractall(data_dir, filter="data")
        except tarfile.FilterError as exc:
            raise IntegrityError(
                f"base backup {backup_id}: base.tar member {exc.tarinfo.name!r} refused ({exc}); "
                "a base backup holds only files and directories inside the data directory. "
                "Restore from another target or backup"
            ) from None


def _check_wal_complete(wal_dir: Path, manifests: list[Manifest]) -> None:
    """Every segment from the base backup's first to the last backup's last is there."""
    seg = int(manifests[0].position.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
    needed = segment_range(manifests[0].position["wal_first"], manifests[-1].position["wal_last"], seg)
    for s in needed:
        if not (wal_dir / s).is_file():
            raise IntegrityError(
                f"WAL segment {s} is in none of the chain's backups "
                f"({', '.join(m.backup_id for m in manifests)}); cannot replay past it"
            )


def _extract_wal(stream: BinaryIO, wal_dir: Path, backup_id: str) -> None:
    with tarfile.open(fileobj=stream, mode="r|", bufsize=BLOCK) as tar:
        for member in tar:
            name = Path(member.name).name
            if not member.isfile() or not wal_file_name_ok(name):  # only a checked base name is used
                continue
            f = tar.extractfile(member)
            if f is not None:
                _copy_member(f, wal_dir / name)


def _copy_member(src: IO[bytes], dest: Path) -> None:
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out, BLOCK)


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
            _as_owner([c, "-I", "-c", "import shutil, re"]), check=False, capture_output=True, cwd="/"
        )
        if probe.returncode == 0:
            return c
    raise RestoreRefused(
        f"the {PG_OS_USER} OS user can run none of the Python interpreters "
        f"{', '.join(seen) or '(none found)'}; the restored server's restore_command needs "
        f"one: install python3 system-wide (e.g. apt-get install python3-minimal)"
    )


def _restore_command(python: str, script: Path, wal_dir: Path) -> str:
    """restore_command: our fixed program, each of our arguments quoted for /bin/sh and
    its '%' doubled (PostgreSQL expands %f/%p/%r in the string), then %f and %p (a WAL file
    name and pg_wal/RECOVERYXLOG: PostgreSQL's own, plain characters)."""
    ours = [python, "-I", str(script), str(wal_dir)]
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
        f.write(f"\n{_AUTO_CONF_MARK}\n")
        f.writelines(f"{k} = {v}\n" for k, v in settings.items())
    (staging / "recovery.signal").write_text("")
    os.chmod(staging, 0o700)


def _own(*paths: Path) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(PG_OS_USER)
    for top in paths:
        os.chown(top, pw.pw_uid, pw.pw_gid)
        for root, dirs, files in os.walk(top):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OS_USER, "--", *argv] if os.geteuid() == 0 else argv


def _pg_ctl_path(server_major: int | None = None) -> str:
    from include.backup.sources.postgres import find_client_binary

    return find_client_binary("pg_ctl", (server_major // 10000) if server_major else None)


def _pg_ctl(data_dir: Path, action: str, *, server_major: int | None = None) -> None:
    logfile = data_dir / "restore.log"
    argv = [_pg_ctl_path(server_major), "-D", str(data_dir), "-w", "-t", str(RECOVERY_WAIT_S)]
    if action == "start":
        argv += ["-l", str(logfile), "start"]
    else:
        argv += ["-m", "fast", "stop"]
    proc = subprocess.run(_as_owner(argv), check=False, capture_output=True, text=True, cwd="/")
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
    import psycopg2  # type: ignore[import-untyped]

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname, connect_timeout=10)
    conn.autocommit = True
    return conn


def _wait_recovered(data_dir: Path, port: int, source_name: str) -> None:
    deadline = time.monotonic() + RECOVERY_WAIT_S
    while True:
        try:
            conn = _connect_local(port, data_dir)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_is_in_recovery()")
                    if not cur.fetchone()[0]:
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


def _count_tables(port: int, data_dir: Path) -> dict[str, dict[str, int]]:
    """Exact row counts per table, per non-template database: {db: {table: rows}}."""
    from include.backup.sources.postgres import _table_row_counts

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
                out[db] = _table_row_counts(cur, exact=True)
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
        _pg_ctl(path, "stop")
    except SourceError:
        if not quiet:
            raise


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- misc ----------------------------------------------------------------------------------


def _write_tar(out: BinaryIO, members: list[tuple[str, Path]]) -> int:
    counter = _Counter(out)
    with tarfile.open(fileobj=counter, mode="w|", bufsize=BLOCK) as tar:  # type: ignore[call-overload]
        for arcname, path in members:
            tar.add(str(path), arcname=arcname, recursive=False)
    return counter.count


class _Counter(io.RawIOBase):
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.out.write(data)
        n = len(data)
        self.count += n
        return n


def _size_setting(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kMG]?B)?", str(text).strip())
    if not m:
        return DEFAULT_SEGMENT_SIZE
    mult = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "B": 1, None: 1}[m.group(2)]
    return int(m.group(1)) * mult


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
