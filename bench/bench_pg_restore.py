"""Restoring a PostgreSQL logical backup against the shell pipeline (run on demand).

    python bench/bench_pg_restore.py [--rows 1000000] [--repeat 2] [--jobs 2]

Starts a throwaway PostgreSQL cluster, loads the sample "events" database, makes backups
through the real pipeline (dump → compress → encrypt → checksum → upload to a local
target) in the custom format and in the directory format with ``jobs``, and one plain
`pg_dump -Fc -Z0 | zstd -3 -T2` file of the same database. Then times, in the same run and
alternating, restores into new databases:

  baseline          `zstd -dc file | pg_restore -d NEW` (one job)
  custom            restore_backup of the custom backup, one job (as before ``restore_jobs``)
  custom, -j N      the same backup with ``restore_jobs: N`` (spooled to a file, pg_restore -j)
  directory, -j N   the directory backup (``format: directory, jobs: N``), pg_restore -j
  pg_restore -j N   (the floor) `pg_restore -j N` of a plain `pg_dump -Fd -Z0` directory
                    already on disk: what pg_restore itself does on this host, with nothing
                    to authenticate, decrypt, decompress or extract first

restore_backup re-hashes the stored object against its manifest, decrypts, decompresses
and runs pg_restore. Reports medians, seconds per GiB of restored database
(pg_database_size) and the time ratio against the baseline (aim for -j 2: ≤ 0.7).
Besides wall time, each run's CPU seconds (this process, its children and the server's
reaped backends) are shown: on a shared host they explain what the wall time cannot.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_pg_dump import measured

from include.backup import tasks
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.testing.postgres import PgCluster, load_sample_data

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def shell(pg: PgCluster, cmd: str, db: str = "events") -> None:
    env = dict(os.environ, PGHOST=pg.host, PGPORT=str(pg.port), PGUSER="postgres", PGDATABASE=db)
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, check=True)


def write_config(path: Path, tmp: Path, jobs: int, custom_restore_jobs: int) -> Path:
    path.write_text(textwrap.dedent(f"""
        staging_dir: {tmp}/staging
        targets: {{local: {{type: local, path: {tmp}/target}}}}
        sources:
          pg_custom: {{type: postgres, conn_id: bench_pg, restore_jobs: {custom_restore_jobs}}}
          pg_dir: {{type: postgres, conn_id: bench_pg, format: directory, jobs: {jobs}}}
        schedules:
          - {{name: full_custom, source: pg_custom, type: FULL, cron: "@daily", targets: [local]}}
          - {{name: full_dir, source: pg_dir, type: FULL, cron: "@daily", targets: [local]}}
    """))
    return path


def backup(schedule: str) -> dict[str, Any]:
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump(schedule, "bench", datetime.now(UTC))))
    tasks.run_upload(meta, "local")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    with PgCluster() as pg, tempfile.TemporaryDirectory(prefix="bench-pgr-") as tmp_s:
        tmp = Path(tmp_s)
        print(f"loading {args.rows} rows per table ...", flush=True)
        load_sample_data(pg, "events", rows=args.rows)
        db_size = int(pg.psql("SELECT pg_database_size('events')", "events"))
        single = write_config(tmp / "single.yaml", tmp, args.jobs, 1)
        parallel = write_config(tmp / "parallel.yaml", tmp, args.jobs, args.jobs)
        os.environ.update(BACKUP_CONFIG=str(single), AIRFLOW_CONN_BENCH_PG=pg.uri("events"))
        KeyRing.generate(tmp / "keys.json", "k1")
        os.environ["BACKUP_KEY_FILE"] = str(tmp / "keys.json")
        custom, directory = backup("full_custom"), backup("full_dir")
        plain = tmp / "plain.zst"
        shell(pg, f"{pg.bin_dir}/pg_dump -Fc -Z0 | zstd -3 -T2 -q > {plain}")
        plain_dir = tmp / "plain-dir"
        shell(pg, f"{pg.bin_dir}/pg_dump -Fd -Z0 -j {args.jobs} -f {plain_dir}")
        cfg_single, cfg_parallel = load_config(single).config, load_config(parallel).config
        keys = KeyRing.from_file(tmp / "keys.json")
        n = args.jobs

        def ours(cfg: Any, backup_id: str, db: str) -> Callable[[], object]:
            return lambda: restore_backup(cfg, backup_id, db, keys=keys)

        runs: dict[str, list[tuple[float, float]]] = {}
        for i in range(args.repeat):
            pg.create_database(f"base{i}")
            pg.create_database(f"floor{i}")
            variants: dict[str, Callable[[], object]] = {
                "zstd -dc | pg_restore (baseline)": lambda i=i: shell(
                    pg, f"zstd -dc {plain} | {pg.bin_dir}/pg_restore --no-owner -d base{i}"
                ),
                "restore_backup, custom, 1 job": ours(cfg_single, custom["backup_id"], f"c1_{i}"),
                f"restore_backup, custom, -j {n}": ours(cfg_parallel, custom["backup_id"], f"cj_{i}"),
                f"restore_backup, directory, -j {n}": ours(cfg_single, directory["backup_id"], f"dj_{i}"),
                f"pg_restore -j {n} of a plain dir (floor)": lambda i=i: shell(
                    pg, f"{pg.bin_dir}/pg_restore --no-owner -j {n} -Fd -d floor{i} {plain_dir}"
                ),
            }
            for name, run in variants.items():
                runs.setdefault(name, []).append(measured(pg, run))
        print(f"database {db_size / GIB:.2f} GiB (pg_database_size); "
              f"raw dump {custom['raw_size'] / 1e6:.0f} MB, stored {custom['stored_size'] / 1e6:.0f} MB; "
              f"median of {args.repeat}, alternating")
        base_wall = statistics.median(w for w, _ in next(iter(runs.values())))
        for name, got in runs.items():
            wall, cpu = statistics.median(w for w, _ in got), statistics.median(c for _, c in got)
            print(f"{name:36}: {wall:6.2f} s  {wall / (db_size / GIB):6.1f} s/GiB  {cpu:6.2f} CPU-s  "
                  f"time ratio {wall / base_wall:.2f}  (runs: {', '.join(f'{w:.1f}' for w, _ in got)})")
        print(f"time ratio = ours / baseline (lower is faster); aim for -j {n}: <= 0.7")


if __name__ == "__main__":
    main()
