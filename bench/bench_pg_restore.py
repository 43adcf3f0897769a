"""Restoring a PostgreSQL logical backup against the shell pipeline (run on demand).

    python bench/bench_pg_restore.py [--rows 1000000] [--repeat 2]

Starts a throwaway PostgreSQL cluster, loads the sample "events" database, makes one
backup through the real pipeline (dump → encrypt → checksum → upload to a local target)
and one plain `pg_dump -Fc -Z0 | zstd -3 -T2` file of the same database. Then times, in the
same run and alternating: (a) `zstd -dc file | pg_restore -d NEW` (the baseline) and
(b) restore_backup (re-hash of the stored object against its manifest, decrypt,
decompress, pg_restore) into a new database. Reports medians and the throughput ratio
(target ≥ 0.8).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from include.backup import tasks
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.testing.postgres import PgCluster, load_sample_data

ROOT = Path(__file__).resolve().parents[1]


def shell(pg: PgCluster, cmd: str, db: str = "events") -> float:
    env = dict(os.environ, PGHOST=pg.host, PGPORT=str(pg.port), PGUSER="postgres", PGDATABASE=db)
    t = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with PgCluster() as pg, tempfile.TemporaryDirectory(prefix="bench-pgr-") as tmp_s:
        tmp = Path(tmp_s)
        print(f"loading {args.rows} rows per table ...", flush=True)
        load_sample_data(pg, "events", rows=args.rows)
        config = tmp / "backup_config.yaml"
        config.write_text(textwrap.dedent(f"""
            staging_dir: {tmp}/staging
            targets: {{local: {{type: local, path: {tmp}/target}}}}
            sources: {{events_pg: {{type: postgres, conn_id: bench_pg}}}}
            schedules:
              - {{name: full, source: events_pg, type: FULL, cron: "@daily", targets: [local]}}
        """))
        os.environ.update(BACKUP_CONFIG=str(config), AIRFLOW_CONN_BENCH_PG=pg.uri("events"))
        KeyRing.generate(tmp / "keys.json", "k1")
        os.environ["BACKUP_KEY_FILE"] = str(tmp / "keys.json")
        meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("full", "bench", datetime.now(UTC))))
        tasks.run_upload(meta, "local")
        plain = tmp / "plain.zst"
        shell(pg, f"{pg.bin_dir}/pg_dump -Fc -Z0 | zstd -3 -T2 -q > {plain}")
        cfg = load_config().config
        keys = KeyRing.from_file(tmp / "keys.json")
        base_t: list[float] = []
        our_t: list[float] = []
        for i in range(args.repeat):
            pg.create_database(f"base{i}")
            base_t.append(shell(pg, f"zstd -dc {plain} | {pg.bin_dir}/pg_restore --no-owner -d base{i}"))
            t = time.perf_counter()
            restore_backup(cfg, meta["backup_id"], f"ours{i}", keys=keys)
            our_t.append(time.perf_counter() - t)
        b, o = statistics.median(base_t), statistics.median(our_t)
        mb = meta["raw_size"] / 1e6
        print(f"dump size (raw pg_dump -Fc -Z0): {mb:.0f} MB, stored {meta['stored_size'] / 1e6:.0f} MB")
        print(f"zstd -dc | pg_restore          : {b:.2f} s  (baseline)")
        print(f"restore_backup (verify+decrypt+zstd+pg_restore): {o:.2f} s")
        print(f"ratio (ours / baseline throughput): {b / o:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
