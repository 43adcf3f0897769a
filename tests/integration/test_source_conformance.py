"""The conformance suite every source passes, like the targets' one: each source kind is
wired up here against a real server (or real files) and goes through the DAG's steps
(``run_backup``) and ``restore_backup``.

For every kind: a FULL backup restores to the same data; the manifest records where the
backup stands (file index, LSN, WAL range, oplog timestamps); and, where the source
chains backups (files INCREMENTAL, physical PostgreSQL WAL, MongoDB oplog), a chain with
a middle backup's manifest gone is refused with an IntegrityError.

Adding a source kind = one ``Kind`` subclass in ``KINDS``. Servers are shared per module
(the session's ``pg_cluster`` and ``mongo_server``, one archiving PostgreSQL here).
"""

from __future__ import annotations

import shutil
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.backup.catalog.catalog import list_backups, manifest_key
from include.backup.catalog.manifest import Manifest
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.errors import IntegrityError
from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.sources.postgres.cluster import stop_restored_server
from include.backup.targets import build_target
from include.backup.testing import PgCluster, db_fingerprint, run_backup
from tests.integration.mongo_service import MONGO_CONN_ID

pytestmark = pytest.mark.integration

SOURCE = "src"
CONN = "conformance_pg"


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class Kind:
    """One source kind: its config, how to change its data, read it back, and what its
    manifests record. ``chain_type`` is the backup type that follows a FULL (None: the
    source takes no chained backups)."""

    chain_type: str | None = None
    full_position: tuple[str, ...] = ()
    chain_position: tuple[str, ...] = ()

    def __init__(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.request, self.tmp, self.monkeypatch = request, tmp_path, monkeypatch

    def source_yaml(self) -> str:
        raise NotImplementedError

    def change(self, step: int) -> None:
        """Change the source's data (step 1, 2... give different changes)."""
        raise NotImplementedError

    def snapshot(self) -> Any:
        """The source's data now, in a form to compare with :meth:`restored`."""
        raise NotImplementedError

    def restore_into(self) -> str:
        """A fresh restore destination (cleaned up at the end by :meth:`close`)."""
        raise NotImplementedError

    def restored(self, into: str, stats: dict[str, Any]) -> Any:
        raise NotImplementedError

    def recorded(self, manifest: Manifest) -> dict[str, Any]:
        """Where the manifest records the backup's position."""
        return manifest.position

    def close(self) -> None:
        pass


class FilesKind(Kind):
    chain_type = "INCREMENTAL"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.data = self.tmp / "data"
        (self.data / "sub").mkdir(parents=True)
        (self.data / "a.txt").write_text("alpha\n" * 1000)
        (self.data / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1000)

    def source_yaml(self) -> str:
        return f"{{type: files, paths: [{self.data}]}}"

    def change(self, step: int) -> None:
        (self.data / f"new-{step}.txt").write_text(f"step {step}\n")
        (self.data / "a.txt").write_text(f"changed at step {step}\n")

    def snapshot(self) -> Any:
        return tree_digest(self.data)

    def restore_into(self) -> str:
        return str(self.tmp / _name("restored"))

    def restored(self, into: str, stats: dict[str, Any]) -> Any:
        return tree_digest(Path(into) / str(self.data).lstrip("/"))

    def recorded(self, manifest: Manifest) -> dict[str, Any]:
        return manifest.source_state  # the file index an INCREMENTAL compares against


class PostgresLogicalKind(Kind):
    full_position = ("lsn",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pg: PgCluster = self.request.getfixturevalue("pg_cluster")
        self.db = _name("conf")
        self.made = [self.db]
        self.pg.create_database(self.db)
        self.pg.psql(
            "CREATE TABLE items (id int PRIMARY KEY, note text);"
            "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 500) g;",
            db=self.db,
        )
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", self.pg.uri(self.db))

    def source_yaml(self) -> str:
        return f"{{type: postgres, conn_id: {CONN}}}"

    def change(self, step: int) -> None:
        self.pg.psql(f"INSERT INTO items VALUES ({1000 + step}, 'step {step}')", db=self.db)

    def snapshot(self) -> Any:
        return db_fingerprint(self.pg, self.db)

    def restore_into(self) -> str:
        into = _name("conf_restored")
        self.made.append(into)
        return into

    def restored(self, into: str, stats: dict[str, Any]) -> Any:
        return db_fingerprint(self.pg, into)

    def close(self) -> None:
        for db in self.made:
            self.pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


class PostgresPhysicalKind(Kind):
    chain_type = "TRANSACTION_LOG"
    full_position = ("start_lsn", "end_lsn", "timeline", "wal_first", "wal_last")
    chain_position = ("start_lsn", "end_lsn", "wal_first", "wal_last")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pg: PgCluster = self.request.getfixturevalue("archiving_pg")
        self.restores: list[str] = []
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", self.pg.uri("shop"))

    def source_yaml(self) -> str:
        spool = self.pg.wal_archive_dir
        return f"{{type: postgres, conn_id: {CONN}, method: physical, wal_archive_dir: {spool}}}"

    def change(self, step: int) -> None:
        self.pg.psql(f"INSERT INTO orders SELECT g, 'step {step}' FROM generate_series(1, 50) g", db="shop")

    def snapshot(self) -> Any:
        return db_fingerprint(self.pg, "shop")

    def restore_into(self) -> str:
        into = f"{self.pg.base_dir}-{_name('restored')}"
        self.restores.append(into)
        return into

    def restored(self, into: str, stats: dict[str, Any]) -> Any:
        return db_fingerprint(f"postgres://postgres@127.0.0.1:{stats['port']}/shop", "shop")

    def close(self) -> None:
        for d in self.restores:
            stop_restored_server(d, quiet=True)
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(d + ".wal", ignore_errors=True)


class MongoKind(Kind):
    chain_type = "TRANSACTION_LOG"
    full_position = ("oplog_start", "oplog_end", "start_time", "end_time")
    chain_position = ("oplog_start", "oplog_end")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.client = self.request.getfixturevalue("mongo_server").client()
        self.db = _name("conf")
        self.made = [self.db]
        self.client[self.db].items.insert_many([{"_id": i, "note": f"row {i}"} for i in range(500)])

    def source_yaml(self) -> str:
        return f"{{type: mongo, conn_id: {MONGO_CONN_ID}, database: {self.db}}}"

    def change(self, step: int) -> None:
        self.client[self.db].items.insert_one({"_id": 1000 + step, "note": f"step {step}"})

    def _read(self, db: str) -> dict[str, list[dict[str, Any]]]:
        names = [n for n in self.client[db].list_collection_names() if not n.startswith("system.")]
        return {n: sorted(self.client[db][n].find(), key=lambda d: str(d["_id"])) for n in names}

    def snapshot(self) -> Any:
        return self._read(self.db)

    def restore_into(self) -> str:
        into = _name("conf_restored")
        self.made.append(into)
        return into

    def restored(self, into: str, stats: dict[str, Any]) -> Any:
        return self._read(into)

    def close(self) -> None:
        for db in self.made:
            self.client.drop_database(db)
        self.client.close()


KINDS: dict[str, type[Kind]] = {
    "files": FilesKind,
    "postgres_logical": PostgresLogicalKind,
    "postgres_physical": PostgresPhysicalKind,
    "mongo": MongoKind,
}
CHAINED = sorted(name for name, k in KINDS.items() if k.chain_type)


@pytest.fixture(scope="module")
def archiving_pg() -> Iterator[PgCluster]:
    """A PostgreSQL archiving its WAL (physical base and log backups), shared by the module."""
    with PgCluster(archive=True) as pg:
        pg.create_database("shop")
        pg.psql("CREATE TABLE orders (id int, note text);", db="shop")
        yield pg


@pytest.fixture
def kind(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kind]:
    """The source kind ``request.param`` on fresh data, with a config of a FULL schedule
    (``full``) and, where it chains, a ``chain`` schedule on one local target."""
    k = KINDS[request.param](request, tmp_path, monkeypatch)
    schedules = [("full", "FULL")] + ([("chain", k.chain_type)] if k.chain_type else [])
    config = tmp_path / "backup_config.yaml"
    config.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk: {{type: local, path: {tmp_path}/disk}}
        sources:
          {SOURCE}: {k.source_yaml()}
        schedules:
        """)
        + "".join(
            f'  - {{name: {name}, source: {SOURCE}, type: {btype}, cron: "@daily", targets: [disk]}}\n'
            for name, btype in schedules
        )
    )
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    try:
        yield k
    finally:
        k.close()


def _manifests() -> dict[str, Manifest]:
    config = load_config().config
    return {m.backup_id: m for m in list_backups(build_target("disk", config.targets["disk"]), SOURCE)}


def _keys(k: Kind) -> KeyRing:
    return KeyRing.from_file(k.tmp / "keys.json")


@pytest.mark.parametrize("kind", sorted(KINDS), indirect=True)
def test_full_backup_restores_the_same_data(kind: Kind) -> None:
    expected = kind.snapshot()
    backup_id = run_backup("full")["backup_id"]
    kind.change(1)  # the source moves on; the restore gives the data of the backup
    into = kind.restore_into()
    result = restore_backup(load_config().config, backup_id, into, keys=_keys(kind))
    assert result.chain == [backup_id]
    got = kind.restored(into, result.stats)
    if isinstance(kind, FilesKind):
        assert compare_trees(expected, got) == []
    else:
        assert got == expected


@pytest.mark.parametrize("kind", sorted(KINDS), indirect=True)
def test_the_position_is_recorded_in_the_manifest(kind: Kind) -> None:
    full = run_backup("full")["backup_id"]
    chained = []
    if kind.chain_type:
        kind.change(1)
        chained.append(run_backup("chain")["backup_id"])
    held = _manifests()
    recorded = kind.recorded(held[full])
    assert set(kind.full_position) <= set(recorded), recorded
    if isinstance(kind, FilesKind):
        assert recorded["file_index"], "the FULL records no file index"
    for backup_id in chained:
        m = held[backup_id]
        assert m.parent_id == full and m.backup_type == kind.chain_type
        recorded = kind.recorded(m)
        assert set(kind.chain_position) <= set(recorded), recorded
        if isinstance(kind, FilesKind):
            assert recorded["file_index"], "the INCREMENTAL records no file index"


@pytest.mark.parametrize("kind", CHAINED, indirect=True)
def test_a_chain_with_a_gap_is_refused(kind: Kind) -> None:
    full = run_backup("full")["backup_id"]
    kind.change(1)
    middle = run_backup("chain")["backup_id"]
    kind.change(2)
    newest = run_backup("chain")["backup_id"]
    held = _manifests()
    assert held[newest].parent_id == middle and held[middle].parent_id == full

    config = load_config().config
    build_target("disk", config.targets["disk"]).delete(manifest_key(SOURCE, middle))
    with pytest.raises(IntegrityError):
        restore_backup(config, newest, kind.restore_into(), keys=_keys(kind))
