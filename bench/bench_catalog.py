"""The catalog at scale: list, prune plan, DR page, RPO check and a restore's chain lookup
over N backups, from the catalog index and (baseline, same run) from a full manifest scan.

    .venv/bin/python bench/bench_catalog.py                        # local 1k and 10k, S3 1k
    .venv/bin/python bench/bench_catalog.py --local 1000,10000,100000 --s3 0
    .venv/bin/python bench/bench_catalog.py --local 1000 --s3 1000 --files 50   # quick look
    .venv/bin/python bench/bench_catalog.py --local 100000 --s3 0 --work /var/tmp/bc  # made once, kept
    .venv/bin/python bench/bench_catalog.py --local "" --s3 10000 --s3-ops all --scan-max 0  # S3, no scan

Backups are made with the project's own code: real manifests (Manifest, a file index of
``--files`` entries in source_state as the files source writes, signed by
catalog/signing.sign), a tiny payload each, written with catalog.write_manifest as a version
without the index would have; their index records (index.record_of) go into one base
segment (index._write_segment), and the last 20 backups are published with index.publish,
as the upload step does, so the index also holds appended segments.

Each measurement runs in a fresh child process (imports and the config load outside the
timing): wall time, the process's CPU time (steadier than wall time on a busy host: in the
stderr lines and ``--json``), the peak of Python allocations during the operation
(tracemalloc) and the process's peak RSS (ru_maxrss, imports included). On S3 (moto's
server, started here) the child counts the requests its boto3 client sends (a ``before-send`` event hook).

The baseline is the same operation with every reader switched back to
``catalog.list_backups`` (every manifest read and parsed whole: what main did). At 100,000
the baseline is skipped (it needs about 9 GB). Goals at 10,000 local: list < 1 s, prune
plan < 2 s, DR page < 1 s, each < 150 MB; per-backup cost flat or falling to 100,000; S3
requests of a listing independent of N.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchlib import start_moto

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = "docs"
SCHEDULE = "docs_full"
PUBLISHED = 20  # backups published through the index after its base was written
OPS = ("list", "prune", "page", "rpo", "chain")
S3_OPS = ("list", "chain")
BUCKET = "bench-catalog"
S3_CONN = "bench_s3"


# --- making backups --------------------------------------------------------------------


def write_config(work: Path, target_yaml: str) -> Path:
    (work / "data").mkdir(parents=True, exist_ok=True)
    config = work / "backup_config.yaml"
    config.write_text(
        f"staging_dir: {work}/staging\n"
        "dr: {rpo_hours: 2, rto_hours: 1, test_frequency_days: 30}\n"
        f"targets:\n  bench: {target_yaml}\n"
        f"sources:\n  {SOURCE}: {{type: files, paths: [{work}/data]}}\n"
        f"schedules:\n  - {{name: {SCHEDULE}, source: {SOURCE}, type: FULL, cron: '@hourly', "
        "targets: [bench]}\n"
    )
    return config


def template_state(files: int) -> dict[str, Any]:
    """A files-source-like file index of ``files`` entries."""
    return {
        "files": {
            f"projects/report-{i:05d}/section-{i % 17}.txt": {
                "size": 1000 + i, "mtime": 1_700_000_000 + i, "mode": 33188,
                "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
            }
            for i in range(files)
        }
    }  # fmt: skip


def make_backups(target: Any, n: int, files: int, ring: Any, config: Path, keyfile: Path) -> None:
    """Backups 0 .. n-21 written in chunks by worker processes (signing and serialising
    is CPU-bound), their records into one base segment; the last 20 published."""
    from include.backup.catalog import index

    base = n - PUBLISHED
    jobs = [(str(config), str(keyfile), n, files, lo, min(lo + CHUNK, base)) for lo in range(0, base, CHUNK)]
    records: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        for part in pool.map(_make_chunk, jobs):
            records += part
    index._write_segment(target, SOURCE, "base", ring, records)  # the fast path: one base
    index.register_source(target, SOURCE)
    make = _maker(target, n, files, ring)
    for i in range(base, n):
        index.publish(target, make(i), ring)
    index.index_sources(target)  # the one-time discovery of a target's sources (then registered)


CHUNK = 1000


def _make_chunk(job: tuple[str, str, int, int, int, int]) -> list[dict[str, Any]]:
    """Write backups lo .. hi-1 (payload, then the manifest: the bytes and key that
    write_manifest writes); their index records."""
    from include.backup.catalog import index
    from include.backup.catalog.catalog import manifest_key
    from include.backup.config.loader import load_config
    from include.backup.keys import KeyRing
    from include.backup.targets import build_target

    config, keyfile, n, files, lo, hi = job
    target = build_target("bench", load_config(config).config.targets["bench"])
    ring = KeyRing.from_file(keyfile)
    make, put = _maker(target, n, files, ring), bulk_writer(target)
    payload = b"x" * 64

    def write(i: int) -> dict[str, Any]:
        m = make(i)
        put(f"{SOURCE}/{m.backup_id}/payload", payload)
        put(manifest_key(SOURCE, m.backup_id), m.to_json())
        return index.record_of(m)

    with ThreadPoolExecutor(8) as threads:  # a remote target's round trips overlap
        return list(threads.map(write, range(lo, hi)))


def _maker(target: Any, n: int, files: int, ring: Any) -> Any:
    """make(i): the signed manifest of backup i (one hour apart, the newest an hour ago).
    The shared parts (file index, objects) are validated once, then copied per backup."""
    from include.backup.catalog.manifest import Manifest, StoredObject, Verification
    from include.backup.catalog.signing import sign

    payload = b"x" * 64
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=n + 1)
    template = Manifest(
        backup_id="template", schedule=SCHEDULE, source=SOURCE, source_type="files", backup_type="FULL",
        started_at=start, finished_at=start, payload_format="tar",
        objects=[StoredObject(name="payload", size=len(payload), sha256=hashlib.sha256(payload).hexdigest())],
        stored_size=len(payload), raw_size=1000 * files, source_state=template_state(files),
        stats={"files": files},
    )  # fmt: skip

    def make(i: int) -> Any:
        started = start + timedelta(hours=i)
        m = template.model_copy(update={
            "backup_id": f"{SCHEDULE}-{started:%Y%m%dT%H%M%SZ}-{i:06x}"[:60],
            "started_at": started, "finished_at": started + timedelta(seconds=42),
            "verification": {target.name: Verification(ok=True, verified_at=started + timedelta(minutes=1))},
        })  # fmt: skip
        return sign(m, *ring.active())

    return make


def bulk_writer(target: Any) -> Any:
    """``target.put_bytes``; at the local target, a plain file write at the path the target
    would use: the bench's fixture needs the same files, not the target's fsync per file
    and per directory (2 fsyncs a backup were most of the time to make 100,000)."""
    from include.backup.targets.local import LocalTarget

    if not isinstance(target, LocalTarget):
        return target.put_bytes

    def put(key: str, data: bytes) -> None:
        path = target.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return put


# --- measuring (child process) ---------------------------------------------------------


def full_scan_mode() -> None:
    """Every reader back on catalog.list_backups: main's behaviour, the baseline."""
    from include.backup import prune_report, schedule_retention
    from include.backup.catalog import catalog, index
    from include.backup.dr import web
    from include.backup.dr.monitor import run

    def scan(target: Any, source: str | None, keys: Any) -> list[Any]:
        return catalog.list_backups(target, source)

    def chain(target: Any, source: str, keys: Any, backup_id: str | None = None) -> list[Any]:
        backups = catalog.list_backups(target, source)
        known = {m.backup_id: m for m in backups}
        return catalog.chain_for(target, backups[-1], known=known)

    for module in (index, prune_report, schedule_retention, web, run):
        module.summaries = scan  # type: ignore[attr-defined]
    index.read_chain = chain  # type: ignore[assignment]


def child(op: str, mode: str, config: str, keyfile: str, trace: str) -> None:
    os.environ["BACKUP_CONFIG"] = config
    os.environ["BACKUP_KEY_FILE"] = keyfile
    from fastapi.testclient import TestClient

    from include.backup.catalog import index
    from include.backup.cli import main
    from include.backup.config.loader import load_config
    from include.backup.dr.monitor import run_monitor
    from include.backup.dr.web import Monitor, create_app
    from include.backup.keys import KeyRing
    from include.backup.targets import build_target

    if mode == "scan":
        full_scan_mode()
    cfg = load_config(config).config
    ring = KeyRing.from_file(keyfile)
    requests = [0]
    count_s3_requests(requests)
    target = build_target("bench", cfg.targets["bench"])
    if hasattr(target, "_s3"):
        target._s3()  # the provider's import and the first client: outside the timing
        requests[0] = 0
    client = TestClient(create_app(monitor=Monitor(ttl=0))) if op == "page" else None

    def work() -> None:
        if op == "list":
            with contextlib.redirect_stdout(io.StringIO()):
                main(["list", "--target", "bench"])
        elif op == "prune":
            with contextlib.redirect_stdout(io.StringIO()):
                main(["prune", "--schedule", SCHEDULE, "--dry-run"])
        elif op == "page":
            assert client is not None and client.get("/?refresh=1").status_code == 200
        elif op == "rpo":
            report = run_monitor(cfg, targets={"bench": target}, keyring=ring)
            assert report.sources[SOURCE].backups_count > 0
        elif op == "chain":
            assert index.read_chain(target, SOURCE, ring)

    if trace == "trace":  # a second run: tracemalloc slows Python down, so no timing here
        tracemalloc.start()
        work()
        print(json.dumps({"alloc_mb": tracemalloc.get_traced_memory()[1] / 1e6}))
        return
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    work()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rss_mb": rss,
                      "rss_before_mb": rss_before, "requests": requests[0]}))  # fmt: skip


def count_s3_requests(counter: list[int]) -> None:
    """Count every request of every S3 client the targets build (a botocore event hook)."""
    from include.backup.targets import s3

    build = s3.S3Target._build_client

    def counted(self: Any) -> Any:
        client = build(self)
        client.meta.events.register("before-send.s3.*", lambda **_: counter.__setitem__(0, counter[0] + 1))
        return client

    s3.S3Target._build_client = counted  # type: ignore[method-assign]


def measure(op: str, mode: str, config: Path, keyfile: Path, env: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for trace in ("time", "trace"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", op, mode, str(config), str(keyfile), trace],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"{op} ({mode}) failed:\n{out.stderr[-3000:]}")
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return result


# --- moto ------------------------------------------------------------------------------




# --- driver ----------------------------------------------------------------------------


def run_case(
    kind: str, n: int, files: int, work: Path, env: dict[str, str], ops: tuple[str, ...], scan_max: int
) -> list[dict[str, Any]]:
    from include.backup.config.loader import load_config
    from include.backup.keys import KeyRing
    from include.backup.targets import build_target

    keyfile = work / "keys.json"
    made = work / "made"  # written once the backups are complete: --work reuses them
    if not made.exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        KeyRing.generate(keyfile, "k1")
    ring = KeyRing.from_file(keyfile)
    target_yaml = (
        f"{{type: local, path: {work}/target}}" if kind == "local"
        else f"{{type: s3, conn_id: {S3_CONN}, bucket: {BUCKET}, prefix: n{n}/}}"
    )  # fmt: skip
    config = write_config(work, target_yaml)
    target = build_target("bench", load_config(config).config.targets["bench"])
    if not made.exists():
        t0 = time.perf_counter()
        make_backups(target, n, files, ring, config, keyfile)
        made.touch()
        print(f"# {kind} N={n}: made {n} backups in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = []
    modes = ("index", "scan") if n <= scan_max else ("index",)
    for op in ops:
        for mode in modes:
            r = measure(op, mode, config, keyfile, env)
            rows.append({"target": kind, "n": n, "op": op, "mode": mode, **r})
            print(f"# {kind} N={n} {op:<6} {mode:<5} {r['seconds']:8.3f} s  cpu {r['cpu_seconds']:7.3f} s  "
                  f"alloc {r['alloc_mb']:8.1f} MB  rss {r['rss_mb']:7.0f} MB  requests {r['requests']}",
                  file=sys.stderr)  # fmt: skip
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    print("| target | N | operation | index: time | alloc peak | RSS | requests | full scan: time | "
          "alloc peak | RSS | requests | speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["mode"] != "index":
            continue
        base = next((b for b in rows if b["mode"] == "scan" and (b["target"], b["n"], b["op"]) ==
                     (r["target"], r["n"], r["op"])), None)  # fmt: skip
        cells = [r["target"], f"{r['n']:,}", r["op"], f"{r['seconds']:.3f} s", f"{r['alloc_mb']:.1f} MB",
                 f"{r['rss_mb']:.0f} MB", str(r["requests"] if r["target"] == "s3" else "-")]  # fmt: skip
        if base:
            cells += [f"{base['seconds']:.3f} s", f"{base['alloc_mb']:.1f} MB", f"{base['rss_mb']:.0f} MB",
                      str(base["requests"] if r["target"] == "s3" else "-"),
                      f"{base['seconds'] / max(r['seconds'], 1e-9):.1f}x"]  # fmt: skip
        else:
            cells += ["(skipped)"] * 4 + ["-"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("cost per backup (index path, µs):")
    for op in OPS:
        per = [(r["n"], r["seconds"] / r["n"] * 1e6) for r in rows
               if r["mode"] == "index" and r["target"] == "local" and r["op"] == op]  # fmt: skip
        if per:
            print(f"  {op:<6} " + ", ".join(f"N={n:,}: {us:.1f}" for n, us in per))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local", default="1000,10000", help="backup counts at the local target")
    p.add_argument("--s3", type=int, default=1000, help="backup count at moto's S3 (0: skip)")
    p.add_argument("--s3-ops", default=",".join(S3_OPS),
                   help=f"operations measured at S3, comma-separated, of {','.join(OPS)}; or all")
    p.add_argument("--scan-max", type=int, default=10_000,
                   help="the largest N also measured with the full-scan baseline (it reads every manifest: "
                   "at moto's S3 10,000 GETs per operation)")
    p.add_argument("--files", type=int, default=200, help="entries in each manifest's file index")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--work", help="keep the backups in this directory and reuse them in the next run "
                   "(local cases only: moto's state goes with its process)")
    args = p.parse_args()
    if args.s3_ops == "all":
        args.s3_ops = ",".join(OPS)
    unknown = set(args.s3_ops.split(",")) - set(OPS) - {""}
    if unknown:
        p.error(f"--s3-ops: unknown {', '.join(sorted(unknown))}; choose from {','.join(OPS)}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    env = dict(os.environ)
    rows: list[dict[str, Any]] = []
    moto = None
    try:
        for n in [int(x) for x in args.local.split(",") if x]:
            rows += run_case("local", n, args.files, work / f"local-{n}", env, OPS, args.scan_max)
        if args.s3:
            moto, url = start_moto(work)
            import boto3

            boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                         aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)  # fmt: skip
            conn = {"conn_type": "aws", "login": "bench", "password": "bench",
                    "extra": {"endpoint_url": url, "region_name": "us-east-1"}}  # fmt: skip
            env[f"AIRFLOW_CONN_{S3_CONN.upper()}"] = json.dumps(conn)
            os.environ.update(env)
            s3_ops = tuple(op for op in args.s3_ops.split(",") if op)
            rows += run_case("s3", args.s3, args.files, work / f"s3-{args.s3}", env, s3_ops, args.scan_max)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        elif (work / f"s3-{args.s3}").exists():
            shutil.rmtree(work / f"s3-{args.s3}", ignore_errors=True)  # its objects died with moto
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
