"""The files source class: what the Source protocol sees, delegating to dump and restore."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, BinaryIO

from include.backup.catalog.manifest import Manifest
from include.backup.config import schema
from include.backup.sources.base import DumpResult
from include.backup.sources.files.dump import Dumper
from include.backup.sources.files.restore import restore_chain


class FilesSource:
    """Backs up configured absolute paths (files or directories) as a tar stream."""

    def __init__(self, name: str, cfg: schema.FilesSource) -> None:
        self.name = name
        self.cfg = cfg
        self._dumper = Dumper(name, cfg)

    def dump(
        self, backup_type: str, out: BinaryIO, parent: Manifest | None
    ) -> DumpResult:
        return self._dumper.dump(backup_type, out, parent)

    def restore(
        self,
        chain: Iterable[tuple[Manifest, BinaryIO]],
        into: str,
        *,
        only: list[str] | None = None,
        overwrite: bool = False,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        """Restore a full backup and its incrementals, in order, into directory ``into``
        (see :func:`restore_chain`)."""
        return restore_chain(
            self.name, chain, into, only=only, overwrite=overwrite, until=until
        )
