"""The PostgreSQL dump task against the shell pipeline it replaces (run on demand).

    python bench/bench_pg_dump.py [--rows 1000000] [--repeat 3] [--row-counts auto exact estimate]

Starts a throwaway PostgreSQL cluster, loads the sample "events" database, then times, in
the same run and alternating: (a) `pg_dump -Fc -Z0 | zstd -3 -T2 > file` (the baseline)
and (b) what the dump task does: PostgresSource.dump streamed through our zstd writer into
a staging file, once per ``row_counts`` setting asked for. Reports the median of each and
the ratio of throughputs (target ≥ 0.9).

Besides wall time, each measurement records the CPU seconds it cost the whole machine: our
process and its children (pg_dump, or bash/pg_dump/zstd for the baseline) plus the server
processes the postmaster reaped during it (the backends that ran COPY and the row counts).
On a shared host wall time follows the neighbours' load; the CPU ratio does not, and when
the cores are saturated it is what sets the throughput.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from include.backup.config.schema import PostgresSource as PostgresConfig
from include.backup.pipeline.compression import compress_writer
from include.backup.pipeline.hashing import CountingWriter
from include.backup.sources.postgres import PostgresSource
from include.backup.testing.postgres import PgCluster, load_sample_data

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


def _server_cpu(pg: PgCluster) -> float:
    """CPU seconds of the postmaster and the children it has reaped (ended backends)."""
    pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime


def _own_cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def measured(pg: PgCluster, run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of us + children + server) of ``run()``."""
    cpu0, srv0 = _own_cpu(), _server_cpu(pg)
    t = time.perf_counter()
    run()
    wall = time.perf_counter() - t
    time.sleep(0.3)  # let the postmaster reap the backend that served the run
    return wall, (_own_cpu() - cpu0) + (_server_cpu(pg) - srv0)


def baseline(pg: PgCluster, out: Path) -> None:
    env = dict(os.environ, PGHOST=pg.host, PGPORT=str(pg.port), PGUSER="postgres", PGDATABASE="events")
    cmd = f"{pg.bin_dir}/pg_dump -Fc -Z0 | zstd -3 -T2 -q > {out}"
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, check=True)


def ours(out: Path, row_counts: str) -> int:
    """The dump step's streams: PostgresSource.dump → byte counter → zstd → file."""
    os.environ["AIRFLOW_CONN_BENCH_PG"] = os.environ["BENCH_PG_URI"]
    cfg = PostgresConfig(type="postgres", conn_id="bench_pg", row_counts=row_counts)  # type: ignore[arg-type]
    source = PostgresSource("bench", cfg)
    with open(out, "wb") as f, compress_writer(f, "zstd", 3) as z:
        counter = CountingWriter(z)
        source.dump("FULL", counter, None)
    return counter.count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--row-counts", nargs="+", default=["auto", "estimate"],
                    choices=["auto", "exact", "estimate"], help="the source's row_counts settings to time")
    args = ap.parse_args()
    with PgCluster() as pg, tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp_s:
        tmp = Path(tmp_s)
        print(f"loading {args.rows} rows per table ...", flush=True)
        load_sample_data(pg, "events", rows=args.rows)
        pg.psql("VACUUM ANALYZE;", db="events")  # what autovacuum does to a settled database
        os.environ["BENCH_PG_URI"] = pg.uri("events")
        raw = ours(tmp / "warm.zst", "estimate")  # warms the cache and gives the raw size
        runs: dict[str, list[tuple[float, float]]] = {"baseline": []}
        for _ in range(args.repeat):
            runs["baseline"].append(measured(pg, lambda: baseline(pg, tmp / "base.zst")))
            for mode in args.row_counts:
                runs.setdefault(mode, []).append(measured(pg, lambda m=mode: ours(tmp / f"{m}.zst", m)))
        mb = raw / 1e6
        print(f"dump size (raw pg_dump -Fc -Z0): {mb:.0f} MB; median of {args.repeat}, alternating")
        b_wall = statistics.median(w for w, _ in runs["baseline"])
        b_cpu = statistics.median(c for _, c in runs["baseline"])
        for name, got in runs.items():
            wall, cpu = statistics.median(w for w, _ in got), statistics.median(c for _, c in got)
            label = f"dump task, row_counts: {name}"
            if name == "baseline":
                label = "pg_dump -Fc -Z0 | zstd -3 -T2"
            print(f"{label:38}: {wall:6.2f} s wall ({mb / wall:4.0f} MB/s), {cpu:6.2f} CPU-s   "
                  f"ratio wall {b_wall / wall:.2f}, CPU {b_cpu / cpu:.2f}  "
                  f"(runs: {', '.join(f'{w:.1f}/{c:.1f}' for w, c in got)})")
        print("ratio = baseline time / ours (throughput ratio); target >= 0.9")


if __name__ == "__main__":
    main()
