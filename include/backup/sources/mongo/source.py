"""The mongo source object behind the :class:`~include.backup.sources.base.Source`
protocol: dumps go to :mod:`.dump`, restores to :mod:`.restore`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, BinaryIO

from include.backup.catalog.manifest import Manifest
from include.backup.config import schema
from include.backup.sources.base import DumpResult
from include.backup.sources.mongo.dump import MongoDump
from include.backup.sources.mongo.layout import PAYLOAD_FORMAT
from include.backup.sources.mongo.positions import continuity
from include.backup.sources.mongo.restore import MongoRestore


class MongoSource:
    """Backs up one MongoDB database through pymongo."""

    payload_format = PAYLOAD_FORMAT

    def __init__(self, name: str, cfg: schema.MongoSource) -> None:
        self.name = name
        self.cfg = cfg

    # continuity of chains of this source, for catalog.chains and restore
    continuity = staticmethod(continuity)

    def dump(self, backup_type: str, out: BinaryIO, parent: Manifest | None) -> DumpResult:
        return MongoDump(self.name, self.cfg).run(backup_type, out, parent)

    def restore(
        self,
        chain: Iterable[tuple[Manifest, BinaryIO]],
        into: str,
        *,
        only: list[str] | None = None,
        overwrite: bool = False,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        return MongoRestore(self.name, self.cfg).run(
            chain, into, only=only, overwrite=overwrite, until=until
        )
