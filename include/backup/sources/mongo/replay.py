"""Applying a mongo chain to a database: the collections of a FULL (created, filled,
indexed, views last) and the replay of oplog entries, up to ``until`` for a point in time.

Point in time: entries whose ``wall`` time (milliseconds; the ts seconds for servers that
do not record it) is after ``until`` are not replayed. Replay is idempotent: inserts are
upserts, and commands that find their work done are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from include.backup.sources.mongo.layout import BATCH_BYTES, BATCH_DOCS, command_collection
from include.backup.sources.mongo.positions import utc

log = logging.getLogger(__name__)


class RestoreState:
    """What a restore has done so far in the (temporary) database ``db``."""

    def __init__(self, db: Any, src_db: str | None, only: set[str] | None, until: datetime | None) -> None:
        self.db = db
        self.src_db = src_db  # the backed-up database: oplog namespaces name it
        self.pending_views: list[tuple[str, dict[str, Any]]] = []
        self.only = only
        self.until = until
        self.touched: set[str] = set()
        self.views: set[str] = set()
        self.pending_indexes: dict[str, list[dict[str, Any]]] = {}
        self.applied = 0
        self.after_until = 0
        self.stopped = False

    def wanted(self, coll: str | None) -> bool:
        return coll is not None and (self.only is None or coll in self.only)

    # -- data ------------------------------------------------------------------------

    def create(self, name: str, meta: dict[str, Any]) -> None:
        if not self.wanted(name):
            return
        options = dict(meta.get("options") or {})
        self.touched.add(name)
        if meta.get("type") == "view":
            self.views.add(name)
            self.pending_views.append((name, options))
            return
        if name not in self.db.list_collection_names(filter={"name": name}):
            self.db.command({"create": name, **options})
        indexes = [ix for ix in meta.get("indexes") or [] if ix.get("name") != "_id_"]
        self.pending_indexes[name] = [{k: v for k, v in ix.items() if k != "ns"} for ix in indexes]

    def insert(self, name: str, docs: Iterator[bytes]) -> None:
        from bson.raw_bson import (
            RawBSONDocument,  # lazy: pymongo's bson: loaded only when a restore runs
        )

        if not self.wanted(name):
            for _ in docs:  # the tar stream must be read past this member anyway
                pass
            return
        self.touched.add(name)
        coll = self.db[name]
        batch: list[RawBSONDocument] = []
        size = 0
        for raw in docs:
            batch.append(RawBSONDocument(raw))
            size += len(raw)
            if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
                coll.insert_many(batch, ordered=False, bypass_document_validation=True)
                batch, size = [], 0
        if batch:
            coll.insert_many(batch, ordered=False, bypass_document_validation=True)

    def finish_data(self) -> None:
        """Indexes after the documents (faster, and what mongorestore does), then views."""
        for name, indexes in self.pending_indexes.items():
            if indexes:
                self.db.command({"createIndexes": name, "indexes": indexes})
        self.pending_indexes = {}
        for name, options in self.pending_views:
            if name not in self.db.list_collection_names(filter={"name": name}):
                self.db.command({"create": name, **options})
        self.pending_views = []

    def finish(self) -> None:
        self.finish_data()

    # -- oplog -----------------------------------------------------------------------

    def _past_until(self, entry: dict[str, Any]) -> bool:
        if self.until is None:
            return False
        wall = entry.get("wall")
        moment = utc(wall) if isinstance(wall, datetime) else datetime.fromtimestamp(entry["ts"].time, UTC)
        return moment > self.until

    def replay(self, entries: Iterator[bytes]) -> None:
        import bson  # lazy: pymongo's bson: loaded only when a restore runs

        for raw in entries:
            if self.stopped:
                continue  # keep reading the stream to its end
            entry = bson.decode(raw)
            if self._past_until(entry):
                self.stopped = True
                self.after_until += 1
                continue
            self.apply(entry)

    def apply(self, entry: dict[str, Any]) -> None:
        op = entry.get("op")
        ns = entry.get("ns", "")
        prefix_db, _, coll = ns.partition(".")
        if op == "n":
            return
        if op == "c":
            o = entry.get("o") or {}
            if "applyOps" in o:  # a transaction: its operations, those of our database
                for sub in o["applyOps"]:
                    self.apply(sub)
                return
            if self.src_db is None or prefix_db == self.src_db:
                self._command(o)
            return
        if self.src_db is not None and prefix_db != self.src_db:
            return
        if not self.wanted(coll):
            return
        self.touched.add(coll)
        c = self.db[coll]
        o = entry.get("o") or {}
        if op == "i":
            c.replace_one({"_id": o["_id"]}, o, upsert=True, bypass_document_validation=True)
        elif op == "u":
            ident = (entry.get("o2") or {}).get("_id", o.get("_id"))
            apply_update(c, ident, o)
        elif op == "d":
            c.delete_one({"_id": o["_id"]})
        else:
            log.warning("oplog replay: ignoring op %r on %s", op, ns)
            return
        self.applied += 1

    def _command(self, o: dict[str, Any]) -> None:
        coll = command_collection(o)
        if coll is None:
            self._database_command(o)
        elif "renameCollection" in o:
            self._rename(coll, o)
        elif self.wanted(coll):
            self._collection_command(coll, o)
            self.applied += 1

    def _database_command(self, o: dict[str, Any]) -> None:
        """A command on the database itself: only dropDatabase is replayed."""
        if "dropDatabase" in o:
            for name in self.db.list_collection_names():
                if not name.startswith("system.") and self.wanted(name):
                    self.db.drop_collection(name)
            self.applied += 1
        else:
            log.warning("oplog replay: ignoring command %s", next(iter(o), "?"))

    def _rename(self, coll: str, o: dict[str, Any]) -> None:
        to = str(o.get("to", "")).partition(".")[2]
        if not (self.wanted(coll) or self.wanted(to)):
            return
        if coll in self.db.list_collection_names(filter={"name": coll}):
            if o.get("dropTarget"):
                self.db.drop_collection(to)
            self.db[coll].rename(to)
        self.touched.add(to)
        self.applied += 1

    def _collection_command(self, coll: str, o: dict[str, Any]) -> None:
        """create / drop / createIndexes / dropIndexes / collMod on a wanted collection."""
        names = set(self.db.list_collection_names())
        if "create" in o:
            if coll not in names:
                options = {k: v for k, v in o.items() if k not in ("create", "idIndex")}
                self.db.command({"create": coll, **options})
            self.touched.add(coll)
        elif "drop" in o:
            if coll in names:
                self.db.drop_collection(coll)
        elif "createIndexes" in o:
            self.db.command({"createIndexes": coll, "indexes": index_specs(o)})
        elif "dropIndexes" in o or "deleteIndexes" in o:
            index = o.get("index", "*")
            try:
                self.db[coll].drop_index(index) if index != "*" else self.db[coll].drop_indexes()
            except Exception as exc:  # noqa: BLE001 - already gone: replay is idempotent
                log.info("oplog replay: dropIndexes on %s: %s", coll, exc)
        elif "collMod" in o:
            try:
                self.db.command({"collMod": coll, **{k: v for k, v in o.items() if k != "collMod"}})
            except Exception as exc:  # noqa: BLE001 - a collMod the server refuses is not fatal
                log.warning("oplog replay: collMod on %s not applied: %s", coll, exc)


def index_specs(o: dict[str, Any]) -> list[dict[str, Any]]:
    """The index specs of a createIndexes oplog command."""
    if "indexes" in o:
        return [{k: v for k, v in ix.items() if k not in ("ns", "entryFormat")} for ix in o["indexes"]]
    # mongod's form: one index per entry, the spec beside the collection name
    return [{k: v for k, v in o.items() if k not in ("createIndexes", "ns")}]


def apply_update(coll: Any, ident: Any, o: dict[str, Any]) -> None:
    """One oplog update: replacement, $set/$unset ($v 1), or a $v 2 diff (mongod's
    u/i/d/s<field> form, or the updatedFields/removedFields form)."""
    if "diff" in o and o.get("$v") == 2:
        sets: dict[str, Any] = {}
        unsets: dict[str, Any] = {}
        truncs: list[tuple[str, int]] = []
        _flatten_diff(o["diff"], "", sets, unsets, truncs)
        for path, size in truncs:
            coll.update_one({"_id": ident}, {"$push": {path: {"$each": [], "$slice": size}}})
        update: dict[str, Any] = {}
        if sets:
            update["$set"] = sets
        if unsets:
            update["$unset"] = unsets
        if update:
            coll.update_one({"_id": ident}, update, bypass_document_validation=True)
        return
    if any(k.startswith("$") for k in o):
        update = {k: v for k, v in o.items() if k != "$v"}
        if update:
            coll.update_one({"_id": ident}, update, bypass_document_validation=True)
        return
    doc = dict(o)
    doc.setdefault("_id", ident)
    coll.replace_one({"_id": ident}, doc, bypass_document_validation=True)


def _flatten_field_lists(
    diff: dict[str, Any],
    prefix: str,
    sets: dict[str, Any],
    unsets: dict[str, Any],
    truncs: list[tuple[str, int]],
) -> None:
    """The updatedFields / removedFields / truncatedArrays form of a $v 2 diff."""
    for k, v in (diff.get("updatedFields") or {}).items():
        sets[prefix + k] = v
    for k in diff.get("removedFields") or []:
        unsets[prefix + k] = ""
    for t in diff.get("truncatedArrays") or []:
        truncs.append((prefix + t["field"], int(t["newSize"])))


def _flatten_diff(
    diff: dict[str, Any],
    prefix: str,
    sets: dict[str, Any],
    unsets: dict[str, Any],
    truncs: list[tuple[str, int]],
) -> None:
    if "updatedFields" in diff or "removedFields" in diff or "truncatedArrays" in diff:
        _flatten_field_lists(diff, prefix, sets, unsets, truncs)
        return
    is_array = diff.get("a") is True
    for key, value in diff.items():
        if key in ("a",):
            continue
        if key == "l" and is_array:
            truncs.append((prefix.rstrip("."), int(value)))
        elif key in ("u", "i"):
            for k, v in value.items():
                sets[prefix + k] = v
        elif key == "d":
            for k in value:
                unsets[prefix + k] = ""
        elif is_array and key[0] == "u" and key[1:].isdigit():
            sets[prefix + key[1:]] = value
        elif key[0] == "s" and len(key) > 1:
            _flatten_diff(value, f"{prefix}{key[1:]}.", sets, unsets, truncs)
