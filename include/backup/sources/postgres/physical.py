"""PostgreSQL physical backups: base backups (pg_basebackup) and WAL from the archive spool;
their restore is a point-in-time recovery (:mod:`~include.backup.sources.postgres.recovery`).

Selected by ``method: physical`` on a postgres source (``PostgresSource`` in logical.py
delegates here); needs ``wal_archive_dir``, the directory the server's ``archive_command``
copies WAL segments into, readable by the worker (:mod:`~include.backup.sources.postgres.spool`).

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

Position keys: see :mod:`~include.backup.sources.postgres.wal`. For a FULL the consistent
point is the end of its WAL (``end_lsn``); ``end_time`` is read from the server right after
the backup stopped. A log backup's ``end_time`` is the start of a marker transaction
committed just before the segment switch, so every target time inside a log's range is
followed by a commit record in that log and ``recovery_target_time`` is always reached.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from include.backup.catalog.manifest import Manifest
from include.backup.errors import SourceError
from include.backup.sources.base import DumpResult
from include.backup.sources.postgres.client import (
    BLOCK_SIZE,
    PgParams,
    connect,
    find_client_binary,
    params_from_connection,
    pg_process,
)
from include.backup.sources.postgres.recovery import restore_chain
from include.backup.sources.postgres.spool import prune_spool, spool_in_use
from include.backup.sources.postgres.wal import (
    DEFAULT_SEGMENT_SIZE,
    FORMAT_BASE,
    FORMAT_WAL,
    PHYSICAL_FORMATS,
    iso_utc,
    lsn_text,
    next_segment,
    parse_lsn,
    segment_of,
    segment_range,
    size_setting,
    split_segment,
)

log = logging.getLogger(__name__)

PHYSICAL_TYPES = ("FULL", "INCREMENTAL", "TRANSACTION_LOG")
ARCHIVE_WAIT_S = 120


# --- the physical side of the postgres source --------------------------------------------


class PhysicalPostgres:
    """Base backups, WAL and PITR for one postgres source (``cfg.method == "physical"``)."""

    def __init__(self, name: str, cfg: Any, *, work_dir: Path | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.work_dir = work_dir
        self.spool = Path(cfg.wal_archive_dir) if cfg.wal_archive_dir else None

    # -- helpers

    def _params(self) -> PgParams:
        return params_from_connection(self.cfg.conn_id, self.cfg.database)

    def _query(self, params: PgParams, sql: str) -> tuple[Any, ...]:
        with connect(params, self.name) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return tuple(cur.fetchone())

    def _need_spool(self) -> Path:
        if self.spool is None or not self.spool.is_dir():
            raise SourceError(
                f"postgres source {self.name!r}: wal_archive_dir {self.spool} is not a "
                "directory this worker can read; point it at the server's archive spool"
            )
        return self.spool

    def _wait_archived(self, segments: list[str], seg_size: int, params: PgParams) -> None:
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
        self._need_spool()
        params = self._params()
        version_num, seg_size, start_time = self._query(
            params,
            "SELECT current_setting('server_version_num')::int,"
            " current_setting('wal_segment_size')::text, now()",
        )
        seg = size_setting(seg_size)
        pg_basebackup = find_client_binary("pg_basebackup", version_num // 10000)
        with tempfile.TemporaryDirectory(prefix="pgbase-", dir=self.work_dir) as tmp:
            target = Path(tmp) / "base"
            args = [
                pg_basebackup, "--no-password", "-D", str(target), "-Ft", "-X", "none",
                "--checkpoint=fast", "--no-sync", "-l", f"airflow-backup {self.name}",
            ]  # fmt: skip
            with pg_process(args, params, self.name, stdout=subprocess.DEVNULL):
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
            "start_time": iso_utc(start_time),
            "end_time": iso_utc(end_time),
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
        with connect(params, self.name) as conn, conn.cursor() as cur:
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
            "start_time": start_from or iso_utc(end_time),
            "end_time": iso_utc(end_time),
            "start_lsn": lsn_text(split_segment(first, seg)[1] * seg),
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
            prune_spool(spool, after, self.name)
        stats = {"dump_bytes": written, "wal_segments": len(segments)}
        log.info("%s of %s: %d segments %s..%s", backup_type, self.name, len(segments), first, wal_last)
        return DumpResult(
            backup_type=backup_type,
            payload_format=FORMAT_WAL,
            parent_id=parent_id,
            position=position,
            stats=stats,
        )

    # -- restore

    def restore(
        self,
        chain: Iterable[tuple[Manifest, BinaryIO]],
        into: str,
        *,
        only: list[str] | None = None,
        overwrite: bool = False,
        until: datetime | None = None,
        pushed: Any = None,
    ) -> dict[str, Any]:
        """Point-in-time recovery of a chain (a base backup and its WAL backups, or a base
        and the pushed WAL: ``pushed``) into a new data directory: see
        :func:`~include.backup.sources.postgres.recovery.restore_chain`."""
        return restore_chain(
            self.name, list(chain), into, only=only, overwrite=overwrite, until=until, pushed=pushed
        )


# --- misc ----------------------------------------------------------------------------------


def _write_tar(out: BinaryIO, members: list[tuple[str, Path]]) -> int:
    counter = _Counter(out)
    with tarfile.open(fileobj=counter, mode="w|", bufsize=BLOCK_SIZE) as tar:  # type: ignore[call-overload]
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
