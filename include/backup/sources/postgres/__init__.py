"""The PostgreSQL source (``type: postgres``): logical backups with pg_dump, physical ones
(base backups + WAL, point-in-time recovery) with ``method: physical``.

Modules, each importing only those above it:
  client      connection parameters from Airflow connections, client binaries, running
              pg_* tools, psycopg2 connections, row counts
  wal         LSNs, WAL segment names and ranges, chain continuity, payload formats
  spool       the WAL archive spool: who reads it, pruning
  walrestore  the restored server's restore_command (standalone: stdlib only)
  cluster     the restored server: start, wait for recovery, stop
  datadir     a physical restore's destination, workspace and extraction
  recovery    the physical restore (point-in-time recovery)
  physical    the physical source: base backups and WAL backups
  toc         partial logical restores: the archive's table of contents
  databases   the database a logical restore goes into
  consistency tables dropped as a logical dump begins: locked at once, or a clear error
  readahead   pg_dump's output read on a thread of its own, ahead of the compressor
  logical     :class:`PostgresSource`: pg_dump / pg_restore, delegating physical work
"""

from __future__ import annotations

from include.backup.sources.postgres.client import (
    PgParams,
    find_client_binary,
    params_from_connection,
    redact,
)
from include.backup.sources.postgres.cluster import stop_restored_server
from include.backup.sources.postgres.logical import PostgresSource
from include.backup.sources.postgres.physical import PhysicalPostgres
from include.backup.sources.postgres.spool import spool_in_use
from include.backup.sources.postgres.wal import continuity

__all__ = [
    "PgParams",
    "PhysicalPostgres",
    "PostgresSource",
    "continuity",
    "find_client_binary",
    "params_from_connection",
    "redact",
    "spool_in_use",
    "stop_restored_server",
]
