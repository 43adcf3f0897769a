"""PostgreSQL physical backups and point-in-time recovery against a real PostgreSQL cluster
with archive_mode on: base backup + WAL through the real pipeline (dump → encrypt →
checksum → upload to a local target), restored with restore_backup into a new data
directory and port."""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from datetime import datetime, timedelta

import psycopg2
import pytest

from include.backup.catalog.catalog import list_backups, manifest_key
from include.backup.catalog.signing import sign
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.errors import IntegrityError, RestoreRefused, SourceError
from include.backup.keys import KeyRing
from include.backup.sources.postgres.cluster import stop_restored_server
from include.backup.targets import build_target
from include.backup.testing import PgCluster, run_backup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONN = "shop_pg"


@pytest.fixture
def env(tmp_path, monkeypatch, tmp_path_factory):
    with PgCluster(archive=True) as pg:
        pg.create_database("shop")
        pg.psql(
            "CREATE TABLE orders (id int PRIMARY KEY, note text);"
            "CREATE TABLE keepme (id int PRIMARY KEY);"
            "INSERT INTO keepme SELECT g FROM generate_series(1, 50) g;",
            db="shop",
        )
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", pg.uri("shop"))
        config = tmp_path / "backup_config.yaml"
        config.write_text(
            textwrap.dedent(f"""
            staging_dir: {tmp_path}/staging
            targets:
              disk: {{type: local, path: {tmp_path}/t1}}
            sources:
              shop: {{type: postgres, conn_id: {CONN}, method: physical,
                      wal_archive_dir: {pg.wal_archive_dir}}}
            schedules:
              - {{name: shop_base, source: shop, type: FULL, cron: "@daily", targets: [disk]}}
              - {{name: shop_wal, source: shop, type: TRANSACTION_LOG, cron: "*/15 * * * *", targets: [disk]}}
              - {{name: shop_inc, source: shop, type: INCREMENTAL, cron: "@hourly", targets: [disk]}}
        """)
        )
        monkeypatch.setenv("BACKUP_CONFIG", str(config))
        KeyRing.generate(tmp_path / "keys.json", "k1")
        monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
        restored: list[str] = []
        try:
            yield pg, tmp_path, restored
        finally:
            for d in restored:
                stop_restored_server(d, quiet=True)
                shutil.rmtree(d, ignore_errors=True)
                shutil.rmtree(d + ".wal", ignore_errors=True)


def server_now(pg: PgCluster) -> datetime:
    return datetime.fromisoformat(
        pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')") + "+00:00"
    )


def query(port: int, sql: str, db: str = "shop") -> list[tuple]:
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname=db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_pitr_to_a_time_between_two_log_backups(env):
    pg, tmp, restored = env
    config = load_config().config
    keys = KeyRing.from_file(tmp / "keys.json")
    t0 = time.monotonic()
    base = run_backup("shop_base", run_id="r1")
    base_s = time.monotonic() - t0
    pg.psql("INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 100) g", db="shop")
    time.sleep(0.05)
    T = server_now(pg)
    time.sleep(0.05)
    pg.psql("INSERT INTO orders SELECT g, 'after' FROM generate_series(101, 150) g", db="shop")
    pg.psql("DROP TABLE keepme", db="shop")
    t0 = time.monotonic()
    log1 = run_backup("shop_wal", run_id="r2")
    log_s = time.monotonic() - t0
    pg.psql("INSERT INTO orders SELECT g, 'later' FROM generate_series(151, 160) g", db="shop")
    log2 = run_backup("shop_wal", run_id="r3")

    target = build_target("disk", config.targets["disk"])
    held = {m.backup_id: m for m in list_backups(target, "shop")}
    assert held[log1["backup_id"]].parent_id == base["backup_id"]
    assert held[log2["backup_id"]].parent_id == log1["backup_id"]
    b, l1 = held[base["backup_id"]], held[log1["backup_id"]]
    assert b.payload_format == "pg_basebackup-tar" and l1.payload_format == "pg_wal-tar"
    for key in ("start_time", "end_time", "start_lsn", "end_lsn", "timeline", "wal_first", "wal_last"):
        assert key in b.position and key in l1.position

    # PITR to T: exactly the rows before T, and the dropped table is back.
    into = f"{pg.base_dir}-restored"
    restored.append(into)
    t0 = time.monotonic()
    result = restore_backup(config, None, into, keys=keys, until=T, source_name="shop")
    pitr_s = time.monotonic() - t0
    assert result.chain == [base["backup_id"], log1["backup_id"]]
    port = result.stats["port"]
    assert query(port, "SELECT count(*), min(id), max(id) FROM orders") == [(100, 1, 100)]
    assert query(port, "SELECT count(*) FROM keepme") == [(50,)]
    assert result.stats["tables"]["shop"] == {"orders": 100, "keepme": 50}
    assert query(port, "SELECT pg_is_in_recovery()", db="postgres") == [(False,)]
    stop_restored_server(into)

    # Without a time inside the chain: everything up to the newest log.
    into2 = f"{pg.base_dir}-restored2"
    restored.append(into2)
    result = restore_backup(config, log2["backup_id"], into2, keys=keys)
    assert result.stats["tables"]["shop"] == {"orders": 160}
    stop_restored_server(into2)

    # Outside the window: refused before anything is touched, naming the window.
    with pytest.raises(RestoreRefused, match=r"outside the reachable window .*Z – .*Z for source shop"):
        restore_backup(
            config, None, f"{pg.base_dir}-x", keys=keys, until=T + timedelta(days=1), source_name="shop"
        )
    with pytest.raises(RestoreRefused, match="outside the reachable window"):
        restore_backup(
            config, None, f"{pg.base_dir}-x", keys=keys, until=T - timedelta(days=1), source_name="shop"
        )

    # A gap between the two log backups (a segment in neither): a clear IntegrityError.
    broken = held[log2["backup_id"]]
    from include.backup.sources.postgres.wal import next_segment

    l2 = broken.model_copy(
        update={"position": {**broken.position, "wal_first": next_segment(broken.position["wal_first"])}}
    )
    sign(l2, *keys.active())  # a real gap: a manifest that authenticates, not an altered one
    target.put_bytes(manifest_key("shop", l2.backup_id), l2.to_json())
    late = datetime.fromisoformat(l2.position["end_time"].replace("Z", "+00:00"))
    with pytest.raises(IntegrityError) as exc:
        restore_backup(config, None, f"{pg.base_dir}-x", keys=keys, until=late, source_name="shop")
    text = str(exc.value)
    assert log1["backup_id"] in text and l2.backup_id in text and broken.position["wal_first"] in text
    print(
        json.dumps(
            {"base_backup_s": round(base_s, 2), "log_backup_s": round(log_s, 2), "pitr_s": round(pitr_s, 2)}
        )
    )


def test_missing_segment_in_spool_is_a_clear_dump_error(env):
    pg, tmp, _ = env
    run_backup("shop_base", run_id="r1")
    pg.psql("INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 10) g", db="shop")
    run_backup("shop_wal", run_id="r2")
    # Two more segments, then lose the first of them from the spool.
    pg.psql("INSERT INTO orders VALUES (11, 'y'); SELECT pg_switch_wal();", db="shop")
    pg.psql("INSERT INTO orders VALUES (12, 'z'); SELECT pg_switch_wal();", db="shop")
    config = load_config().config
    target = build_target("disk", config.targets["disk"])
    last = list_backups(target, "shop")[-1]
    from include.backup.sources.postgres.wal import next_segment

    lost = pg.wal_archive_dir / next_segment(last.position["wal_last"])
    for _ in range(100):
        if lost.exists():
            break
        time.sleep(0.1)
    lost.unlink()
    with pytest.raises(SourceError, match=lost.name):
        run_backup("shop_wal", run_id="r3")


def test_incremental_is_wal_since_base_and_logical_refuses_until(env):
    pg, tmp, restored = env
    config = load_config().config
    keys = KeyRing.from_file(tmp / "keys.json")
    base = run_backup("shop_base", run_id="r1")
    pg.psql("INSERT INTO orders SELECT g, 'a' FROM generate_series(1, 5) g", db="shop")
    run_backup("shop_wal", run_id="r2")
    pg.psql("INSERT INTO orders SELECT g, 'b' FROM generate_series(6, 9) g", db="shop")
    inc = run_backup("shop_inc", run_id="r3")
    held = {m.backup_id: m for m in list_backups(build_target("disk", config.targets["disk"]), "shop")}
    assert held[inc["backup_id"]].parent_id == base["backup_id"]
    into = f"{pg.base_dir}-inc"
    restored.append(into)
    result = restore_backup(config, inc["backup_id"], into, keys=keys)
    assert result.chain == [base["backup_id"], inc["backup_id"]]
    assert result.stats["tables"]["shop"]["orders"] == 9
    stop_restored_server(into)
    with pytest.raises(RestoreRefused, match="partial restores"):
        restore_backup(config, inc["backup_id"], f"{pg.base_dir}-y", keys=keys, only=["orders"])
