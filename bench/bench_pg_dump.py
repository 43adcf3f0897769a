"""The PostgreSQL dump task against the shell pipeline it replaces (run on demand).

    python bench/bench_pg_dump.py [--rows 1000000] [--repeat 3]

Starts a throwaway PostgreSQL cluster, loads the sample "events" database, then times, in
the same run and alternating: (a) `pg_dump -Fc -Z0 | zstd -3 -T2 > file` (the baseline)
and (b) what the dump task does: PostgresSource.dump streamed through our zstd writer into
a staging file. Reports the median of each and the ratio of throughputs (target ≥ 0.9).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from include.backup.config.schema import PostgresSource as PostgresConfig
from include.backup.pipeline.compression import compress_writer
from include.backup.pipeline.hashing import CountingWriter
from include.backup.sources.postgres import PostgresSource
from include.backup.testing.postgres import PgCluster, load_sample_data

ROOT = Path(__file__).resolve().parents[1]


def baseline(pg: PgCluster, out: Path) -> float:
    env = dict(os.environ, PGHOST=pg.host, PGPORT=str(pg.port), PGUSER="postgres", PGDATABASE="events")
    cmd = f"{pg.bin_dir}/pg_dump -Fc -Z0 | zstd -3 -T2 -q > {out}"
    t = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, check=True)
    return time.perf_counter() - t


def ours(pg: PgCluster, out: Path) -> tuple[float, int]:
    os.environ["AIRFLOW_CONN_BENCH_PG"] = pg.uri("events")
    source = PostgresSource("bench", PostgresConfig(type="postgres", conn_id="bench_pg"))
    t = time.perf_counter()
    with open(out, "wb") as f, compress_writer(f, "zstd", 3) as z:
        counter = CountingWriter(z)
        source.dump("FULL", counter, None)
    return time.perf_counter() - t, counter.count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with PgCluster() as pg, tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        print(f"loading {args.rows} rows per table ...", flush=True)
        load_sample_data(pg, "events", rows=args.rows)
        base_t: list[float] = []
        our_t: list[float] = []
        raw = 0
        for _ in range(args.repeat):
            base_t.append(baseline(pg, Path(tmp) / "base.zst"))
            t, raw = ours(pg, Path(tmp) / "ours.zst")
            our_t.append(t)
        b, o = statistics.median(base_t), statistics.median(our_t)
        mb = raw / 1e6
        print(f"dump size (raw pg_dump -Fc -Z0): {mb:.0f} MB")
        print(f"pg_dump -Fc -Z0 | zstd -3 -T2 : {b:.2f} s  {mb / b:.0f} MB/s  (baseline) "
              f"-> {(Path(tmp) / 'base.zst').stat().st_size / 1e6:.0f} MB")
        print(f"dump task (PostgresSource+zstd): {o:.2f} s  {mb / o:.0f} MB/s  "
              f"-> {(Path(tmp) / 'ours.zst').stat().st_size / 1e6:.0f} MB")
        print(f"ratio (ours / baseline throughput): {b / o:.2f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
