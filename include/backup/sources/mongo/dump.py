"""Dumps of the mongo source: FULL and SCHEMA (the collections in mongodump's layout) and
TRANSACTION_LOG / INCREMENTAL (a slice of the oplog after the parent's ``oplog_end``).

A FULL is not a snapshot: documents are read while writes go on. The oplog position is
read before and after, and the entries between are stored in ``oplog.bson`` and replayed
on restore, which makes the restored data consistent at ``end_time``. When a log's parent
position is no longer in the oplog (it rolled over), the dump fails.
"""

from __future__ import annotations

import logging
import re
import tarfile
from datetime import datetime
from typing import Any, BinaryIO

from include.backup import faults
from include.backup.catalog.manifest import Manifest
from include.backup.config import schema
from include.backup.errors import SourceError
from include.backup.sources.base import DumpResult
from include.backup.sources.mongo.client import (
    MongoConn,
    edge_ts,
    oplog,
    redact,
    server_time,
    source_database,
    source_error,
)
from include.backup.sources.mongo.layout import (
    BATCH_DOCS,
    LOG_TYPES,
    OPLOG_NAME,
    PAYLOAD_FORMAT,
    SOURCE_TYPE,
    add_bytes,
    add_spool,
    command_collection,
    count_docs,
    metadata_json,
    spool_file,
)
from include.backup.sources.mongo.positions import iso, pos_text, pos_to_ts, ts_to_pos

log = logging.getLogger(__name__)


class MongoDump:
    """One dump of the database of mongo source ``name``."""

    def __init__(self, name: str, cfg: schema.MongoSource) -> None:
        self.name = name
        self.cfg = cfg

    def _err(self, text: str) -> SourceError:
        return source_error(self.name, text)

    def run(self, backup_type: str, out: BinaryIO, parent: Manifest | None) -> DumpResult:
        from pymongo.errors import (
            PyMongoError,  # lazy: pymongo: loaded only when a backup runs
        )

        kind = str(getattr(backup_type, "value", backup_type)).upper()
        if kind not in ("FULL", "SCHEMA", *LOG_TYPES):
            raise self._err(f"unknown backup type {kind}; use FULL, SCHEMA, TRANSACTION_LOG or INCREMENTAL")
        if kind == "INCREMENTAL" and parent is None:
            log.warning("no parent backup for the incremental of mongo source %s: taking a FULL", self.name)
            kind = "FULL"
        if kind == "TRANSACTION_LOG" and parent is None:
            raise self._err(
                "a TRANSACTION_LOG backup continues the oplog from the previous backup of this "
                "source, and there is none at the schedule's targets; run a FULL backup of "
                "this source first (same targets), then the log schedule"
            )
        conn = MongoConn(self.cfg.conn_id, self.name)
        try:
            db_name = source_database(self.name, self.cfg, conn)
            if kind in LOG_TYPES:
                assert parent is not None
                return self._dump_log(conn.client, db_name, kind, out, parent)
            return self._dump_full(conn.client, db_name, out, schema_only=(kind == "SCHEMA"))
        except PyMongoError as exc:
            raise self._err(f"dump of database failed: {redact(str(exc))}") from None
        finally:
            conn.close()

    # -- FULL and SCHEMA ---------------------------------------------------------------

    def _collection_infos(self, db: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """listCollections of the database (configured ones only), system.* skipped,
        collections before views; and the configured names that do not exist."""
        infos = [
            i for i in db.list_collections() if not i["name"].startswith("system.")
        ]
        missing: list[str] = []
        if self.cfg.collections:
            by_name = {i["name"]: i for i in infos}
            missing = [c for c in self.cfg.collections if c not in by_name]
            infos = [by_name[c] for c in self.cfg.collections if c in by_name]
            for c in missing:
                log.warning("mongo source %s: configured collection %s does not exist", self.name, c)
        infos.sort(key=lambda i: (i.get("type", "collection") == "view", i["name"]))
        return infos, missing

    def _dump_full(self, client: Any, db_name: str, out: BinaryIO, *, schema_only: bool) -> DumpResult:
        from pymongo.errors import OperationFailure  # lazy: pymongo: loaded only when a backup runs

        db = client[db_name]
        start_time = server_time(client)
        start = None if schema_only else edge_ts(client, -1, self.name)
        infos, missing = self._collection_infos(db)
        stats: dict[str, Any] = {"database": db_name, "collections": {}, "bytes": {}, "views": []}
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for info in infos:
                try:
                    self._dump_collection(tar, db, db_name, info, stats, schema_only=schema_only)
                except OperationFailure as exc:
                    # Read before anything of it is written: the tar stays whole without it.
                    self._gone_during_dump(client, db_name, info["name"], start, exc, stats)
            position: dict[str, Any] = {"start_time": iso(start_time)}
            if not schema_only:
                end_time = server_time(client)
                end = edge_ts(client, -1, self.name)
                with spool_file() as spool:
                    stats.update(self._write_oplog(client, db_name, start, end, spool))
                    add_spool(tar, OPLOG_NAME, spool)
                position.update(
                    oplog_start=ts_to_pos(start), oplog_end=ts_to_pos(end), end_time=iso(end_time)
                )
            else:
                position["end_time"] = iso(start_time)
        if missing:
            stats["missing_collections"] = missing
        stats["documents"] = sum(stats["collections"].values())
        return DumpResult(
            backup_type="SCHEMA" if schema_only else "FULL",
            payload_format=PAYLOAD_FORMAT,
            position=position,
            stats=stats,
            source_state={"database": db_name, "collections": list(self.cfg.collections)},
        )

    def _dump_collection(
        self, tar: tarfile.TarFile, db: Any, db_name: str, info: dict[str, Any], stats: dict[str, Any],
        *, schema_only: bool,
    ) -> None:
        """One collection (or view): its metadata and documents, read whole (indexes, then
        the documents into a spool file) before any of it goes into the tar."""
        from bson.codec_options import (
            CodecOptions,  # lazy: pymongo's bson: loaded only when a backup runs
        )
        from bson.raw_bson import RawBSONDocument  # lazy: pymongo's bson: loaded when MongoDB is used

        name = info["name"]
        is_view = info.get("type") == "view"
        indexes = [] if is_view else list(db[name].list_indexes())
        if is_view or schema_only:
            add_bytes(tar, f"{db_name}/{name}.metadata.json", metadata_json(db_name, info, indexes))
            if is_view:
                stats["views"].append(name)
            else:
                stats["collections"][name] = 0
            return
        coll = db.get_collection(name, codec_options=CodecOptions(document_class=RawBSONDocument))
        count = 0
        with spool_file() as spool:
            for batch in coll.find_raw_batches({}, batch_size=BATCH_DOCS):
                spool.write(batch)
                count += count_docs(batch)
                faults.hit("dump.mid-read")  # a test hook: a collection partly read
            add_bytes(tar, f"{db_name}/{name}.metadata.json", metadata_json(db_name, info, indexes))
            stats["bytes"][name] = add_spool(tar, f"{db_name}/{name}.bson", spool)
        stats["collections"][name] = count

    def _gone_during_dump(
        self, client: Any, db_name: str, name: str, start: Any, exc: Exception, stats: dict[str, Any]
    ) -> None:
        """A collection listed but failing while read. Dropped since the dump started: the
        backup stays consistent without it, because the drop is in the dump's oplog slice
        and restore replays it (a collection created again after the drop comes back from
        the slice too). Anything else (renamed, cursor timed out) fails the dump."""
        why = getattr(exc, "details", None) or {}
        code = why.get("codeName") or type(exc).__name__
        if self._dropped_since(client, db_name, name, start):
            log.warning(
                "mongo source %s: collection %s was dropped while the dump read it (%s); the "
                "backup leaves it out and restore replays the drop from the oplog",
                self.name, name, code,
            )
            stats.setdefault("dropped_during_dump", []).append(name)
            return
        raise self._err(
            f"collection {name} of database {db_name} changed under the dump ({code}: "
            f"{redact(str(why.get('errmsg') or exc))[:200]}) and the oplog shows no drop of it "
            "(renamed, or its cursor was ended); the backup would not be consistent, so none "
            "was made. Run the backup again; rename collections outside the backup window"
        )

    def _dropped_since(self, client: Any, db_name: str, name: str, start: Any) -> bool:
        """Whether the oplog holds a drop of ``name`` (or of its database) after ``start``;
        for a SCHEMA dump (no position), whether the collection is gone."""
        if start is None:
            return name not in client[db_name].list_collection_names()
        query = {
            "ts": {"$gt": start},
            "op": "c",
            "ns": f"{db_name}.$cmd",
            "$or": [{"o.drop": name}, {"o.dropDatabase": {"$exists": True}}],
        }
        return oplog(client).find_one(query, {"ts": 1}) is not None

    # -- oplog slices ------------------------------------------------------------------

    def _wanted(self, db_name: str, ns: str) -> bool:
        prefix = db_name + "."
        if not ns.startswith(prefix):
            return False
        coll = ns[len(prefix):]
        if coll == "$cmd" or not self.cfg.collections:
            return True
        return coll in self.cfg.collections

    def _entry_wanted(self, db_name: str, entry: Any) -> bool:
        ns = entry.get("ns", "")
        op = entry.get("op")
        if op == "n":
            return False
        if op == "c":
            o = entry.get("o") or {}
            if "applyOps" in o:
                return any(self._entry_wanted(db_name, sub) for sub in o["applyOps"])
            if not ns.startswith(db_name + "."):
                return False
            if self.cfg.collections:
                return command_collection(o) in (*self.cfg.collections, None)
            return True
        return self._wanted(db_name, ns)

    def _write_oplog(
        self, client: Any, db_name: str, after: Any, upto: Any, spool: BinaryIO
    ) -> dict[str, Any]:
        """Entries of the database with after < ts <= upto into ``spool``; their counts."""
        query = {
            "ts": {"$gt": after, "$lte": upto},
            "$or": [
                {"ns": {"$regex": "^" + re.escape(db_name) + r"\."}},
                {"op": "c", "o.applyOps": {"$exists": True}},
            ],
        }
        counts: dict[str, int] = {}
        collections: dict[str, int] = {}
        total = 0
        first_wall = last_wall = None
        for entry in oplog(client, raw=True).find(query, batch_size=BATCH_DOCS):
            if not self._entry_wanted(db_name, entry):
                continue
            spool.write(entry.raw)
            total += 1
            op = entry.get("op", "?")
            counts[op] = counts.get(op, 0) + 1
            ns = entry.get("ns", "")
            if op != "c" and ns.startswith(db_name + "."):
                coll = ns[len(db_name) + 1:]
                collections[coll] = collections.get(coll, 0) + 1
            wall = entry.get("wall")
            if isinstance(wall, datetime):
                first_wall = first_wall or wall
                last_wall = wall
        stats: dict[str, Any] = {
            "oplog_entries": total,
            "oplog_ops": counts,
            "oplog_collections": collections,
        }
        if first_wall is not None:
            stats["oplog_first_wall"] = iso(first_wall)
            stats["oplog_last_wall"] = iso(last_wall)  # type: ignore[arg-type]
        return stats

    def _dump_log(self, client: Any, db_name: str, kind: str, out: BinaryIO, parent: Manifest) -> DumpResult:
        if parent.source_type != SOURCE_TYPE:
            raise self._err(
                f"parent backup {parent.backup_id} is a {parent.source_type} backup, not a "
                "mongo one; the catalog passed the wrong parent"
            )
        if parent.backup_type == "SCHEMA":
            raise self._err(
                f"the newest backup, {parent.backup_id}, is a SCHEMA backup, which holds no "
                f"data to continue a {kind} from; take a FULL backup of this source"
            )
        parent_db = parent.source_state.get("database")
        if parent_db and parent_db != db_name:
            raise self._err(
                f"parent backup {parent.backup_id} is of database {parent_db!r}, this source "
                f"now backs up {db_name!r}; take a FULL backup"
            )
        after = pos_to_ts(parent.position.get("oplog_end"))
        if after is None:
            raise self._err(
                f"parent backup {parent.backup_id} records no oplog position; take a FULL backup"
            )
        self._check_not_rolled_over(client, after, parent)
        start_time = parent.position.get("end_time")
        end_time = server_time(client)
        end = edge_ts(client, -1, self.name)
        with (
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            spool_file() as spool,
        ):
            stats = self._write_oplog(client, db_name, after, end, spool)
            # Pruned while we read? Then entries may be missing from the slice.
            self._check_not_rolled_over(client, after, parent)
            add_spool(tar, OPLOG_NAME, spool)
        stats["database"] = db_name
        stats["collections"] = dict(stats.get("oplog_collections", {}))
        return DumpResult(
            backup_type=kind,
            payload_format=PAYLOAD_FORMAT,
            parent_id=parent.backup_id,
            position={
                "oplog_start": ts_to_pos(after),
                "oplog_end": ts_to_pos(end),
                "start_time": start_time or iso(parent.finished_at or parent.started_at),
                "end_time": iso(end_time),
            },
            stats=stats,
            source_state={"database": db_name, "collections": list(self.cfg.collections)},
        )

    def _check_not_rolled_over(self, client: Any, after: Any, parent: Manifest) -> None:
        oldest = edge_ts(client, 1, self.name)
        if oldest is not None and oldest <= after:
            return
        if oplog(client).find_one({"ts": after}, {"ts": 1}) is not None:
            return
        lost_to = pos_text(ts_to_pos(oldest)) if oldest is not None else "now"
        raise self._err(
            f"oplog rolled over: entries between {pos_text(ts_to_pos(after))} (end of "
            f"backup {parent.backup_id}) and {lost_to} are lost; take a FULL backup (and "
            "make the oplog larger or run log backups more often)"
        )
