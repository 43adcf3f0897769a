"""Sources: one module per kind behind the :class:`~include.backup.sources.base.Source`
protocol. Modules are imported only when a source of that kind is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from include.backup.errors import SourceError
from include.backup.sources.files import FilesSource
from include.backup.sources.mongo import MongoSource
from include.backup.sources.postgres import PostgresSource

if TYPE_CHECKING:
    from include.backup.config.schema import SourceConfig
    from include.backup.sources.base import Source


def build_source(name: str, cfg: SourceConfig) -> Source:
    if cfg.type == "files":
        return FilesSource(name, cfg)
    if cfg.type == "postgres":
        return PostgresSource(name, cfg)
    if cfg.type == "mongo":
        return MongoSource(name, cfg)
    raise SourceError(
        f"source {name!r}: sources of type {cfg.type!r} are not implemented in this version"
    )
