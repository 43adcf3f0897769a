"""A failed restore leaves nothing that looks restored (issue 10, defect 7).

Real backups through the pipeline's own steps (files, logical PostgreSQL, MongoDB) at a
local target; then one byte of the stored payload's LAST chunk is flipped and the
manifest's sha256 (and signature, when manifests are signed) recomputed, so the damage
passes every check before the restore and is only found by the decryptor at the very end
of the stream. The restore must fail with the integrity error, ``into`` must not exist
(or, when it existed, be unchanged), and no temporary copy may be left behind.
"""

from __future__ import annotations

import hashlib
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME, Manifest
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.errors import IntegrityError
from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.testing import PgCluster, db_fingerprint, run_backup
from tests.integration.mongo_service import MONGO_CONN_ID

pytestmark = pytest.mark.integration

PG_CONN_ID = "events_pg"  # the pg_cluster fixture's connection, database "events"
PG_SAMPLE_DB = "events"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, KeyRing]:
    data = tmp_path / "data"
    (data / "docs" / "sub").mkdir(parents=True)
    (data / "docs" / "a.txt").write_text("alpha\n" * 1000)
    (data / "docs" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1200)
    config = tmp_path / "backup_config.yaml"
    config.write_text(textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk: {{type: local, path: {tmp_path}/disk}}
        sources:
          docs: {{type: files, paths: [{data}/docs]}}
          events_pg: {{type: postgres, conn_id: {PG_CONN_ID}}}
          events_pg_dir: {{type: postgres, conn_id: {PG_CONN_ID}, format: directory, jobs: 2}}
          events_mongo: {{type: mongo, conn_id: {MONGO_CONN_ID}, database: atomic_src}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", retention_days: 30,
             targets: [disk]}}
          - {{name: docs_inc, source: docs, type: INCREMENTAL, cron: "@hourly", targets: [disk]}}
          - {{name: pg_full, source: events_pg, type: FULL, cron: "@daily", retention_days: 30,
             targets: [disk]}}
          - {{name: pg_dir_full, source: events_pg_dir, type: FULL, cron: "@daily", retention_days: 30,
             targets: [disk]}}
          - {{name: mongo_full, source: events_mongo, type: FULL, cron: "@daily", retention_days: 30,
             targets: [disk]}}
    """))
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    keys = KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return tmp_path, data, keys


def corrupt_last_chunk(disk: Path, backup_id: str, keys: KeyRing) -> None:
    """Flip a byte inside the payload's final chunk (its authentication tag) and make the
    manifest agree with the damaged bytes, as someone with write access to the target
    could; only decrypting to the very end finds it."""
    (folder,) = [p for p in disk.rglob(backup_id) if p.is_dir()]
    payload = folder / PAYLOAD_NAME
    raw = bytearray(payload.read_bytes())
    raw[-5] ^= 0x01
    payload.write_bytes(bytes(raw))
    manifest = Manifest.from_json((folder / MANIFEST_NAME).read_bytes())
    for obj in manifest.objects:
        if obj.name == PAYLOAD_NAME:
            obj.sha256 = hashlib.sha256(raw).hexdigest()
            obj.size = len(raw)
    if getattr(manifest, "auth", None) is not None:
        from include.backup.catalog import signing  # manifests are signed: re-sign

        signing.sign(manifest, manifest.auth.key_id, keys.get(manifest.auth.key_id))
    (folder / MANIFEST_NAME).write_bytes(manifest.to_json())


def restore(backup_id: str, into: str, keys: KeyRing, **kw: object):  # noqa: ANN201
    return restore_backup(load_config().config, backup_id, into, keys=keys, target_name="disk", **kw)


# --- files -------------------------------------------------------------------------------


def _leftovers(into: Path) -> list[str]:
    return sorted(p.name for p in into.parent.iterdir() if ".restoring-" in p.name)


def test_files_restore_with_a_corrupt_tail_leaves_no_tree(env: tuple[Path, Path, KeyRing]) -> None:
    tmp, data, keys = env
    full = run_backup("docs_full")["backup_id"]
    (data / "docs" / "a.txt").write_text("changed\n")
    inc = run_backup("docs_inc")["backup_id"]
    corrupt_last_chunk(tmp / "disk", inc, keys)

    into = tmp / "restored"
    with pytest.raises(IntegrityError, match="authentication"):
        restore(inc, str(into), keys)
    assert not into.exists()  # not even the FULL of the chain
    assert _leftovers(into) == []

    # Over an existing tree (overwrite): the tree is exactly as it was.
    existing = tmp / "existing"
    restore(full, str(existing), keys)
    (existing / "mine.txt").write_text("the user's own file\n")
    before = tree_digest(existing)
    with pytest.raises(IntegrityError, match="authentication"):
        restore(inc, str(existing), keys, overwrite=True)
    assert compare_trees(before, tree_digest(existing)) == []
    assert _leftovers(existing) == []


def test_files_restore_succeeds_and_leaves_no_staging_sibling(env: tuple[Path, Path, KeyRing]) -> None:
    tmp, data, keys = env
    full = run_backup("docs_full")["backup_id"]
    into = tmp / "restored"
    restore(full, str(into), keys)
    got = tree_digest(into / str(data / "docs").lstrip("/"))
    assert compare_trees(tree_digest(data / "docs"), got) == []
    assert _leftovers(into) == []


# --- logical PostgreSQL ---------------------------------------------------------------------


def _databases(cluster: PgCluster) -> set[str]:
    return set(cluster.psql("SELECT datname FROM pg_database", "postgres").split())


@pytest.mark.parametrize("schedule", ["pg_full", "pg_dir_full"])
def test_postgres_restore_with_a_corrupt_tail_creates_no_database(
    pg_cluster: PgCluster, env: tuple[Path, Path, KeyRing], schedule: str
) -> None:
    tmp, _, keys = env
    backup_id = run_backup(schedule)["backup_id"]
    corrupt_last_chunk(tmp / "disk", backup_id, keys)
    into = f"atomic_{uuid.uuid4().hex[:8]}"
    before = _databases(pg_cluster)
    with pytest.raises(IntegrityError, match="authentication"):
        restore(backup_id, into, keys)
    after = _databases(pg_cluster)
    assert into not in after
    assert after == before  # no "<into>_restoring_…" left either


def test_postgres_restore_is_named_as_restoring_until_it_is_complete(
    pg_cluster: PgCluster, env: tuple[Path, Path, KeyRing]
) -> None:
    """While pg_restore runs, the database is "<into>_restoring_<hex>"; ``into`` only
    appears, by a rename, once the restore is complete. A worker killed mid-restore leaves
    a database that says what it is, never one that looks restored."""
    import psycopg2

    _, _, keys = env
    backup_id = run_backup("pg_full")["backup_id"]
    into = f"atomic_{uuid.uuid4().hex[:8]}"
    seen: list[set[str]] = []
    stop = threading.Event()

    def watch() -> None:
        conn = psycopg2.connect(pg_cluster.uri("postgres"))
        conn.autocommit = True
        with conn, conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (into + "%",))
                seen.append({r[0] for r in cur.fetchall()})
                time.sleep(0.002)
        conn.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        restore(backup_id, into, keys)
    finally:
        stop.set()
        watcher.join()
    try:
        temp = [i for i, names in enumerate(seen) if any("_restoring_" in n for n in names)]
        final = [i for i, names in enumerate(seen) if into in names]
        assert temp, "the restore never ran under a temporary name"
        assert final and final[0] > temp[-1], "the database was visible as restored before it was complete"
        assert seen[-1] == {into}
    finally:
        pg_cluster.psql(f'DROP DATABASE IF EXISTS "{into}" WITH (FORCE)', "postgres")


def test_postgres_restore_over_an_existing_database_with_a_corrupt_tail_changes_nothing(
    pg_cluster: PgCluster, env: tuple[Path, Path, KeyRing]
) -> None:
    tmp, _, keys = env
    good = run_backup("pg_full")["backup_id"]
    bad = run_backup("pg_full")["backup_id"]
    corrupt_last_chunk(tmp / "disk", bad, keys)
    into = f"atomic_{uuid.uuid4().hex[:8]}"
    try:
        result = restore(good, into, keys)
        assert result.stats["database"] == into
        assert db_fingerprint(pg_cluster, into) == db_fingerprint(pg_cluster, PG_SAMPLE_DB)
        assert not [d for d in _databases(pg_cluster) if "_restoring_" in d]
        pg_cluster.psql(
            "DELETE FROM transactions WHERE id % 3 = 0; UPDATE users SET full_name = 'changed'", into
        )
        before = db_fingerprint(pg_cluster, into)
        with pytest.raises(IntegrityError, match="authentication"):
            restore(bad, into, keys, overwrite=True)
        assert db_fingerprint(pg_cluster, into) == before
        with pytest.raises(IntegrityError, match="authentication"):
            restore(bad, into, keys, overwrite=True, only=["transactions"])
        assert db_fingerprint(pg_cluster, into) == before
    finally:
        pg_cluster.psql(f'DROP DATABASE IF EXISTS "{into}" WITH (FORCE)', "postgres")


# --- MongoDB -----------------------------------------------------------------------------


def test_mongo_restore_with_a_corrupt_tail_changes_nothing(
    mongo_server, env: tuple[Path, Path, KeyRing]  # noqa: ANN001
) -> None:
    tmp, _, keys = env
    client = mongo_server.client()
    src = client["atomic_src"]
    into = f"atomic_{uuid.uuid4().hex[:8]}"
    try:
        src.create_collection("users", validator={"$jsonSchema": {"required": ["email"]}})
        src.users.insert_many([{"_id": i, "email": f"u{i}@example.com"} for i in range(300)])
        src.events.insert_many([{"_id": i, "n": i} for i in range(200)])
        src.events.create_index("n")
        good = run_backup("mongo_full")["backup_id"]
        bad = run_backup("mongo_full")["backup_id"]
        corrupt_last_chunk(tmp / "disk", bad, keys)

        with pytest.raises(IntegrityError, match="authentication"):
            restore(bad, into, keys)
        assert into not in client.list_database_names()
        assert not [d for d in client.list_database_names() if "_restoring_" in d]

        result = restore(good, into, keys)
        assert result.stats["documents"] == 500
        opts = {i["name"]: i.get("options", {}) for i in client[into].list_collections()}
        assert opts["users"] == {"validator": {"$jsonSchema": {"required": ["email"]}}}
        assert "n_1" in {ix["name"] for ix in client[into].events.list_indexes()}
        client[into].events.delete_many({"n": {"$lt": 100}})
        with pytest.raises(IntegrityError, match="authentication"):
            restore(bad, into, keys, overwrite=True)
        assert client[into].events.count_documents({}) == 100  # overwrite dropped nothing
        assert client[into].users.count_documents({}) == 300
        assert not [d for d in client.list_database_names() if "_restoring_" in d]
    finally:
        client.drop_database("atomic_src")
        client.drop_database(into)
        client.close()
