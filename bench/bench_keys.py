"""``keys retire`` at the S3 emulator against a plain copy of the same objects.

    nice .venv/bin/python bench/bench_keys.py                      # 1 GiB: 8 backups of 128 MiB
    nice .venv/bin/python bench/bench_keys.py --total-mib 256 --each-mib 64   # a quick look

Backups are made with the project's own code (random, incompressible payloads encrypted by
pipeline/crypto under key k1, manifests signed by catalog/signing, published with the
catalog index) at moto's S3 server, started here. Then, in this process and in this order:

1. baseline: a plain client-side copy of every payload and manifest through the same
   target (``open`` to a temporary file, ``put`` under another key, as retire must move the
   bytes through this host too), the copies deleted again;
2. ``python -m include.backup keys rotate`` then ``keys retire k1`` (the CLI's handlers, in
   this process): every payload decrypted and re-encrypted under the new key, every manifest
   re-signed, the index rebuilt, then the check that no manifest needs k1 and its deletion;
3. the baseline again (the figure is the ratio to the mean of both copies).

Prints one line per measurement and a JSON summary (wall seconds, this process's CPU
seconds, MiB/s, retire / copy ratio). Every backup is restored-checked after the retire by
decrypting its payload to the end with the new ring alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchlib import start_moto

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUCKET = "bench-keys"
CONN = "bench_s3"
SOURCE = "docs"




def setup(work: Path, url: str) -> Path:
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=BUCKET)  # fmt: skip
    os.environ[f"AIRFLOW_CONN_{CONN.upper()}"] = json.dumps({
        "conn_type": "aws", "login": "x", "password": "x",
        "extra": {"endpoint_url": url, "region_name": "us-east-1"},
    })  # fmt: skip
    config = work / "backup_config.yaml"
    config.write_text(textwrap.dedent(f"""
        staging_dir: {work}/staging
        targets:
          s3: {{type: s3, conn_id: {CONN}, bucket: {BUCKET}, prefix: bench/}}
        sources:
          {SOURCE}: {{type: files, paths: ["{work}/data"]}}
        schedules:
          - {{name: docs_full, source: {SOURCE}, type: FULL, cron: "@daily", targets: [s3]}}
    """))  # fmt: skip
    os.environ["BACKUP_CONFIG"] = str(config)
    return config


def make_backups(target: Any, ring: Any, count: int, each: int, work: Path) -> list[str]:
    """``count`` backups of ``each`` random bytes, as the backup steps would leave them."""
    from include.backup.catalog import index
    from include.backup.catalog.catalog import object_key
    from include.backup.catalog.manifest import EncryptionInfo, Manifest, StoredObject
    from include.backup.catalog.signing import sign
    from include.backup.pipeline.crypto import encrypt_stream

    ids = []
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(count):
        backup_id = f"docs_full-{(start + timedelta(days=i)):%Y%m%dT%H%M%S}-{i:06x}"
        m = Manifest(backup_id=backup_id, schedule="docs_full", source=SOURCE, source_type="files",
                     backup_type="FULL", started_at=start + timedelta(days=i),
                     finished_at=start + timedelta(days=i, minutes=5), payload_format="tar",
                     compression="zstd", raw_size=each, compressed_size=each)  # fmt: skip
        path = work / "payload.tmp"
        with open(path, "wb") as out:
            key_id, kek = ring.active()
            enc = encrypt_stream(_Random(each), out, kek, key_id, context=m.payload_context())
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        m.encryption = EncryptionInfo(
            key_id=enc.key_id, wrapped_key=enc.wrapped_key, chunk_size=enc.chunk_size
        )
        m.objects = [StoredObject(name="payload", size=enc.ciphertext_size, sha256=digest.hexdigest())]
        m.stored_size = enc.ciphertext_size
        sign(m, key_id, kek)
        target.put(object_key(m), path)
        index.publish(target, m, ring)
        ids.append(backup_id)
        path.unlink()
    return ids


class _Random:
    """``size`` random bytes as a readable stream (incompressible, like encrypted data)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def plain_copy(target: Any, ids: list[str], work: Path) -> dict[str, float]:
    """Every payload and manifest read to a temporary file and put under another key (then
    the copies deleted, outside the timing)."""
    keys = [f"{SOURCE}/{i}/{name}" for i in ids for name in ("payload", "manifest.json")]
    wall, cpu = time.perf_counter(), time.process_time()
    moved = 0
    for key in keys:
        with tempfile.NamedTemporaryFile(dir=work) as tmp:
            with contextlib.closing(target.open(key)) as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.flush()
            moved += target.put(f"copy/{key}", Path(tmp.name)).size
    result = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "bytes": moved}
    for key in keys:
        target.delete(f"copy/{key}")
    return result


def retire(config: Path, keyfile: Path) -> dict[str, float]:
    from include.backup import cli

    assert (
        cli.main(["keys", "rotate", "--key-id", "k2", "--config", str(config), "--key-file", str(keyfile)])
        == 0
    )
    wall, cpu = time.perf_counter(), time.process_time()
    code = cli.main(["keys", "retire", "k1", "--config", str(config), "--key-file", str(keyfile)])
    result = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    if code != 0:
        raise SystemExit(f"keys retire failed (exit {code})")
    return result


def check_all(target: Any, ids: list[str], keyfile: Path) -> None:
    from include.backup.catalog.catalog import read_manifest
    from include.backup.catalog.signing import authenticate
    from include.backup.keys import KeyRing
    from include.backup.pipeline.crypto import DecryptingReader

    ring = KeyRing.from_file(keyfile)
    assert ring.key_ids == ["k2"], ring.key_ids
    for backup_id in ids:
        m = read_manifest(target, SOURCE, backup_id)
        authenticate(m, ring, source=SOURCE, backup_id=backup_id)
        with contextlib.closing(target.open(f"{SOURCE}/{backup_id}/payload")) as src:
            reader = DecryptingReader(src, ring, context=m.payload_context())
            while reader.read(1 << 20):
                pass
            assert reader.finished and m.encryption is not None and m.encryption.key_id == "k2"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--each-mib", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="only the JSON summary")
    args = parser.parse_args()
    count = max(1, args.total_mib // args.each_mib)
    each = args.each_mib << 20
    work = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    proc, url = start_moto(work)
    try:
        config = setup(work, url)
        from include.backup.config.loader import load_config
        from include.backup.keys import KeyRing
        from include.backup.targets import build_target

        keyfile = work / "keys.json"
        ring = KeyRing.generate(keyfile, "k1")
        cfg = load_config(config).config
        target = build_target("s3", cfg.targets["s3"])
        t0 = time.perf_counter()
        ids = make_backups(target, ring, count, each, work)
        made_s = time.perf_counter() - t0
        copy1 = plain_copy(target, ids, work)
        rewrap = retire(config, keyfile)
        copy2 = plain_copy(target, ids, work)
        check_all(target, ids, keyfile)
        mib = count * each / (1 << 20)
        base = (copy1["wall_s"] + copy2["wall_s"]) / 2
        summary = {
            "backups": count, "each_mib": args.each_mib, "total_mib": mib, "made_s": round(made_s, 2),
            "copy_s": [round(copy1["wall_s"], 2), round(copy2["wall_s"], 2)],
            "copy_cpu_s": [round(copy1["cpu_s"], 2), round(copy2["cpu_s"], 2)],
            "retire_s": round(rewrap["wall_s"], 2), "retire_cpu_s": round(rewrap["cpu_s"], 2),
            "copy_mib_s": round(mib / base, 1), "retire_mib_s": round(mib / rewrap["wall_s"], 1),
            "ratio_retire_to_copy": round(rewrap["wall_s"] / base, 2),
        }  # fmt: skip
        if not args.json:
            print(
                f"{count} backups x {args.each_mib} MiB at moto S3 (made in {made_s:.1f} s)", file=sys.stderr
            )
            print(f"plain copy: {copy1['wall_s']:.1f} s, {copy2['wall_s']:.1f} s", file=sys.stderr)
            print(
                f"keys retire: {rewrap['wall_s']:.1f} s (ratio {summary['ratio_retire_to_copy']})",
                file=sys.stderr,
            )
        print(json.dumps(summary, indent=1))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
