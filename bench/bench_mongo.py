"""MongoDB FULL backup against a plain pymongo read of the same collections (on demand).

    .venv/bin/python bench/bench_mongo.py [--docs 1000000] [--collections 4] [--repeat 3]
                                          [--uri mongodb://HOST:PORT/]

Without --uri, starts a throwaway SecantusDB (the test server; needs the SecantusDB
package) on 127.0.0.1 and loads ``--docs`` documents (about 200 bytes each, mixed types)
spread over ``--collections`` collections of database ``bench``. Then times, in the same
run and alternating:

  (a) baseline: a plain pymongo read of every collection (``for doc in coll.find()``) into
      /dev/null;
  (b) ours: MongoSource.dump(FULL) writing the mongodump-layout tar to /dev/null (the
      source stage of the dump task: raw batches, per-collection spool, tar, oplog slice);
  (c) ours + zstd: the same through the dump task's compressor (for information).

Reports the median of each and the throughput ratio (a)/(b) (target >= 0.8).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import datetime
from pathlib import Path

from include.backup.config.schema import MongoSource as MongoConfig
from include.backup.pipeline.compression import compress_writer
from include.backup.pipeline.hashing import CountingWriter
from include.backup.sources.mongo import MongoSource

ROOT = Path(__file__).resolve().parents[1]

DB = "bench"
CONN_ID = "bench_mongo"


def load(client, docs: int, ncoll: int) -> None:
    from bson import Decimal128, Int64, ObjectId

    db = client[DB]
    client.drop_database(DB)
    per = docs // ncoll
    t = time.perf_counter()
    for c in range(ncoll):
        coll = db[f"c{c}"]
        batch = []
        for i in range(per):
            batch.append({
                "i": i, "big": Int64(i * 7), "name": f"guest {i} Zoë", "email": f"g{i}@example.com",
                "amount": Decimal128(f"{i}.25"), "when": datetime(2025, 1, 1), "ref": ObjectId(),
                "address": {"city": "Zürich", "zip": f"{8000 + i % 100}", "tags": ["a", "b", "c"]},
            })
            if len(batch) == 10_000:
                coll.insert_many(batch, ordered=False)
                batch = []
        if batch:
            coll.insert_many(batch, ordered=False)
        coll.create_index("email", name="email_1")
    print(
        f"loaded {per * ncoll} documents in {ncoll} collections in {time.perf_counter() - t:.1f} s",
        flush=True,
    )


def baseline(client) -> tuple[float, int]:
    db = client[DB]
    t = time.perf_counter()
    n = 0
    with open(os.devnull, "wb") as null:
        for name in sorted(db.list_collection_names()):
            for _doc in db[name].find(batch_size=1000):
                n += 1
            null.write(b"")
    return time.perf_counter() - t, n


def ours(compress: bool) -> tuple[float, int, int]:
    src = MongoSource("bench", MongoConfig(type="mongo", conn_id=CONN_ID, database=DB))
    t = time.perf_counter()
    with open(os.devnull, "wb") as null:
        if compress:
            with compress_writer(null, "zstd", 3) as z:
                counter = CountingWriter(z)
                result = src.dump("FULL", counter, None)
        else:
            counter = CountingWriter(null)
            result = src.dump("FULL", counter, None)
    return time.perf_counter() - t, result.stats["documents"], counter.count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--collections", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--uri", help="an existing server (mongodb://HOST:PORT/); default: start SecantusDB")
    args = ap.parse_args()

    import pymongo

    proc = work = None
    if args.uri:
        uri = args.uri
    else:
        from tests.integration.mongo_service import start_mongo

        server, proc, work = start_mongo(["--cache-size", "2G", "--oplog-max-entries", "1000"])
        uri = server.client_uri()
        print(f"SecantusDB pid {server.pid} on port {server.port}", flush=True)
    host = uri.split("://", 1)[1].split("/", 1)[0]
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = f"mongo://{host}/{DB}"
    try:
        client = pymongo.MongoClient(uri)
        load(client, args.docs, args.collections)
        # Import Airflow and the provider's hook once, outside the timings: in the dump task
        # they are loaded already.
        from airflow.providers.mongo.hooks.mongo import MongoHook

        MongoHook(mongo_conn_id=CONN_ID).get_conn().close()
        base_t, ours_t, z_t = [], [], []
        raw = 0
        for r in range(args.repeat):
            bt, bn = baseline(client)
            ot, on, raw = ours(compress=False)
            zt, _, _ = ours(compress=True)
            assert bn == on, (bn, on)
            base_t.append(bt)
            ours_t.append(ot)
            z_t.append(zt)
            print(
                f"run {r + 1}: baseline {bt:.2f} s, ours {ot:.2f} s, ours+zstd {zt:.2f} s "
                f"({on} docs, {raw / 1e6:.1f} MB)",
                flush=True,
            )
        b, o, z = (statistics.median(x) for x in (base_t, ours_t, z_t))
        n = args.docs // args.collections * args.collections
        print(f"\ndocuments: {n}, payload {raw / 1e6:.1f} MB")
        print(f"baseline plain pymongo read: {b:.2f} s  ({n / b:,.0f} docs/s)")
        print(f"ours (FULL to /dev/null):    {o:.2f} s  ({n / o:,.0f} docs/s, {raw / o / 1e6:.1f} MB/s)")
        print(f"ours + zstd -3:              {z:.2f} s  ({n / z:,.0f} docs/s)")
        print(f"throughput ratio ours/baseline: {b / o:.2f}  (target >= 0.8); with zstd: {b / z:.2f}")
        client.drop_database(DB)
        client.close()
    finally:
        if proc is not None:
            from tests.integration.mongo_service import stop_mongo

            stop_mongo(proc, work)


if __name__ == "__main__":
    main()
