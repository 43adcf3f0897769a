"""The storage target interface (modelled on restic's backend), and the key rules every
target applies.

Targets move opaque bytes: they never see plaintext and know nothing of compression,
encryption or manifests. Keys are '/'-separated paths relative to the target's root
(its directory, bucket prefix or container prefix).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from include.backup.errors import TargetError

# Temporary upload files on stores that publish by renaming (local disk, SFTP, FTP) are
# named ``.<name>.tmp-<random>``: never listed, and refused as object keys.
TEMP_MARKER = ".tmp-"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@dataclass(frozen=True)
class Capabilities:
    """What a kind of store can do beyond the interface's contracts (restic's ``Properties``)."""

    # free_bytes() can report the free space (it may still answer None on a store that
    # cannot tell today, e.g. an SFTP server without statvfs); object stores are unbounded.
    free_space: bool = False
    # A put that replaces an existing object is atomic on every server: readers see the
    # old or the new object, never none. False where some servers need the old file
    # removed before the rename (SFTP without posix-rename, FTP).
    atomic_replace: bool = True
    # list_partial_uploads() finds what a put killed before it published left behind
    # (temporary files, open multipart uploads), and remove_partial_upload() removes it.
    # False where the store expires such leftovers itself and offers no way to list them
    # (Azure's uncommitted blocks and GCS's resumable sessions go after a week).
    partial_uploads: bool = False


@dataclass(frozen=True)
class PartialUpload:
    """What a put killed before it published left at the target: a temporary file or an
    open multipart upload. Never listed, never an object, never part of a backup."""

    key: str  # where it is: the temp file's key, or the key a multipart upload was for
    started_at: datetime | None  # its last write (temp file) or its start (multipart), UTC
    size: int | None = None  # bytes it holds, when the store says
    upload_id: str | None = None  # the store's handle (S3's UploadId), when it has one


@runtime_checkable
class SweepsPartialUploads(Protocol):
    """The optional part of the interface the orphan sweep uses (every target here has
    it; ``capabilities.partial_uploads`` says whether it can find anything)."""

    def list_partial_uploads(self, prefix: str = "") -> list[PartialUpload]:
        """Every leftover of an interrupted put whose key starts with ``prefix``, uploads
        still in progress included: the caller decides what is old enough. Raises
        TargetError."""
        ...

    def remove_partial_upload(self, upload: PartialUpload) -> None:
        """Remove one leftover (delete the temp file, abort the multipart upload); one
        already gone is not an error. Raises TargetError."""
        ...


# Storage classes (archive tiers) are the third optional part: ``TieredStore`` in
# targets/tiers.py (s3, azure_blob, gcs); its callers treat any other target as one whose
# objects are always readable.


@runtime_checkable
class Target(Protocol):
    name: str  # the target's name in the config; every error message names it
    capabilities: Capabilities  # declared by each target class

    def put(self, key: str, src: Path) -> ObjectInfo:
        """Store the file ``src`` under ``key``, atomically: readers see the whole object
        or nothing (temporary name then rename, or a multipart upload completed at the
        end). Overwrites an existing object. Raises TargetError."""
        ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Like :meth:`put` for small objects (manifests)."""
        ...

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """A readable stream of the object's bytes from ``offset`` (``length`` bytes, or to
        the end). Raises FileNotFoundError-derived TargetError if missing."""
        ...

    def read_bytes(self, key: str) -> bytes:
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size of the object, or None when it does not exist."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with ``prefix`` (temporary objects of an
        interrupted upload are never listed)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def free_bytes(self) -> int | None:
        """Free space at the target when the store can tell (``capabilities.free_space``),
        else None."""
        ...


# --- keys ------------------------------------------------------------------------------


def check_key(target_name: str, key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise TargetError.

    Keys are '/'-separated, relative to the target root, with no empty, '.' or '..' parts:
    a key must never reach outside the root (on disk, over SFTP) nor mean two different
    objects on stores that normalise paths and stores that do not (S3 keeps 'a//b')."""
    problem = _key_problem(key, allow_partial_last=False)
    if problem:
        raise TargetError(
            f"target '{target_name}': invalid object key {key!r} ({problem}); keys are "
            "'/'-separated paths relative to the target root, e.g. 'source/backup-id/payload'"
        )
    return key


def check_prefix(target_name: str, prefix: str) -> str:
    """Like :func:`check_key` for a listing prefix: '' and a trailing '/' are allowed, and
    the last part may be the start of a name."""
    if prefix == "":
        return prefix
    problem = _key_problem(prefix, allow_partial_last=True)
    if problem:
        raise TargetError(
            f"target '{target_name}': invalid listing prefix {prefix!r} ({problem}); "
            "prefixes are '' or a key's leading part such as 'source/'"
        )
    return prefix


def _key_problem(key: str, *, allow_partial_last: bool) -> str | None:
    if not isinstance(key, str) or key == "":
        return "empty"
    if key.startswith("/"):
        return "absolute"
    if "\\" in key or "\x00" in key:
        return "contains a backslash or NUL"
    parts = key.split("/")
    last = parts[-1]
    if allow_partial_last:
        # The last part of a prefix is only matched against names ('src/2024' lists
        # 'src/2024-01-…'), so it may be empty or a fragment, just never '..'.
        parts = parts[:-1]
        if last == "..":
            return "has a '..' part"
    for part in parts:
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' part"
    return None


def temp_name(name: str) -> str:
    """The temporary name a put of ``name`` writes to (same directory, hidden)."""
    # Truncated so that the temp name stays within NAME_MAX (255) for long object names.
    return f".{name[:200]}{TEMP_MARKER}{secrets.token_hex(6)}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def check_not_temp(target_name: str, key: str) -> str:
    """Return ``key`` unless its name looks like a temporary upload file: such a file
    would be published but never listed, so it is refused rather than hidden."""
    if is_temp_name(key.rpartition("/")[2]):
        raise TargetError(
            f"target '{target_name}': invalid object key {key!r} (its name looks like a "
            f"temporary upload file, '.…{TEMP_MARKER}…'); choose another name"
        )
    return key


def check_temp_key(target_name: str, key: str) -> str:
    """Return ``key`` if it is a valid key whose name is a temporary upload file's: the
    only files :meth:`SweepsPartialUploads.remove_partial_upload` may remove."""
    check_key(target_name, key)
    if not is_temp_name(key.rpartition("/")[2]):
        raise TargetError(
            f"target '{target_name}': {key!r} is not a temporary upload file ('.…{TEMP_MARKER}…'); "
            "only those are removed as partial uploads: delete objects with delete()"
        )
    return key


def check_file_key(target_name: str, key: str) -> str:
    """:func:`check_key` and :func:`check_not_temp`: the key rules of the stores that
    publish by renaming a temporary file (local disk, SFTP, FTP)."""
    return check_not_temp(target_name, check_key(target_name, key))
