"""Point-in-time recovery: our restore against PostgreSQL's own replay (run on demand).

    python bench/bench_pitr.py [--wal-mib 1024]

Starts a throwaway PostgreSQL cluster with WAL archiving (archive_command = cp into a
spool), takes a physical FULL through the real pipeline and, right after it, a plain
`pg_basebackup -Fp` as the baseline's base. Writes about --wal-mib of WAL, notes the time
T, writes a little more, takes a TRANSACTION_LOG backup. Then, in the same run:
(a) baseline: the plain base copy recovered to T by PostgreSQL with a plain
    `cp <spool>/%f %p` restore_command;
(b) ours: restore_backup(until=T) — re-hash, decrypt, decompress and unpack the base and
    WAL backups from the target, then the same kind of recovery.
Reports both times, our replay part, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import replay_with_cp

from include.backup import tasks
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.sources.postgres import cluster
from include.backup.testing.postgres import PgCluster

ROOT = Path(__file__).resolve().parents[1]


def run_schedule(name: str, run_id: str) -> dict:
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump(name, run_id, datetime.now(UTC))))
    tasks.run_upload(meta, "disk")
    return meta


def server_now(pg: PgCluster) -> datetime:
    text = pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
    return datetime.fromisoformat(text + "+00:00")




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wal-mib", type=int, default=1024)
    args = ap.parse_args()
    with PgCluster(archive=True) as pg, tempfile.TemporaryDirectory(prefix="bench-pitr-") as tmp_s:
        tmp = Path(tmp_s)
        pg.create_database("shop")
        pg.psql("CREATE TABLE w (id bigserial PRIMARY KEY, pad text)", db="shop")
        os.environ["AIRFLOW_CONN_BENCH_PITR"] = pg.uri("shop")
        config = tmp / "backup_config.yaml"
        config.write_text(textwrap.dedent(f"""
            staging_dir: {tmp}/staging
            targets: {{disk: {{type: local, path: {tmp}/target}}}}
            sources:
              shop: {{type: postgres, conn_id: bench_pitr, method: physical,
                      wal_archive_dir: {pg.wal_archive_dir}}}
            schedules:
              - {{name: base, source: shop, type: FULL, cron: "@daily", targets: [disk]}}
              - {{name: wal, source: shop, type: TRANSACTION_LOG, cron: "*/15 * * * *", targets: [disk]}}
        """))
        os.environ["BACKUP_CONFIG"] = str(config)
        KeyRing.generate(tmp / "keys.json", "k1")
        os.environ["BACKUP_KEY_FILE"] = str(tmp / "keys.json")

        run_schedule("base", "b1")
        plain_base = Path(f"{pg.base_dir}-plainbase")
        pg.run_as_owner(
            [str(pg.bin_dir / "pg_basebackup"), "-h", pg.host, "-p", str(pg.port), "-U", "postgres",
             "-D", str(plain_base), "-Fp", "-X", "none", "--checkpoint=fast"],
            what="pg_basebackup",
        )
        print(f"writing about {args.wal_mib} MiB of WAL ...", flush=True)
        rows = args.wal_mib * 700  # ~1.5 KiB of WAL per 1 KB row, full-page writes included
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            sql = f"INSERT INTO w (pad) SELECT repeat(md5(g::text), 32) FROM generate_series(1, {n}) g"
            pg.psql(sql, db="shop")
        time.sleep(0.2)
        until = server_now(pg)
        time.sleep(0.2)
        pg.psql("INSERT INTO w (pad) SELECT 'after' FROM generate_series(1, 10)", db="shop")
        log = run_schedule("wal", "w1")
        wal_bytes = sum(p.stat().st_size for p in Path(pg.wal_archive_dir).iterdir() if p.is_file())

        base_s = replay_with_cp(pg, plain_base, until)
        cfg = load_config().config
        keys = KeyRing.from_file(tmp / "keys.json")
        into = f"{pg.base_dir}-ours"
        t0 = time.monotonic()
        result = restore_backup(cfg, None, into, keys=keys, until=until, source_name="shop")
        ours_s = time.monotonic() - t0
        cluster.stop_restored_server(into, quiet=True)
        for d in (into, str(plain_base), f"{plain_base}-recovered"):
            shutil.rmtree(d, ignore_errors=True)
        stored = log["stored_size"] / 2**20
        print(f"WAL in the spool: {wal_bytes / 2**20:.0f} MiB; log backup stored {stored:.0f} MiB")
        print(f"PostgreSQL's own replay (plain base + cp restore_command): {base_s:.2f} s (baseline)")
        replay = result.stats["replay_seconds"]
        print(f"restore_backup(until=T) in all: {ours_s:.2f} s, of which replay {replay:.2f} s")
        print(f"ratio (baseline time / ours): {base_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
