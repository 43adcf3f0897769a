"""Upload throughput and memory of the object-store targets (run on demand, not a test).

    .venv/bin/python bench/bench_targets.py                       # 1 GiB, all three stores
    .venv/bin/python bench/bench_targets.py --size-mib 256 --stores s3 --rounds 1   # quick look

Starts its own servers on 127.0.0.1 (moto's S3 server, Azurite, gcp-storage-emulator: the
same ones the integration tests use, installed by scripts/install-test-services.sh), writes
one file of random bytes, and uploads it to each store

- through our target (``S3Target.put``, ``AzureBlobTarget.put``, ``GCSTarget.put``, with
  their default part/block/chunk sizes and concurrency), and
- through the store's own SDK call on the same file, in the same run: boto3's
  ``upload_file`` (s3transfer defaults; in a bare process, and again in a process that
  imported Airflow and the provider as the target's run does), azure-storage-blob's ``upload_blob`` (SDK
  defaults, and again with ``max_concurrency`` equal to ours), google-cloud-storage's
  ``upload_from_filename`` (defaults: one 100 MiB chunk per request).

gcp-storage-emulator re-reads and rewrites the whole partial object for every chunk of a
resumable upload, so its upload time grows with the square of the chunk count: our 16 MiB
chunks (memory bound) lose to the SDK's 100 MiB ones there, which real GCS does not
punish. The extra row "GCSTarget.put (chunk_size=100 MiB)" shows the target's own overhead
at the SDK's chunk size.

Each upload runs in a fresh child process that imports everything and makes one request
first (so imports and connection set-up are outside the timing), then times the upload and
reads its peak RSS (``ru_maxrss``). Runs alternate SDK and target for ``--rounds`` rounds;
the best time of each is used for the ratio (SDK time / target time: >= 1 means the target
is at least as fast). The file is read once before timing, so every run reads it from the
page cache. Targets: ratio >= 0.9 for S3; peak RSS growth during the upload < 128 MB.
MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MiB = 1 << 20
BUCKET = "bench"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZ_ACCOUNT = "devstoreaccount1"


def rss_mb() -> float:
    """Peak RSS of this process so far (VmHWM: unlike ru_maxrss, not inherited from the
    parent across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


# --- the child: one upload ---------------------------------------------------------------------


def child(method: str, path: str, endpoint: str) -> None:
    """Run one upload and print its figures as JSON (runs in a fresh interpreter)."""
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
    key = f"obj-{method}"
    size = os.path.getsize(path)
    if method.startswith("s3"):
        import boto3

        os.environ["AIRFLOW_CONN_BENCH_S3"] = json.dumps(
            {
                "conn_type": "aws",
                "login": "bench",
                "password": "bench-secret",
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        )
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
        )
        if method == "s3-target":
            from include.backup.targets.s3 import S3Target

            target = S3Target("bench-s3", "bench_s3", BUCKET)
            target.stat("warm-up")
            before = rss_mb()
            t = time.perf_counter()
            target.put(key, Path(path))
        else:
            if method == "s3-sdk-airflow":
                # The same process shape as the target's run: Airflow and the provider
                # imported (a big heap makes every garbage collection slower).
                import airflow.providers.amazon.aws.hooks.s3  # noqa: F401

                import include.backup.targets.s3  # noqa: F401
            client.head_bucket(Bucket=BUCKET)
            before = rss_mb()
            t = time.perf_counter()
            client.upload_file(path, BUCKET, key)
        seconds = time.perf_counter() - t
        stored = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        client.delete_object(Bucket=BUCKET, Key=key)
    elif method.startswith("azure"):
        from azure.storage.blob import BlobServiceClient

        os.environ["AIRFLOW_CONN_BENCH_WASB"] = json.dumps(
            {
                "conn_type": "wasb",
                "login": AZ_ACCOUNT,
                "password": AZ_KEY,
                "host": endpoint,
            }
        )
        container = BlobServiceClient(
            endpoint, credential={"account_name": AZ_ACCOUNT, "account_key": AZ_KEY}
        ).get_container_client(BUCKET)
        if method == "azure-target":
            from include.backup.targets.azure import AzureBlobTarget

            target = AzureBlobTarget("bench-azure", "bench_wasb", BUCKET)
            target.stat("warm-up")
            before = rss_mb()
            t = time.perf_counter()
            target.put(key, Path(path))
        else:
            from include.backup.targets.azure import DEFAULT_CONCURRENCY

            container.get_container_properties()
            concurrency = DEFAULT_CONCURRENCY if method == "azure-sdk-concurrent" else 1
            before = rss_mb()
            t = time.perf_counter()
            with open(path, "rb") as f:
                container.get_blob_client(key).upload_blob(f, overwrite=True, max_concurrency=concurrency)
        seconds = time.perf_counter() - t
        stored = container.get_blob_client(key).get_blob_properties().size
        container.get_blob_client(key).delete_blob()
    elif method.startswith("gcs"):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        os.environ["AIRFLOW_CONN_BENCH_GCS"] = json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": "bench"},
            }
        )
        bucket = storage.Client(project="bench", credentials=AnonymousCredentials()).bucket(BUCKET)
        if method.startswith("gcs-target"):
            from include.backup.targets.gcs import GCSTarget

            chunk = {"gcs-target-100m": 100 * MiB}.get(method)
            target = GCSTarget("bench-gcs", "bench_gcs", BUCKET, **({"chunk_size": chunk} if chunk else {}))
            target.stat("warm-up")
            before = rss_mb()
            t = time.perf_counter()
            target.put(key, Path(path))
        else:
            bucket.reload()
            before = rss_mb()
            t = time.perf_counter()
            bucket.blob(key).upload_from_filename(path)
        seconds = time.perf_counter() - t
        stored = bucket.get_blob(key).size
        bucket.delete_blob(key)
    else:
        raise SystemExit(f"unknown method {method}")
    assert stored == size, (stored, size)
    print("RESULT " + json.dumps({"seconds": seconds, "rss_before_mb": before, "rss_peak_mb": rss_mb()}))


def run_child(method: str, path: Path, endpoint: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-"))
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(path), endpoint],
        env=env,
        capture_output=True,
        text=True,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise SystemExit(f"{method} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


# --- the parent: servers, file, rounds ------------------------------------------------------------


def start_servers(stores: list[str], workdir: Path) -> tuple[dict[str, str], list[Any]]:
    from tests.integration.services import BIN, ServerProcess, free_port
    from tests.integration.services import ROOT as REPO

    endpoints: dict[str, str] = {}
    servers: list[Any] = []
    if "s3" in stores:
        import boto3

        port = free_port()
        servers.append(
            ServerProcess(
                "moto_server",
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                workdir / "moto.log",
            ).start(port)
        )
        endpoints["s3"] = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoints["s3"],
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
        ).create_bucket(Bucket=BUCKET)
    if "azure" in stores:
        from azure.storage.blob import BlobServiceClient

        port = free_port()
        (workdir / "azurite").mkdir(exist_ok=True)
        cmd = [
            str(REPO / "tests" / "services" / "azurite" / "node_modules" / ".bin" / "azurite-blob"),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(workdir / "azurite"),
            "--loose",
            "--skipApiVersionCheck",
            "--silent",
        ]
        servers.append(ServerProcess("azurite", cmd, workdir / "azurite.log", grace=2.0).start(port))
        endpoints["azure"] = f"http://127.0.0.1:{port}/{AZ_ACCOUNT}"
        BlobServiceClient(
            endpoints["azure"], credential={"account_name": AZ_ACCOUNT, "account_key": AZ_KEY}
        ).create_container(BUCKET)
    if "gcs" in stores:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        port = free_port()
        cmd = [
            str(BIN / "gcp-storage-emulator"),
            "-d",
            str(workdir / "gcs"),
            "start",
            "-H",
            "127.0.0.1",
            "--port",
            str(port),
            "-q",
        ]
        servers.append(ServerProcess("gcp-storage-emulator", cmd, workdir / "gcs.log").start(port))
        endpoints["gcs"] = f"http://127.0.0.1:{port}"
        storage.Client(
            project="bench",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoints["gcs"]},
        ).create_bucket(BUCKET)
    return endpoints, servers


PAIRS = {
    "s3": [
        ("boto3 upload_file", "s3-sdk"),
        ("boto3 upload_file (Airflow imported)", "s3-sdk-airflow"),
        ("S3Target.put", "s3-target"),
    ],
    "azure": [
        ("upload_blob (defaults)", "azure-sdk"),
        ("upload_blob (max_concurrency=ours)", "azure-sdk-concurrent"),
        ("AzureBlobTarget.put", "azure-target"),
    ],
    "gcs": [
        ("upload_from_filename", "gcs-sdk"),
        ("GCSTarget.put (chunk_size=100 MiB)", "gcs-target-100m"),
        ("GCSTarget.put", "gcs-target"),
    ],
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stores", default="s3,azure,gcs")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-targets-"))
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "artifact.bin"
    size = args.size_mib * MiB
    if not src.exists() or src.stat().st_size != size:
        block = os.urandom(64 * MiB)
        with open(src, "wb") as f:
            for i in range(0, size, len(block)):
                f.write(block[: min(len(block), size - i)])
    with open(src, "rb") as f:  # into the page cache
        while f.read(64 * MiB):
            pass

    endpoints, servers = start_servers(stores, workdir)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for r in range(args.rounds):
            for store in stores:
                for label, method in PAIRS[store]:
                    res = run_child(method, src, endpoints[store])
                    results.setdefault(store, {}).setdefault(label, []).append(res)
                    print(
                        f"round {r + 1} {store:5s} {label:36s} {res['seconds']:7.2f} s  "
                        f"{size / res['seconds'] / 1e6:7.1f} MB/s  RSS {res['rss_before_mb']:.0f} -> "
                        f"{res['rss_peak_mb']:.0f} MB",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    report(results, stores, size, args.rounds)


def report(
    results: dict[str, dict[str, list[dict[str, float]]]], stores: list[str], size: int, rounds: int
) -> None:
    print(f"\n{size // MiB} MiB upload, best of {rounds} (median in brackets); MB = 10^6 bytes")
    for store in stores:
        runs = results[store]
        best = {label: min(x["seconds"] for x in runs[label]) for label, _ in PAIRS[store]}
        for label, _ in PAIRS[store]:
            times = [x["seconds"] for x in runs[label]]
            growth = max(x["rss_peak_mb"] - x["rss_before_mb"] for x in runs[label])
            peak = max(x["rss_peak_mb"] for x in runs[label])
            print(
                f"  {store:5s} {label:36s} {min(times):7.2f} s ({statistics.median(times):.2f})  "
                f"{size / min(times) / 1e6:7.1f} MB/s  peak RSS {peak:.0f} MB "
                f"(+{growth:.0f} MB during the upload)"
            )
        sdk_rows = [label for label, method in PAIRS[store] if "-sdk" in method]
        target_rows = [label for label, method in PAIRS[store] if "-target" in method]
        for target_label in target_rows:
            for sdk_label in sdk_rows:
                ratio = best[sdk_label] / best[target_label]
                gate = "   (target >= 0.9)" if store == "s3" else ""
                print(f"  {store:5s} ratio: {sdk_label} time / {target_label} time = {ratio:.2f}{gate}")


if __name__ == "__main__":
    main()
