"""Parallel logical dumps and restores against a real PostgreSQL 15: ``format: directory``
with ``jobs``, ``restore_jobs`` on the custom format, ``row_counts``, and the config errors
of bad values."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Imported at collection: Airflow configures logging on import, which would otherwise
# happen inside the first test that looks up a connection and detach caplog there.
import airflow.sdk  # noqa: F401
import pytest
import yaml

from include.backup.catalog.manifest import Manifest
from include.backup.config.loader import load_config
from include.backup.config.schema import PostgresSource as PostgresSourceConfig
from include.backup.dr.integrity import compare_with_manifest
from include.backup.errors import RestoreRefused, SourceError
from include.backup.sources.base import DumpResult
from include.backup.sources.postgres import PostgresSource
from include.backup.testing import PgCluster, db_fingerprint

pytestmark = pytest.mark.integration

PG_CONN_ID = "events_pg"  # the pg_cluster fixture (conftest.py): database "events", 2000 rows
PG_SAMPLE_DB = "events"


def make_source(**cfg: Any) -> PostgresSource:
    return PostgresSource("events_pg", PostgresSourceConfig(type="postgres", conn_id=PG_CONN_ID, **cfg))


def dump(source: PostgresSource, path: Path, backup_type: str = "FULL") -> tuple[Manifest, DumpResult]:
    with open(path, "wb") as out:
        result = source.dump(backup_type, out, None)
    manifest = Manifest(
        backup_id=f"20240101T000000Z-{path.stem}",
        schedule="test",
        source="events_pg",
        source_type="postgres",
        backup_type=result.backup_type,
        started_at=datetime.now(UTC),
        payload_format=result.payload_format,
        position=result.position,
        stats=result.stats,
    )
    return manifest, result


def restore(source: PostgresSource, manifest: Manifest, path: Path, into: str) -> dict[str, Any]:
    with open(path, "rb") as stream:
        return source.restore([(manifest, stream)], into)


def pg_restore_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records]
    return [line for line in lines if line.startswith("running: ") and "pg_restore" in line]


def test_directory_format_with_jobs_round_trips_in_parallel(
    pg_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_source(format="directory", jobs=2)
    manifest, result = dump(source, tmp_path / "dir.tar")
    assert result.payload_format == "pg_dump-directory-tar"  # the manifest says how to read it
    assert result.stats["row_count_method"] == "exact"

    with caplog.at_level(logging.INFO, logger="include.backup.sources.postgres"):
        restored = restore(source, manifest, tmp_path / "dir.tar", "events_dir_j2")

    assert db_fingerprint(pg_cluster, "events_dir_j2") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)
    assert compare_with_manifest("postgres", result.stats, restored) == ([], [])
    (line,) = pg_restore_lines(caplog)
    assert "--jobs=2" in line and "--format=directory" in line and "--single-transaction" not in line


def test_custom_format_restores_with_jobs_from_a_spooled_file(
    pg_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest, _ = dump(make_source(), tmp_path / "custom.dump")  # pg_dump to a pipe: no data offsets

    with caplog.at_level(logging.INFO, logger="include.backup.sources.postgres"):
        restore(make_source(restore_jobs=2), manifest, tmp_path / "custom.dump", "events_custom_j2")

    assert db_fingerprint(pg_cluster, "events_custom_j2") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)
    (line,) = pg_restore_lines(caplog)
    assert "--jobs=2" in line and "--format=custom" in line
    assert line.split("  [")[0].endswith("archive.dump")  # a file pg_restore can seek in, not stdin


def test_into_an_existing_database_stays_one_transaction(
    pg_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_source(format="directory", jobs=2)
    manifest, _ = dump(source, tmp_path / "dir.tar")
    pg_cluster.create_database("events_existing_empty")

    with caplog.at_level(logging.INFO, logger="include.backup.sources.postgres"):
        restore(source, manifest, tmp_path / "dir.tar", "events_existing_empty")

    assert db_fingerprint(pg_cluster, "events_existing_empty") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)
    (line,) = pg_restore_lines(caplog)
    assert "--single-transaction" in line and "--jobs" not in line


def test_restore_settings_reach_every_pg_restore_session(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """restore_settings go to the server as each pg_restore session's settings: a read-only
    default makes the restore fail on its first CREATE, naming the cause, and leaves no
    database behind; the default (maintenance_work_mem) restores as before."""
    manifest, _ = dump(make_source(), tmp_path / "custom.dump")
    read_only = make_source(restore_jobs=2, restore_settings={"default_transaction_read_only": "on"})

    with pytest.raises(SourceError, match="read-only transaction"):
        restore(read_only, manifest, tmp_path / "custom.dump", "events_read_only")
    left = pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'events_read_only%'")
    assert left.strip() == "0"

    assert make_source().cfg.restore_settings == {"maintenance_work_mem": "256MB"}
    restore(make_source(restore_jobs=2), manifest, tmp_path / "custom.dump", "events_tuned")
    assert db_fingerprint(pg_cluster, "events_tuned") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)


def test_chains_and_incrementals_are_refused_as_before(tmp_path: Path, pg_cluster: PgCluster) -> None:
    source = make_source(format="directory", jobs=2)
    with pytest.raises(SourceError, match="backup type INCREMENTAL is not supported"):
        dump(source, tmp_path / "inc.tar", "INCREMENTAL")
    manifest, _ = dump(source, tmp_path / "dir.tar")
    assert source.continuity(manifest, manifest) is None  # logical backups form no chains
    with (
        open(tmp_path / "dir.tar", "rb") as a,
        open(tmp_path / "dir.tar", "rb") as b,
        pytest.raises(RestoreRefused, match="exactly one backup"),
    ):
        source.restore([(manifest, a), (manifest, b)], "events_chain")
    assert not pg_cluster.database_exists("events_chain")


def test_estimated_row_counts_skip_the_count_and_say_so(pg_cluster: PgCluster, tmp_path: Path) -> None:
    pg_cluster.psql("ANALYZE", PG_SAMPLE_DB)
    manifest, result = dump(make_source(row_counts="estimate"), tmp_path / "est.dump")
    assert result.stats["row_count_method"] == "estimate"
    assert result.stats["tables"]["users"] == 2000  # reltuples after ANALYZE

    restored = restore(make_source(), manifest, tmp_path / "est.dump", "events_estimated")

    issues, notes = compare_with_manifest("postgres", result.stats, restored)
    assert issues == [] and notes == ["row counts recorded as estimate: only tables compared"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"format": "directory", "jobs": 0}, "sources.pg.jobs: 0 is out of range; must be between 1 and 32"),
        ({"format": "directory", "jobs": "two"}, "sources.pg.jobs: expected a whole number, got 'two'"),
        ({"jobs": 2}, "sources.pg: jobs > 1 needs format: directory (pg_dump -j only works with -Fd)"),
        ({"restore_jobs": 64}, "sources.pg.restore_jobs: 64 is out of range; must be between 1 and 32"),
        (
            {"restore_settings": {"work mem": "1GB"}},
            "sources.pg.restore_settings: 'work mem' is not a PostgreSQL setting name "
            "(letters, digits, '_' and '.', e.g. maintenance_work_mem)",
        ),
        (
            {"restore_settings": {"maintenance_work_mem": "1 GB"}},
            "sources.pg.restore_settings: maintenance_work_mem: '1 GB' must be one word "
            "without spaces or quotes (e.g. 512MB, off, 0)",
        ),
        (
            {"row_counts": "fast"},
            "sources.pg.row_counts: 'fast' is not an allowed value; use one of auto, exact, estimate",
        ),
    ],
)
def test_bad_parallel_settings_are_config_errors(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    config = {
        "targets": {"local": {"type": "local", "path": str(tmp_path / "t")}},
        "sources": {"pg": {"type": "postgres", "conn_id": "pg", **settings}},
        "schedules": [],
    }
    path = tmp_path / "backup_config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).issues == [message]
