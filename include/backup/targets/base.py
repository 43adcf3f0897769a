"""The storage target interface (modelled on restic's backend).

Targets move opaque bytes: they never see plaintext and know nothing of compression,
encryption or manifests. Keys are '/'-separated paths relative to the target's root
(its directory, bucket prefix or container prefix).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@runtime_checkable
class Target(Protocol):
    name: str  # the target's name in the config; every error message names it

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
        """Free space at the target when the store can tell, else None."""
        ...
