"""The destination of a physical PostgreSQL restore: the ``into`` path and port, the checks
on a data directory before anything is touched, the marker that says a restore of ours
created it, the hidden workspace it is extracted into before being published, and the
extraction of base and WAL backups (tarfile's "data" filter; only WAL file names)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO

from include.backup.catalog.manifest import Manifest
from include.backup.dr.destinations import check_path
from include.backup.errors import IntegrityError, RestoreRefused
from include.backup.sources.postgres.client import BLOCK_SIZE
from include.backup.sources.postgres.cluster import PG_OS_USER, own_paths
from include.backup.sources.postgres.wal import iso_utc
from include.backup.sources.postgres.walrestore import wal_file_name_ok

# --- the destination -----------------------------------------------------------------------


def parse_into(into: str) -> tuple[Path, int | None]:
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


def check_data_dir(data_dir: Path, overwrite: bool) -> None:
    """Refuse a destination the restore may not fill; deletes nothing (a replaced data
    directory goes only once the new one is extracted, see ``Workspace.publish``)."""
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
AUTO_CONF_MARK = "# written by airflow-backup point-in-time restore"


def _is_restored_data_dir(data_dir: Path) -> bool:
    """A PostgreSQL data directory that a restore of ours created: PG_VERSION and
    global/pg_control, and our marker file (or, from restores before the marker existed,
    our line in postgresql.auto.conf)."""
    if not (data_dir / "PG_VERSION").is_file() or not (data_dir / "global" / "pg_control").is_file():
        return False
    if (data_dir / RESTORE_MARKER).is_file():
        return True
    try:
        return AUTO_CONF_MARK in (data_dir / "postgresql.auto.conf").read_text(errors="replace")
    except OSError:
        return False


def write_marker(data_dir: Path, manifests: list[Manifest]) -> None:
    marker = {
        "restored_by": "airflow-backup",
        "restored_at": iso_utc(datetime.now(UTC)),
        "chain": [m.backup_id for m in manifests],
    }
    (data_dir / RESTORE_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


class Workspace:
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
    def create(cls, data_dir: Path) -> Workspace:
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
            # overwrite replaces (checked by check_data_dir); it goes only now.
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
            own_paths(self.data_dir)  # the WAL dir is inside
        else:
            own_paths(self.data_dir, self.wal)

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


# --- extraction ----------------------------------------------------------------------------


def extract_base(stream: BinaryIO, data_dir: Path, wal_dir: Path, backup_id: str) -> None:
    """A base backup's payload: base.tar into ``data_dir``, its WAL and backup_manifest
    into ``wal_dir``."""
    with tarfile.open(fileobj=stream, mode="r|", bufsize=BLOCK_SIZE) as outer:
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


def _extract_data_dir(f: IO[bytes], data_dir: Path, backup_id: str) -> None:
    """base.tar into ``data_dir`` with tarfile's "data" filter: device nodes, fifos,
    absolute names, '..' and links leaving the directory are refused, not created."""
    with tarfile.open(fileobj=f, mode="r|", bufsize=BLOCK_SIZE) as inner:
        try:
            inner.extractall(data_dir, filter="data")
        except tarfile.FilterError as exc:
            raise IntegrityError(
                f"base backup {backup_id}: base.tar member {exc.tarinfo.name!r} refused ({exc}); "
                "a base backup holds only files and directories inside the data directory. "
                "Restore from another target or backup"
            ) from None


def extract_wal(stream: BinaryIO, wal_dir: Path, backup_id: str) -> None:
    with tarfile.open(fileobj=stream, mode="r|", bufsize=BLOCK_SIZE) as tar:
        for member in tar:
            name = Path(member.name).name
            if not member.isfile() or not wal_file_name_ok(name):  # only a checked base name is used
                continue
            f = tar.extractfile(member)
            if f is not None:
                _copy_member(f, wal_dir / name)


def _copy_member(src: IO[bytes], dest: Path) -> None:
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out, BLOCK_SIZE)
