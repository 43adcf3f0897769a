"""The source interface: dump a source to a plain byte stream, restore it back.

Sources write an uncompressed stream; the pipeline compresses, encrypts and hashes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Protocol, runtime_checkable

from include.backup.catalog.manifest import Manifest


@dataclass
class DumpResult:
    backup_type: str  # what was really done (an INCREMENTAL without a parent becomes FULL)
    payload_format: str  # e.g. "tar", "pg_dump-custom"; restore dispatches on it
    parent_id: str | None = None
    position: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    source_state: dict[str, Any] = field(default_factory=dict)  # kept in the manifest
    # True when the source published what it could of a source that moved under it (the
    # warnings say what is missing); the manifest is marked incomplete.
    incomplete: bool = False


def drain(stream: BinaryIO) -> int:
    """Read ``stream`` to its end; returns the bytes read.

    A source's restore calls this on every payload stream before it makes its result
    visible (renames the temporary directory or database into place): the container's
    last chunk is only authenticated when it is read, and tar or pg_restore stop at their
    own end marker, before the end of the container. A corrupt tail raises IntegrityError
    here, while the restore can still be rolled back."""
    total = 0
    while data := stream.read(1 << 20):
        total += len(data)
    return total


@runtime_checkable
class Source(Protocol):
    name: str

    def dump(self, backup_type: str, out: BinaryIO, parent: Manifest | None) -> DumpResult:
        """Write the backup as a byte stream to ``out`` (never the whole dump in memory).
        ``parent`` is the latest backup of this source, for incrementals."""
        ...

    def restore(
        self,
        chain: Iterable[tuple[Manifest, BinaryIO]],
        into: str,
        *,
        only: list[str] | None = None,
        overwrite: bool = False,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        """Restore a chain (full first, then incrementals in order; each item the manifest
        and its decrypted, decompressed stream) into ``into`` (a directory path, or a
        database name / connection id for databases). ``only`` restricts to some tables or
        paths. Refuses a non-empty destination unless ``overwrite``. Returns stats for the
        caller to compare (file counts, row counts).

        ``until`` (aware UTC): point-in-time recovery — replay the chain's logs up to that
        moment. Sources without log backups raise RestoreRefused when it is not None. The
        chain itself is chosen by :func:`include.backup.catalog.chains.pitr_chain`."""
        ...
