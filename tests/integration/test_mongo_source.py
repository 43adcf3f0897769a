"""The MongoDB source against a real wire-protocol server (SecantusDB, see mongo_service).

FULL and point-in-time recovery go through the real pipeline (tasks.run_dump … run_verify,
restore_backup) with local targets; the others drive the source directly."""

from __future__ import annotations

import io
import tarfile
import textwrap
import time
import uuid
from datetime import UTC, datetime

import pytest
from bson import Binary, Decimal128, Int64, ObjectId

from include.backup.catalog.catalog import list_backups
from include.backup.catalog.manifest import Manifest, utcnow
from include.backup.config.loader import load_config
from include.backup.config.schema import MongoSource as MongoSourceConfig
from include.backup.dr.restore import restore_backup
from include.backup.errors import IntegrityError, RestoreRefused, SourceError
from include.backup.keys import KeyRing
from include.backup.sources import build_source
from include.backup.sources.mongo import MongoSource, continuity
from include.backup.targets import build_target
from include.backup.testing import run_backup
from tests.integration.mongo_service import MONGO_CONN_ID

pytestmark = pytest.mark.integration


# --- helpers ---------------------------------------------------------------------------


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(mongo_server):
    c = mongo_server.client()
    yield c
    c.close()


@pytest.fixture
def dbname(client):
    name = _name("src")
    yield name
    client.drop_database(name)


def source(db: str, collections: list[str] | None = None) -> MongoSource:
    cfg = MongoSourceConfig(type="mongo", conn_id=MONGO_CONN_ID, database=db, collections=collections or [])
    src = build_source("events_mongo", cfg)
    assert isinstance(src, MongoSource)
    return src


def dump(src: MongoSource, kind: str, parent: Manifest | None = None) -> tuple[Manifest, bytes]:
    buf = io.BytesIO()
    r = src.dump(kind, buf, parent)
    m = Manifest(
        backup_id=_name(kind.lower()), schedule="s", source=src.name, source_type="mongo",
        backup_type=r.backup_type, parent_id=r.parent_id, started_at=utcnow(),
        payload_format=r.payload_format, position=r.position, stats=r.stats,
        source_state=r.source_state,
    )
    return m, buf.getvalue()


def restore(src: MongoSource, chain: list[tuple[Manifest, bytes]], into: str, **kw):
    return src.restore([(m, io.BytesIO(b)) for m, b in chain], into, **kw)


def snapshot(db) -> dict[str, list[dict]]:
    return {n: sorted(db[n].find(), key=lambda d: str(d["_id"])) for n in db.list_collection_names()
            if not n.startswith("system.")}


def index_specs(coll) -> list[dict]:
    return sorted(
        ({k: v for k, v in ix.items() if k != "ns"} for ix in coll.list_indexes()), key=lambda i: i["name"]
    )


def options(db) -> dict[str, dict]:
    return {i["name"]: i.get("options", {}) for i in db.list_collections()}


def sample_data(db) -> None:
    db.create_collection("users", validator={"$jsonSchema": {"bsonType": "object", "required": ["email"]}})
    db.create_collection("capped_log", capped=True, size=1 << 20, max=1000)
    db.users.insert_many(
        [
            {
                "email": f"u{i}@example.com",
                "name": "Zoë Ångström 日本語 ✓",
                "age": i,
                "big": Int64(i),
                "balance": Decimal128("12345.6789"),
                "joined": datetime(2024, 1, 2, 3, 4, 5, 123000),
                "avatar": Binary(b"\x00\xff\x10" * 10),
                "blob": Binary(b"\x01" * 16, 4),
                "ref": ObjectId(),
                "address": {"city": "Zürich", "geo": {"lat": 47.37, "lng": 8.54}, "tags": ["a", "b"]},
                "nested": [{"k": i, "v": [1, 2, {"deep": None}]}],
            }
            for i in range(300)
        ]
    )
    db.users.create_index([("email", 1)], unique=True, name="email_unique")
    db.users.create_index(
        [("age", -1), ("name", 1)], name="age_name", partialFilterExpression={"age": {"$gt": 10}}
    )
    db.events.insert_many(
        [{"_id": i, "title": f"event {i}", "when": datetime(2025, 6, 1)} for i in range(250)]
    )
    db.events.create_index("title", name="title_sparse", sparse=True)
    db.capped_log.insert_many([{"line": i} for i in range(20)])


# --- the pipeline ------------------------------------------------------------------------


@pytest.fixture
def pipeline(tmp_path, monkeypatch, dbname):
    config = tmp_path / "backup_config.yaml"
    config.write_text(textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
        sources:
          events_mongo: {{type: mongo, conn_id: {MONGO_CONN_ID}, database: {dbname}}}
        schedules:
          - {{name: mongo_full, source: events_mongo, type: FULL, cron: "@daily", targets: [disk1]}}
          - {{name: mongo_inc, source: events_mongo, type: INCREMENTAL, cron: "@hourly", targets: [disk1]}}
          - {{name: mongo_schema, source: events_mongo, type: SCHEMA, cron: "@weekly", targets: [disk1]}}
    """))
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return tmp_path


# --- tests -------------------------------------------------------------------------------


def test_full_round_trip_through_the_pipeline(pipeline, client, dbname):
    db = client[dbname]
    sample_data(db)
    meta = run_backup("mongo_full", run_id="r1", deep=True)
    config = load_config().config
    (m,) = list_backups(build_target("disk1", config.targets["disk1"]), "events_mongo")
    assert m.backup_type == "FULL" and m.payload_format == "mongodump-tar"
    assert m.stats["collections"] == {"users": 300, "events": 250, "capped_log": 20}
    assert set(m.position) >= {"oplog_start", "oplog_end", "start_time", "end_time"}

    into = _name("restored")
    try:
        keys = KeyRing.from_file(pipeline / "keys.json")
        result = restore_backup(config, meta["backup_id"], into, keys=keys)
        assert result.stats["collections"] == {"users": 300, "events": 250, "capped_log": 20}
        out = client[into]
        assert snapshot(out) == snapshot(db)
        for name in ("users", "events", "capped_log"):
            assert index_specs(out[name]) == index_specs(db[name])
        assert options(out) == options(db)
        doc = out.users.find_one({"age": 7})
        assert doc["name"] == "Zoë Ångström 日本語 ✓" and isinstance(doc["big"], Int64)
        assert doc["balance"] == Decimal128("12345.6789") and doc["blob"].subtype == 4
        # the validator came back too
        with pytest.raises(Exception, match="(?i)valid"):
            out.users.insert_one({"no_email": 1})
    finally:
        client.drop_database(into)


def test_payload_is_in_mongodump_layout(client, dbname):
    sample_data(client[dbname])
    m, payload = dump(source(dbname), "FULL")
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        names = tar.getnames()
        meta = tar.extractfile(f"{dbname}/users.metadata.json").read()
    assert f"{dbname}/users.bson" in names and "oplog.bson" in names
    assert names.index(f"{dbname}/users.metadata.json") < names.index(f"{dbname}/users.bson")
    import json

    doc = json.loads(meta)
    assert doc["collectionName"] == "users" and doc["type"] == "collection"
    email = next(i for i in doc["indexes"] if i["name"] == "email_unique")
    assert email["unique"] is True and email["key"] == {"email": {"$numberInt": "1"}}  # canonical
    assert "validator" in doc["options"] and len(doc["uuid"]) == 32


def test_schema_backup_restores_collections_and_indexes_only(pipeline, client, dbname):
    db = client[dbname]
    sample_data(db)
    meta = run_backup("mongo_schema", run_id="s1", deep=True)
    config = load_config().config
    into = _name("schema")
    try:
        keys = KeyRing.from_file(pipeline / "keys.json")
        result = restore_backup(config, meta["backup_id"], into, keys=keys)
        out = client[into]
        assert result.stats["collections"] == {"users": 0, "events": 0, "capped_log": 0}
        assert options(out) == options(db)
        assert index_specs(out.users) == index_specs(db.users)
    finally:
        client.drop_database(into)


def test_partial_restore_and_refusal_of_a_non_empty_target(client, dbname):
    db = client[dbname]
    sample_data(db)
    src = source(dbname)
    full = dump(src, "FULL")
    into = _name("partial")
    try:
        stats = restore(src, [full], into, only=["events"])
        assert stats["collections"] == {"events": 250}
        assert client[into].list_collection_names() == ["events"]
        assert index_specs(client[into].events) == index_specs(db.events)
        # the target now holds "events": a full restore is refused, nothing touched
        client[into].events.insert_one({"_id": "mine"})
        with pytest.raises(RestoreRefused, match="not empty"):
            restore(src, [full], into)
        with pytest.raises(RestoreRefused, match="events"):
            restore(src, [full], into, only=["events"])
        assert client[into].events.count_documents({}) == 251
        # other collections can still be added; unknown ones are refused up front
        restore(src, [full], into, only=["users"])
        with pytest.raises(RestoreRefused, match="nope"):
            restore(src, [full], into, only=["nope"])
        # overwrite drops and replaces
        stats = restore(src, [full], into, overwrite=True)
        assert snapshot(client[into]) == snapshot(db)
    finally:
        client.drop_database(into)


def _log_chain_setup(client, dbname):
    db = client[dbname]
    db.items.insert_many([{"_id": i, "v": i, "arr": [1, 2, 3]} for i in range(100)])
    src = source(dbname)
    full = dump(src, "FULL")
    db.items.insert_many([{"_id": 100 + i, "v": i} for i in range(50)])
    db.items.update_many({"_id": {"$lt": 10}}, {"$set": {"v": -1, "sub.x": "é"}, "$unset": {"arr": ""}})
    db.items.update_one({"_id": 20}, {"$push": {"arr": 4}, "$inc": {"v": 1000}})
    db.items.replace_one({"_id": 21}, {"replaced": True})
    db.items.delete_many({"_id": {"$gte": 90, "$lt": 100}})
    log1 = dump(src, "TRANSACTION_LOG", full[0])
    db.create_collection("later")
    db.later.insert_many([{"n": i} for i in range(5)])
    db.later.create_index("n", name="n_idx")
    db.items.delete_one({"_id": 0})
    log2 = dump(src, "TRANSACTION_LOG", log1[0])
    return src, [full, log1, log2]


def test_transaction_log_chain_restores_to_the_latest(client, dbname):
    src, chain = _log_chain_setup(client, dbname)
    full, log1, log2 = chain
    assert log1[0].parent_id == full[0].backup_id and log2[0].parent_id == log1[0].backup_id
    assert continuity(full[0], log1[0]) is None and continuity(log1[0], log2[0]) is None
    assert log1[0].stats["oplog_entries"] > 0
    into = _name("latest")
    try:
        stats = restore(src, chain, into)
        assert snapshot(client[into]) == snapshot(client[dbname])
        assert stats["collections"] == {"items": 139, "later": 5}
        assert "n_idx" in [i["name"] for i in client[into].later.list_indexes()]
        # partial: only one collection, the oplog replay filtered too
        only = _name("only")
        try:
            stats = restore(src, chain, only, only=["later"])
            assert client[only].list_collection_names() == ["later"]
            assert stats["collections"] == {"later": 5}
        finally:
            client.drop_database(only)
    finally:
        client.drop_database(into)


def test_incremental_without_parent_is_a_full_and_log_without_parent_refused(client, dbname):
    client[dbname].a.insert_one({"x": 1})
    src = source(dbname)
    m, _ = dump(src, "INCREMENTAL")
    assert m.backup_type == "FULL"
    with pytest.raises(SourceError, match="FULL"):
        src.dump("TRANSACTION_LOG", io.BytesIO(), None)


def test_broken_chain_is_reported(client, dbname):
    src, (full, log1, log2) = _log_chain_setup(client, dbname)
    into = _name("broken")
    try:
        # the middle oplog slice is missing
        with pytest.raises(IntegrityError, match="broken"):
            restore(src, [full, log2], into)
        # a slice that does not start where the previous ended
        bad = log2[0].model_copy(update={"parent_id": log1[0].backup_id,
                                         "position": {**log2[0].position, "oplog_start": {"t": 1, "i": 1}}})
        with pytest.raises(IntegrityError, match="in no backup"):
            restore(src, [full, log1, (bad, log2[1])], into)
        assert into not in client.list_database_names()
    finally:
        client.drop_database(into)


def test_rolled_over_oplog_is_a_clear_error(client, dbname):
    client[dbname].a.insert_one({"x": 1})
    src = source(dbname)
    full, _ = dump(src, "FULL")
    old = full.model_copy(update={"position": {**full.position, "oplog_end": {"t": 1000, "i": 1}}})
    with pytest.raises(SourceError, match="oplog rolled over.*take a FULL"):
        src.dump("TRANSACTION_LOG", io.BytesIO(), old)


def test_point_in_time_recovery_through_the_pipeline(pipeline, client, dbname):
    db = client[dbname]
    db.events.insert_many([{"_id": i, "title": f"e{i}"} for i in range(100)])
    db.guests.insert_many([{"_id": i, "name": f"g{i}"} for i in range(30)])
    run_backup("mongo_full", run_id="f1", deep=True)
    db.events.insert_many([{"_id": 100 + i, "title": "before T"} for i in range(20)])
    db.events.update_one({"_id": 5}, {"$set": {"title": "edited before T"}})
    run_backup("mongo_inc", run_id="i1", deep=True)
    db.events.insert_many([{"_id": 200 + i, "title": "before T too"} for i in range(5)])
    time.sleep(0.05)
    expected = snapshot(db)
    until = datetime.now(UTC)
    time.sleep(0.05)
    db.events.insert_many([{"_id": 300 + i, "title": "after T"} for i in range(20)])
    db.events.delete_many({"_id": {"$lt": 50}})
    db.drop_collection("guests")
    run_backup("mongo_inc", run_id="i2", deep=True)
    assert "guests" not in db.list_collection_names()

    config = load_config().config
    keys = KeyRing.from_file(pipeline / "keys.json")
    into = _name("pitr")
    try:
        result = restore_backup(config, None, into, keys=keys, source_name="events_mongo", until=until)
        assert len(result.chain) == 3
        assert snapshot(client[into]) == expected
        assert result.stats["oplog_skipped_after_until"] >= 1
        # to the latest: the state after the drop
        latest = _name("latest")
        try:
            restore_backup(config, None, latest, keys=keys, source_name="events_mongo")
            assert snapshot(client[latest]) == snapshot(db)
        finally:
            client.drop_database(latest)
        # before the FULL: refused, naming the window
        with pytest.raises(RestoreRefused, match="reachable window"):
            restore_backup(config, None, _name("x"), keys=keys, source_name="events_mongo",
                           until=datetime(2000, 1, 1, tzinfo=UTC))
    finally:
        client.drop_database(into)


def test_mongod_update_diff_forms_become_set_unset():
    """mongod's $v 2 diffs (not produced by SecantusDB) map onto $set/$unset/$push."""
    from include.backup.sources.mongo.replay import apply_update as _apply_update

    calls = []

    class Coll:
        def update_one(self, flt, update, **kw):
            calls.append(("update", flt, update))

        def replace_one(self, flt, doc, **kw):
            calls.append(("replace", flt, doc))

    diff = {"$v": 2, "diff": {"u": {"a": 1}, "i": {"b": 2}, "d": {"c": False},
                              "sx": {"u": {"y": 3}, "d": {"z": False}},
                              "sarr": {"a": True, "l": 2, "u1": "new", "s0": {"u": {"k": 9}}}}}
    _apply_update(Coll(), 7, diff)
    assert calls[0] == ("update", {"_id": 7}, {"$push": {"arr": {"$each": [], "$slice": 2}}})
    assert calls[1] == ("update", {"_id": 7}, {
        "$set": {"a": 1, "b": 2, "x.y": 3, "arr.1": "new", "arr.0.k": 9},
        "$unset": {"c": "", "x.z": ""},
    })
    calls.clear()
    _apply_update(Coll(), 7, {"$v": 1, "$set": {"a": 1}})
    _apply_update(Coll(), 7, {"a": 1})
    assert calls == [("update", {"_id": 7}, {"$set": {"a": 1}}), ("replace", {"_id": 7}, {"a": 1, "_id": 7})]
