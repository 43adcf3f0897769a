"""wal-fetch: restore one pushed WAL file (``%f``) to where PostgreSQL wants it (``%p``),
verified, decrypted and decompressed; and the prefetcher that gets the next ones ready.

A file is fetched from the first target that holds its record. Before a byte reaches
PostgreSQL the record is authenticated (:func:`~include.backup.wal.record.parse_record`),
the container is checked against the record's size and SHA-256, decrypted (bound to the
source and the name, so a container moved under another name fails) and its plaintext
checked against the record's SHA-256. A file that fails any of this at every target
holding it is refused: PostgreSQL then ends recovery at the last good file, and the refusal
is written beside the cache (``<name>.refused``) for the restore to report.

Prefetch: replay asks for files one at a time, each a new process; so after each fetch,
the next ``prefetch`` segments are fetched in parallel into a cache directory (each written
whole, then renamed) by one detached process, and the next call finds its file there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zstandard

from include.backup.errors import BackupError, IntegrityError, ObjectNotFound
from include.backup.pipeline.crypto import DecryptingReader
from include.backup.wal.record import (
    SEGMENT,
    KeyLookup,
    WalRecord,
    check_name,
    context,
    object_key,
    parse_record,
    record_key,
)

REFUSED = ".refused"
LOCK = ".lock"
STALE_LOCK_S = 120.0
DEFAULT_SEGMENT_SIZE = 16 << 20


class NotArchived(BackupError):
    """No target holds the file (the normal end of archive recovery)."""


# --- one file ----------------------------------------------------------------------------


def fetch_bytes(targets: Sequence[Any], source: str, name: str, keys: KeyLookup) -> tuple[bytes, WalRecord]:
    """The verified content of ``name`` and its record; NotArchived when no target holds
    it, IntegrityError when every target holding it fails a check (all reasons given)."""
    check_name(name)
    problems: list[str] = []
    for target in targets:
        try:
            raw = target.read_bytes(record_key(source, name))
        except ObjectNotFound:
            continue
        try:
            record = parse_record(raw, keys, source=source, name=name)
            return _open(target, record, keys), record
        except (IntegrityError, ObjectNotFound) as exc:
            problems.append(f"target '{target.name}': {exc}")
    if problems:
        raise IntegrityError(f"WAL file {name} of {source} refused: " + "; ".join(problems))
    raise NotArchived(f"WAL file {name} of {source} is not archived at any target")


def _open(target: Any, record: WalRecord, keys: KeyLookup) -> bytes:
    blob = target.read_bytes(object_key(record.source, record.name))
    where = f"WAL file {record.name} at target '{target.name}'"
    if len(blob) != record.stored_size or hashlib.sha256(blob).hexdigest() != record.stored_sha256:
        raise IntegrityError(f"{where} does not match its record (altered or truncated at the target)")
    reader = DecryptingReader(io.BytesIO(blob), keys, context=context(record.source, record.name))
    compressed = reader.read(-1)
    if not reader.finished:
        raise IntegrityError(f"{where}: the container ends early")
    try:
        data = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=record.size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{where} does not decompress ({exc})") from None
    if len(data) != record.size or hashlib.sha256(data).hexdigest() != record.sha256:
        raise IntegrityError(f"{where}: its content does not match the record's SHA-256")
    return data


def write_whole(dest: Path, data: bytes) -> None:
    """``dest`` appears complete or not at all (temp file beside it, fsync, rename)."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# --- the cache the prefetcher fills ------------------------------------------------------


def take_from_cache(cache: Path, name: str, dest: Path, *, wait_s: float = 60.0) -> bool | None:
    """Move a prefetched ``name`` to ``dest``: True when done, None when not cached (fetch
    it), IntegrityError when the prefetcher refused it. Waits for a prefetch in progress."""
    deadline = time.monotonic() + wait_s
    while True:
        cached, refused, lock = cache / name, cache / (name + REFUSED), cache / (name + LOCK)
        if cached.is_file():
            try:
                os.replace(cached, dest)
            except OSError:  # another file system: copy
                write_whole(dest, cached.read_bytes())
                cached.unlink(missing_ok=True)
            return True
        if refused.is_file():
            raise IntegrityError(refused.read_text(errors="replace").strip())
        if not lock.exists() or time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def prefetch_into(
    cache: Path,
    names: Iterable[str],
    fetch: Callable[[str], bytes],
    workers: int,
    *,
    strict: bool = False,
) -> None:
    """Fetch ``names`` into ``cache`` with ``workers`` threads (oldest first): each file
    whole or not at all, a refusal as ``<name>.refused``, a missing file skipped. A name
    already cached, refused or being fetched by someone else (its lock) is left alone.
    Other errors (an unreachable target) are left to the fetch itself, or, with
    ``strict`` (the restore, where nothing else fetches), written as refusals too."""
    cache.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> None:
        lock = cache / (name + LOCK)
        if (cache / name).exists() or (cache / (name + REFUSED)).exists() or not _lock(lock):
            return
        try:
            data = fetch(name)
            write_whole(cache / name, data)
        except NotArchived:
            pass
        except IntegrityError as exc:
            (cache / (name + REFUSED)).write_text(str(exc) + "\n")
        except Exception as exc:  # noqa: BLE001 - see the docstring
            if strict:
                (cache / (name + REFUSED)).write_text(f"WAL file {name} could not be fetched: {exc}\n")
        finally:
            lock.unlink(missing_ok=True)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="wal-prefetch") as pool:
        list(pool.map(one, names))


def _lock(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        try:
            if time.time() - path.stat().st_mtime > STALE_LOCK_S:  # its prefetcher died
                path.unlink(missing_ok=True)
                return _lock(path)
        except FileNotFoundError:
            return _lock(path)
        return False


def following(name: str, count: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    """The ``count`` segment names after the segment ``name`` (none after other files)."""
    if not SEGMENT.match(name) or count <= 0:
        return []
    per_id = 0x100000000 // seg_size
    tli, segno = int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:], 16)
    return [f"{tli:08X}{n // per_id:08X}{n % per_id:08X}" for n in range(segno + 1, segno + 1 + count)]
