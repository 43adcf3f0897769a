"""PostgresSource against a real PostgreSQL server: dump, restore, and the ways they fail.

No mocks: every test runs pg_dump/pg_restore against the session's throwaway cluster (or
its own, when it has to break the server).
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

# Imported at collection: Airflow configures logging on import, which would otherwise
# happen inside the first test that looks up a connection and detach caplog there.
import airflow.sdk  # noqa: F401
import pytest

from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import PostgresSource as PostgresSourceConfig
from include.backup.errors import RestoreRefused, SourceError
from include.backup.sources.base import DumpResult, Source
from include.backup.sources.postgres import PostgresSource, redact
from include.backup.testing import (
    PgCluster,
    PgClusterError,
    db_fingerprint,
    load_sample_data,
)

pytestmark = pytest.mark.integration

SAMPLE_TABLES = {"users", "events", "guests", "transactions"}
# What the pg_cluster fixture (conftest.py) sets up.
PG_CONN_ID = "events_pg"
PG_SAMPLE_DB = "events"
PG_SAMPLE_ROWS = 2000


# --- helpers -------------------------------------------------------------------------------


def make_source(conn_id: str = PG_CONN_ID, **cfg: Any) -> PostgresSource:
    return PostgresSource("events_pg", PostgresSourceConfig(type="postgres", conn_id=conn_id, **cfg))


def manifest_for(result: DumpResult, backup_id: str = "20240101T000000Z-test") -> Manifest:
    return Manifest(
        backup_id=backup_id,
        schedule="test",
        source="events_pg",
        source_type="postgres",
        backup_type=result.backup_type,
        started_at=datetime.now(UTC),
        payload_format=result.payload_format,
        position=result.position,
        stats=result.stats,
    )


class Dump:
    """A dump kept in a file, restorable any number of times."""

    def __init__(self, path: Path, result: DumpResult) -> None:
        self.path = path
        self.result = result
        self.manifest = manifest_for(result)

    def chain(self) -> list[tuple[Manifest, BinaryIO]]:
        return [(self.manifest, open(self.path, "rb"))]

    def restore(self, source: PostgresSource, into: str, **kwargs: Any) -> dict[str, Any]:
        (manifest, stream), = self.chain()
        with stream:
            return source.restore([(manifest, stream)], into, **kwargs)


def take_dump(source: PostgresSource, backup_type: str, directory: Path) -> Dump:
    path = directory / f"{backup_type.lower()}-{source.cfg.format}.dump"
    with open(path, "wb") as out:
        result = source.dump(backup_type, out, None)
    return Dump(path, result)


def table_names(cluster: PgCluster, db: str) -> set[str]:
    out = cluster.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", db)
    return set(out.split()) if out else set()


@pytest.fixture(scope="module")
def dump_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pgdump-test-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def full_dump(pg_cluster: PgCluster, dump_dir: Path) -> Dump:
    return take_dump(make_source(), "FULL", dump_dir)


# --- round trips ---------------------------------------------------------------------------


def test_is_a_source() -> None:
    assert isinstance(make_source(), Source)


def test_full_dump_restores_identical_data(pg_cluster: PgCluster, full_dump: Dump) -> None:
    result = full_dump.result
    assert result.backup_type == "FULL"
    assert result.payload_format == "pg_dump-custom"
    assert result.position["database"] == PG_SAMPLE_DB
    assert result.position["server_version"].startswith(("1", "2"))
    assert "/" in result.position["lsn"]  # e.g. 0/1A2B3C4
    assert result.stats["row_count_method"] == "exact"
    assert result.stats["tables"] == {
        "users": PG_SAMPLE_ROWS,
        "events": PG_SAMPLE_ROWS // 4,
        "guests": PG_SAMPLE_ROWS,
        "transactions": PG_SAMPLE_ROWS,
    }
    assert result.stats["database_size"] > 0
    assert full_dump.path.stat().st_size == result.stats["dump_bytes"] > 0

    stats = full_dump.restore(make_source(), "events_restored")

    assert stats["tables"] == result.stats["tables"]
    assert db_fingerprint(pg_cluster, "events_restored") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)
    # Not only tables: the view, the standalone sequence and the indexes came back too.
    assert pg_cluster.psql("SELECT count(*) FROM upcoming_events", "events_restored") == str(
        PG_SAMPLE_ROWS // 4
    )
    assert pg_cluster.psql("SELECT last_value FROM invoice_number_seq", "events_restored") == str(
        100000 + PG_SAMPLE_ROWS
    )
    assert "events_starts_at_idx" in pg_cluster.psql("SELECT indexname FROM pg_indexes", "events_restored")


def test_directory_format_with_parallel_jobs(pg_cluster: PgCluster, dump_dir: Path) -> None:
    source = make_source(format="directory", jobs=2)
    dump = take_dump(source, "FULL", dump_dir)
    assert dump.result.payload_format == "pg_dump-directory-tar"

    dump.restore(source, "events_from_dir")

    assert db_fingerprint(pg_cluster, "events_from_dir") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)


def test_schema_dump_restores_tables_without_rows(pg_cluster: PgCluster, dump_dir: Path) -> None:
    dump = take_dump(make_source(), "SCHEMA", dump_dir)
    assert dump.result.backup_type == "SCHEMA"
    assert dump.result.payload_format == "pg_dump-custom"
    assert dump.result.stats["tables"] == {t: 0 for t in SAMPLE_TABLES}

    stats = dump.restore(make_source(), "events_schema")

    assert stats["tables"] == {t: 0 for t in SAMPLE_TABLES}
    assert table_names(pg_cluster, "events_schema") == SAMPLE_TABLES
    fingerprint = db_fingerprint(pg_cluster, "events_schema")
    assert {t: v["rows"] for t, v in fingerprint.items()} == {t: 0 for t in SAMPLE_TABLES}
    assert (
        pg_cluster.psql("SELECT count(*) FROM pg_views WHERE viewname = 'upcoming_events'", "events_schema")
        == "1"
    )


def test_restore_into_another_connection(
    pg_cluster: PgCluster, full_dump: Dump, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_STAGING_PG", pg_cluster.uri("events_staging"))

    full_dump.restore(make_source(), "conn:staging_pg")

    assert db_fingerprint(pg_cluster, "events_staging") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)


# --- partial and overwriting restores ------------------------------------------------------


def test_partial_restore_of_one_table(pg_cluster: PgCluster, full_dump: Dump) -> None:
    stats = full_dump.restore(make_source(), "events_users_only", only=["users"])

    assert stats["tables"] == {"users": PG_SAMPLE_ROWS}
    assert table_names(pg_cluster, "events_users_only") == {"users"}
    source_users = db_fingerprint(pg_cluster, PG_SAMPLE_DB)["users"]
    assert db_fingerprint(pg_cluster, "events_users_only") == {"users": source_users}
    # The table comes back whole, not bare: primary key, unique index, serial default.
    constraints = pg_cluster.psql(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'users'::regclass", "events_users_only"
    )
    assert set(constraints.split()) == {"users_pkey", "users_email_key"}
    new_id = pg_cluster.psql(
        "INSERT INTO users (email, full_name, country, created_at) "
        "VALUES ('n@x', 'n', 'FR', now()) RETURNING id",
        "events_users_only",
    )
    assert new_id == str(PG_SAMPLE_ROWS + 1)


def test_partial_restore_keeps_links_between_restored_tables_only(
    pg_cluster: PgCluster, full_dump: Dump
) -> None:
    stats = full_dump.restore(make_source(), "events_partial_pair", only=["guests", "public.transactions"])

    assert stats["tables"] == {"guests": PG_SAMPLE_ROWS, "transactions": PG_SAMPLE_ROWS}
    fks = pg_cluster.psql("SELECT conname FROM pg_constraint WHERE contype = 'f'", "events_partial_pair")
    # transactions -> guests is kept; guests -> users/events would point at missing tables.
    assert fks.split() == ["transactions_guest_id_fkey"]
    # The standalone sequence behind transactions.invoice_no came along, at its value.
    assert pg_cluster.psql("SELECT last_value FROM invoice_number_seq", "events_partial_pair") == str(
        100000 + PG_SAMPLE_ROWS
    )
    assert "guests_user_id_idx" in pg_cluster.psql("SELECT indexname FROM pg_indexes", "events_partial_pair")
    source = db_fingerprint(pg_cluster, PG_SAMPLE_DB)
    restored = db_fingerprint(pg_cluster, "events_partial_pair")
    assert restored == {t: source[t] for t in ("guests", "transactions")}


def test_partial_restore_of_a_table_not_in_the_backup(pg_cluster: PgCluster, full_dump: Dump) -> None:
    with pytest.raises(
        RestoreRefused, match=r"'attendees' is not in this backup; its tables: events, guests"
    ):
        full_dump.restore(make_source(), "events_no_such_table", only=["attendees"])

    assert not pg_cluster.database_exists("events_no_such_table")


def test_partial_restore_over_existing_tables(pg_cluster: PgCluster, dump_dir: Path) -> None:
    source = make_source(format="directory", jobs=2)
    dump = take_dump(source, "FULL", dump_dir)
    dump.restore(source, "events_dir_partial")
    pg_cluster.psql(
        "UPDATE events SET title = 'changed'; DELETE FROM transactions WHERE id > 10", "events_dir_partial"
    )
    fk_sql = "SELECT conname FROM pg_constraint WHERE contype = 'f' ORDER BY 1"
    fks = pg_cluster.psql(fk_sql, PG_SAMPLE_DB)

    dump.restore(source, "events_dir_partial", only=["events", "guests", "transactions"], overwrite=True)

    assert db_fingerprint(pg_cluster, "events_dir_partial") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)
    # Including events -> users, though users was not part of the restore.
    assert pg_cluster.psql(fk_sql, "events_dir_partial") == fks


def test_partial_restore_of_a_referenced_table_is_refused_by_the_server_atomically(
    pg_cluster: PgCluster, full_dump: Dump
) -> None:
    full_dump.restore(make_source(), "events_referenced")
    pg_cluster.psql("UPDATE events SET title = 'changed'", "events_referenced")
    before = db_fingerprint(pg_cluster, "events_referenced")

    # guests has a foreign key to events: events cannot be dropped and re-created alone.
    with pytest.raises(
        SourceError, match=r"(?s)other objects depend on it.*must include what depends on them"
    ):
        full_dump.restore(make_source(), "events_referenced", only=["events"], overwrite=True)

    assert db_fingerprint(pg_cluster, "events_referenced") == before
    fks = pg_cluster.psql("SELECT conname FROM pg_constraint WHERE contype = 'f'", "events_referenced")
    assert len(fks.split()) == 4


def test_restore_refuses_non_empty_database_without_overwrite(pg_cluster: PgCluster, full_dump: Dump) -> None:
    before = db_fingerprint(pg_cluster, PG_SAMPLE_DB)

    with pytest.raises(RestoreRefused, match=r"already has 4 table.*overwrite=True"):
        full_dump.restore(make_source(), PG_SAMPLE_DB)

    assert db_fingerprint(pg_cluster, PG_SAMPLE_DB) == before


def test_restore_with_overwrite_replaces_changed_data(pg_cluster: PgCluster, full_dump: Dump) -> None:
    source = make_source()
    full_dump.restore(source, "events_overwrite")
    # Damage the copy the way an incident would: rows gone, rows changed, rows added.
    pg_cluster.psql(
        "DELETE FROM transactions WHERE id % 3 = 0;"
        " UPDATE users SET full_name = 'overwritten' WHERE id < 50;"
        " INSERT INTO users (email, full_name, country, created_at) VALUES ('x@y', 'x', 'US', now());",
        "events_overwrite",
    )
    assert db_fingerprint(pg_cluster, "events_overwrite") != db_fingerprint(pg_cluster, PG_SAMPLE_DB)

    with pytest.raises(RestoreRefused):
        full_dump.restore(source, "events_overwrite")
    full_dump.restore(source, "events_overwrite", overwrite=True)

    assert db_fingerprint(pg_cluster, "events_overwrite") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)


def test_failed_restore_leaves_no_new_database(pg_cluster: PgCluster, full_dump: Dump) -> None:
    truncated = full_dump.path.read_bytes()[: full_dump.path.stat().st_size // 2]

    with pytest.raises(SourceError, match="pg_restore failed"):
        make_source().restore([(full_dump.manifest, io.BytesIO(truncated))], "events_truncated")

    assert not pg_cluster.database_exists("events_truncated")


def test_restore_refuses_chains_and_unknown_formats(full_dump: Dump) -> None:
    source = make_source()
    with pytest.raises(RestoreRefused, match="exactly one backup"):
        source.restore(full_dump.chain() * 2, "anything")
    odd = full_dump.manifest.model_copy(update={"payload_format": "tar"})
    with pytest.raises(RestoreRefused, match="payload format 'tar'"):
        source.restore([(odd, io.BytesIO(b""))], "anything")


# --- secrets -------------------------------------------------------------------------------

PASSWORD = "s3cr3t-P@ss:w/rd%"


@pytest.fixture()
def password_conn(pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    """A connection whose user must authenticate with PASSWORD (scram-sha-256)."""
    if "backup_user" not in pg_cluster.psql("SELECT rolname FROM pg_roles"):
        pg_cluster.create_user("backup_user", PASSWORD)
    uri = f"postgres://backup_user:{quote(PASSWORD, safe='')}@127.0.0.1:{pg_cluster.port}/{PG_SAMPLE_DB}"
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_PG_PW", uri)
    return "events_pg_pw"


class PopenSpy:
    """Records what each child process got (the processes still run for real)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = subprocess.Popen
        spy = self

        class Recording(real):  # type: ignore[misc, valid-type]
            def __init__(self, args: list[str], *a: Any, **kw: Any) -> None:
                spy.calls.append((list(args), dict(kw.get("env") or {})))
                super().__init__(args, *a, **kw)

        monkeypatch.setattr(subprocess, "Popen", Recording)


def test_password_only_reaches_the_environment(
    pg_cluster: PgCluster,
    password_conn: str,
    dump_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spy = PopenSpy()
    spy.install(monkeypatch)
    caplog.set_level(logging.DEBUG)
    source = make_source(password_conn)

    dump = take_dump(source, "FULL", dump_dir)
    dump.restore(source, "events_pw_restored")

    tools = [Path(args[0]).name for args, _ in spy.calls]
    assert tools == ["pg_dump", "pg_restore"]
    for args, env in spy.calls:
        assert not any(PASSWORD in a or quote(PASSWORD, safe="") in a for a in args), args
        assert env["PGPASSWORD"] == PASSWORD
        assert env["PGUSER"] == "backup_user"
    assert "pg_dump --no-password" in caplog.text  # the command line is logged...
    assert PASSWORD not in caplog.text  # ...and nothing secret with it
    assert db_fingerprint(pg_cluster, "events_pw_restored") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)


def test_wrong_password_fails_without_revealing_it(
    pg_cluster: PgCluster,
    password_conn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "not-the-Right-0ne"
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_PG_BAD", f"postgres://backup_user:{wrong}@127.0.0.1:{pg_cluster.port}/events")
    caplog.set_level(logging.DEBUG)

    with pytest.raises(SourceError, match="password authentication failed") as excinfo:
        make_source("events_pg_bad").dump("FULL", io.BytesIO(), None)

    assert wrong not in str(excinfo.value)
    assert wrong not in caplog.text
    assert "events_pg_bad" in str(excinfo.value)  # names the connection to fix


def test_redact_hides_every_occurrence() -> None:
    assert redact("FATAL: pw=hunter22 again hunter22", "hunter22", None) == "FATAL: pw=*** again ***"


# --- failures ------------------------------------------------------------------------------


def test_nonexistent_database_is_a_clear_error(pg_cluster: PgCluster) -> None:
    with pytest.raises(SourceError) as excinfo:
        make_source(database="no_such_db").dump("FULL", io.BytesIO(), None)

    message = str(excinfo.value)
    assert "'events_pg'" in message  # the source
    assert 'database "no_such_db" does not exist' in message  # what is wrong
    assert "check the connection" in message  # what to do


def test_unreachable_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.backup.testing.postgres import free_port

    monkeypatch.setenv("AIRFLOW_CONN_NOWHERE_PG", f"postgres://postgres@127.0.0.1:{free_port()}/events")

    with pytest.raises(SourceError, match=r"cannot connect to database 'events' on 127\.0\.0\.1:\d+"):
        make_source("nowhere_pg").dump("FULL", io.BytesIO(), None)


def test_unsupported_backup_type(pg_cluster: PgCluster) -> None:
    with pytest.raises(SourceError, match="INCREMENTAL is not supported.*FULL, SCHEMA"):
        make_source().dump("INCREMENTAL", io.BytesIO(), None)


def test_missing_connection_says_how_to_create_it() -> None:
    with pytest.raises(SourceError, match="AIRFLOW_CONN_NO_SUCH_CONN"):
        make_source("no_such_conn").dump("FULL", io.BytesIO(), None)


class StopServerOnFirstWrite(io.RawIOBase):
    """An output that crashes the server as soon as the dump starts arriving."""

    def __init__(self, cluster: PgCluster) -> None:
        self.cluster = cluster
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.written == 0:
            self.cluster.crash()
        self.written += len(data)
        return len(data)


@pytest.mark.slow
def test_server_going_away_mid_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    with PgCluster() as cluster:
        load_sample_data(cluster, "events", rows=100)
        # ~50 MB in one table: far more than pipe and socket buffers can hold, so pg_dump
        # is still reading from the server when it goes away.
        cluster.psql(
            "CREATE TABLE big AS SELECT i AS id, repeat(md5(i::text), 30) AS pad"
            " FROM generate_series(1, 50000) AS i",
            "events",
        )
        monkeypatch.setenv("AIRFLOW_CONN_DOOMED_PG", cluster.uri("events"))
        out = StopServerOnFirstWrite(cluster)

        with pytest.raises(SourceError, match="pg_dump failed") as excinfo:
            make_source("doomed_pg").dump("FULL", out, None)

        assert out.written > 0  # it did fail mid-way, not before starting
        assert not cluster.running
        assert "connection" in str(excinfo.value).lower() or "server" in str(excinfo.value).lower()


def test_restore_into_a_connection_without_database(
    pg_cluster: PgCluster, full_dump: Dump, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NO_DB_PG", f"postgres://postgres@127.0.0.1:{pg_cluster.port}")

    with pytest.raises(RestoreRefused, match=r"'conn:no_db_pg'.*names no database"):
        full_dump.restore(make_source(), "conn:no_db_pg")


# --- the throwaway cluster itself ----------------------------------------------------------


def test_cluster_archives_wal_and_leaves_nothing_behind() -> None:
    with PgCluster(archive=True) as cluster:
        cluster.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while not any(cluster.wal_archive_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(cluster.wal_archive_dir.iterdir()), "no WAL segment was archived"
        base = cluster.base_dir
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])

    assert not base.exists()
    assert not process_alive(postmaster)


def process_alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data directory to the postgres user")
def test_cluster_refuses_a_directory_postgres_cannot_reach(tmp_path: Path) -> None:
    # pytest's tmp_path lives under /tmp/pytest-of-root, which is private to root.
    with pytest.raises(PgClusterError, match="cannot write to .*use a base_dir under /tmp"):
        PgCluster(base_dir=tmp_path / "pg").start()
