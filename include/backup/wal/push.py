"""wal-push: archive one WAL file (what PostgreSQL passes as ``%p``) to every target of
the source's log schedule.

The file is read once, compressed (zstd), encrypted (the backup container, bound to the
source and the file name) and uploaded to the targets in parallel: the container first,
then its signed record (:mod:`~include.backup.wal.record`), so a push cut short leaves no
record and the file is not archived. Exit status 0 only when every target holds it.

PostgreSQL retries a failed ``archive_command`` with the same file, and may archive a file
a second time after a crash: a target whose record already names the same content
(SHA-256) is left as it is. A record naming other content is refused (non-zero exit, the
file stays in pg_wal): two servers archiving into one source, or a restored server
archiving over its origin's history, must not overwrite what a restore needs.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from include.backup.errors import BackupError, IntegrityError, ObjectNotFound
from include.backup.keys import KeyRing
from include.backup.pipeline.crypto import EncryptingWriter
from include.backup.wal.record import WalRecord, check_name, context, object_key, parse_record, record_key

ZSTD_LEVEL = 1  # WAL is pushed while the server waits: the fastest level (3-6x on real WAL)


class WalConflict(BackupError):
    """A target already holds another content under this WAL file name."""


@dataclass
class PushResult:
    target: str
    pushed: bool  # False: the target already held this content (a retry)
    stored_size: int


@dataclass
class _Sealed:
    data: bytes
    sha256: str


def push_file(path: Path, source: str, targets: Sequence[Any], keys: KeyRing) -> list[PushResult]:
    """Archive ``path`` at every target (see the module docstring); raises on any failure."""
    name = check_name(path.name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"wal-push: cannot read {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    sealed: list[_Sealed] = []  # made once, only if some target needs it

    def seal() -> _Sealed:
        if not sealed:
            sealed.append(_seal(data, source, name, keys))
        return sealed[0]

    def one(target: Any) -> PushResult:
        if _already_there(target, source, name, digest, keys):
            return PushResult(target.name, False, 0)
        box = seal()
        key_id, kek = keys.active()
        target.put_bytes(object_key(source, name), box.data)
        record = WalRecord(
            source=source, name=name, size=len(data), sha256=digest,
            stored_size=len(box.data), stored_sha256=box.sha256, key_id=key_id,
            pushed_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        ).sign(kek)  # fmt: skip
        target.put_bytes(record_key(source, name), record.to_json())
        return PushResult(target.name, True, len(box.data))

    if len(targets) == 1:
        return [one(targets[0])]
    seal()  # before the threads: compress and encrypt once, not per target
    with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="wal-push") as pool:
        futures = [pool.submit(one, t) for t in targets]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return [f.result() for f in futures]


def copy_to_spool(path: Path, spool: Path) -> None:
    """Also keep the file in the source's WAL spool (``wal_archive_dir``), where base
    backups read the WAL they need: written whole then renamed, never over a file of the
    same size (a retry), so the spool's readers never see a partial segment."""
    dest = spool / path.name
    if dest.is_file() and dest.stat().st_size == path.stat().st_size:
        return
    tmp = spool / f".{path.name}.tmp-{os.getpid()}"
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(
            f"wal-push: pushed {path.name}, but copying it into the WAL spool {spool} "
            f"(wal_archive_dir) failed: {exc.strerror or exc}; the server's OS user must be "
            "able to write there (base backups read their WAL from it)"
        ) from None


def _seal(data: bytes, source: str, name: str, keys: KeyRing) -> _Sealed:
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    key_id, kek = keys.active()
    out = io.BytesIO()
    with EncryptingWriter(out, kek, key_id, context=context(source, name)) as w:
        w.write(compressed)
    blob = out.getvalue()
    return _Sealed(blob, hashlib.sha256(blob).hexdigest())


def _already_there(target: Any, source: str, name: str, digest: str, keys: KeyRing) -> bool:
    """True when ``target`` holds this very file already; WalConflict when it holds another."""
    try:
        raw = target.read_bytes(record_key(source, name))
    except ObjectNotFound:
        return False
    try:
        record = parse_record(raw, keys, source=source, name=name)
    except IntegrityError as exc:
        raise WalConflict(
            f"wal-push: target '{target.name}' already has a record for {name} of {source} that "
            f"does not authenticate ({exc}); look at {record_key(source, name)} there and remove "
            "it (and the file beside it) only if it is not needed, then PostgreSQL's next retry "
            "archives the file"
        ) from None
    if record.sha256 == digest:
        return True
    raise WalConflict(
        f"wal-push: target '{target.name}' already holds {name} of source {source} with other "
        f"content (sha256 {record.sha256[:12]}…, pushed {record.pushed_at}; this file "
        f"{digest[:12]}…): another server is archiving as the same source (a promoted standby, "
        "or a restored copy with archive_mode on?). Nothing was overwritten; give that server "
        "its own source name (--source) or stop its archiving"
    )
