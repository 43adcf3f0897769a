"""Continuous WAL archiving: wal-push and wal-fetch against their baselines (run on demand).

    python bench/bench_wal.py [--wal-mib 256]

Starts a throwaway PostgreSQL cluster archiving with a plain ``cp`` into a spool, takes a
physical FULL through the real pipeline (to two local targets) and a plain
``pg_basebackup -Fp``, writes about --wal-mib of WAL, then, in the same run:

Push (each WAL segment of the spool handed to a fresh process, as PostgreSQL does):
  (a) ``cp`` of the segment into a folder (the baseline);
  (b) ``python -m include.backup wal-push`` to a local target;
  (c) the same to the S3 emulator (moto, started here);
  (d) the spool + schedule path: one TRANSACTION_LOG backup of the same segments.
  Per segment: wall time and CPU time (user + sys of the child; steadier on a busy host),
  median and max; throughput in MiB/s of WAL.
PITR to the end of that WAL:
  (e) PostgreSQL's own replay of the plain base with ``cp`` from the spool (baseline);
  (f) restore_backup with the pushed WAL (wal-fetch path: fetched while replay runs);
  (g) restore_backup with the TRANSACTION_LOG backup (today's download-everything path).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import replay_with_cp

from include.backup import tasks
from include.backup.catalog.catalog import list_backups
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.sources.postgres import cluster
from include.backup.targets.local import LocalTarget
from include.backup.testing.postgres import PgCluster, free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEG = re.compile(r"^[0-9A-F]{24}$")


def run_schedule(name: str, run_id: str, targets: list[str]) -> dict:
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump(name, run_id, datetime.now(UTC))))
    for t in targets:
        tasks.run_upload(meta, t)
    return meta


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, cpu) seconds of one child process; fails loudly."""
    before = os.times()
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {done.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


def summary(label: str, runs: list[tuple[float, float]], mib: float) -> dict:
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    row = {
        "wall_median_s": statistics.median(walls), "wall_max_s": max(walls),
        "cpu_median_s": statistics.median(cpus), "mib_per_s": mib / sum(walls),
    }  # fmt: skip
    print(f"{label:<34} per segment: wall median {row['wall_median_s']:.3f} s (max {row['wall_max_s']:.3f}), "
          f"CPU median {row['cpu_median_s']:.3f} s; {row['mib_per_s']:.1f} MiB/s")  # fmt: skip
    return row


def start_moto(tmp: Path) -> tuple[subprocess.Popen, str]:
    import boto3  # noqa: PLC0415 - only the bench needs it here

    port = free_port()
    log = open(tmp / "moto.log", "wb")  # noqa: SIM115 - lives as long as the server
    argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="a",
                         aws_secret_access_key="b").create_bucket(Bucket="bench")  # fmt: skip
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    conn = {"conn_type": "aws", "login": "a", "password": "b",
            "extra": {"endpoint_url": url, "region_name": "us-east-1"}}  # fmt: skip
    os.environ["AIRFLOW_CONN_BENCH_S3"] = json.dumps(conn)
    return proc, url


def write_configs(tmp: Path, pg: PgCluster) -> None:
    source = f"""
            sources:
              shop: {{type: postgres, conn_id: bench_wal, method: physical,
                      wal_archive_dir: {pg.wal_archive_dir}}}"""
    targets = f"""
            staging_dir: {tmp}/staging
            targets:
              pushed: {{type: local, path: {tmp}/pushed}}
              spooled: {{type: local, path: {tmp}/spooled}}
              s3: {{type: s3, conn_id: bench_s3, bucket: bench, prefix: wal/}}"""
    (tmp / "main.yaml").write_text(textwrap.dedent(targets + source + """
            schedules:
              - {name: base, source: shop, type: FULL, cron: "@daily", targets: [pushed, spooled]}
              - {name: wal, source: shop, type: TRANSACTION_LOG, cron: "*/15 * * * *", targets: [spooled]}
        """))
    for name, target in (("push_local", "pushed"), ("push_s3", "s3")):
        # wal_archive_dir left out: the spool is already full (cp); only the push is timed.
        (tmp / f"{name}.yaml").write_text(textwrap.dedent(targets + f"""
            sources:
              shop: {{type: postgres, conn_id: bench_wal, method: physical}}
            schedules:
              - {{name: wal, source: shop, type: TRANSACTION_LOG, cron: "*/15 * * * *", targets: [{target}]}}
        """))




def main() -> None:  # noqa: PLR0915 - one linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--wal-mib", type=int, default=256)
    args = ap.parse_args()
    with PgCluster(archive=True) as pg, tempfile.TemporaryDirectory(prefix="bench-wal-") as tmp_s:
        tmp = Path(tmp_s)
        os.chmod(tmp, 0o755)
        moto, _ = start_moto(tmp)
        try:
            pg.create_database("shop")
            pg.psql("CREATE TABLE w (id bigserial PRIMARY KEY, pad text)", db="shop")
            os.environ["AIRFLOW_CONN_BENCH_WAL"] = pg.uri("shop")
            write_configs(tmp, pg)
            os.environ["BACKUP_CONFIG"] = str(tmp / "main.yaml")
            KeyRing.generate(tmp / "keys.json", "k1")
            os.environ["BACKUP_KEY_FILE"] = str(tmp / "keys.json")
            base = run_schedule("base", "b1", ["pushed", "spooled"])
            plain = Path(f"{pg.base_dir}-plainbase")
            pg.run_as_owner([str(pg.bin_dir / "pg_basebackup"), "-h", pg.host, "-p", str(pg.port),
                             "-U", "postgres", "-D", str(plain), "-Fp", "-X", "none",
                             "--checkpoint=fast"])  # fmt: skip
            print(f"writing about {args.wal_mib} MiB of WAL ...", flush=True)
            rows = args.wal_mib * 700
            for start in range(0, rows, 100_000):
                n = min(100_000, rows - start)
                pg.psql(f"INSERT INTO w (pad) SELECT repeat(md5(g::text), 32) FROM generate_series(1, {n}) g",
                        db="shop")  # fmt: skip
            last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
            while pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last:
                time.sleep(0.2)
            target = LocalTarget("pushed", str(tmp / "pushed"))
            held = {m.backup_id: m for m in list_backups(target, "shop")}
            first = held[base["backup_id"]].position["wal_first"]
            segments = sorted(p for p in Path(pg.wal_archive_dir).iterdir()
                              if SEG.match(p.name) and p.name >= first)  # fmt: skip
            mib = sum(p.stat().st_size for p in segments) / 2**20
            print(f"{len(segments)} segments, {mib:.0f} MiB of WAL after the base backup")

            copies = tmp / "cp"
            copies.mkdir()
            cp = [timed(["cp", str(s), str(copies / s.name)]) for s in segments]
            env = dict(os.environ)
            push = [sys.executable, "-m", "include.backup", "wal-push", "--config"]
            local = [timed([*push, str(tmp / "push_local.yaml"), str(s)], env) for s in segments]
            s3 = [timed([*push, str(tmp / "push_s3.yaml"), str(s)], env) for s in segments]
            t0, c0 = time.perf_counter(), os.times()
            log = run_schedule("wal", "w1", ["spooled"])
            spool_wall = time.perf_counter() - t0
            spool_cpu = (os.times().user - c0.user) + (os.times().system - c0.system)

            results = {"segments": len(segments), "wal_mib": round(mib)}
            results["cp"] = summary("cp (baseline)", cp, mib)
            results["wal_push_local"] = summary("wal-push, local target", local, mib)
            results["wal_push_s3"] = summary("wal-push, S3 emulator", s3, mib)
            print(f"{'spool + schedule (1 log backup)':<34} {spool_wall:.2f} s wall, {spool_cpu:.2f} s CPU "
                  f"for all; {mib / spool_wall:.1f} MiB/s; RPO = the schedule's interval")  # fmt: skip
            results["spool_schedule"] = {"wall_s": spool_wall, "cpu_s": spool_cpu}
            results["spool_schedule"]["stored"] = log["stored_size"]

            base_s = replay_with_cp(pg, plain, None)
            cfg = load_config().config
            keys = KeyRing.from_file(tmp / "keys.json")
            times = {}
            for label, target in (("wal-fetch (pushed WAL)", "pushed"), ("download everything", "spooled")):
                into = f"{pg.base_dir}-{target}"
                t0 = time.monotonic()
                res = restore_backup(cfg, None, into, keys=keys, source_name="shop", target_name=target)
                times[label] = (time.monotonic() - t0, res.stats["replay_seconds"])
                cluster.stop_restored_server(into, quiet=True)
                shutil.rmtree(into, ignore_errors=True)
            print(f"PITR to the end of {mib:.0f} MiB of WAL:")
            print(f"  PostgreSQL replay with cp (baseline): {base_s:.2f} s")
            for label, (total, replay) in times.items():
                print(f"  restore_backup, {label}: {total:.2f} s (replay {replay:.2f} s); "
                      f"baseline/ours {base_s / total:.2f}")  # fmt: skip
            results["pitr"] = {"baseline_s": base_s, **{k: v[0] for k, v in times.items()}}
            print(json.dumps(results, default=float))
            shutil.rmtree(plain, ignore_errors=True)
        finally:
            moto.terminate()
            moto.wait(10)


if __name__ == "__main__":
    main()
