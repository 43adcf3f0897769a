"""Restores of the mongo source: a whole chain, some collections (``only``) or a point in
time (``until``), into a database on the source's connection or ``conn:<conn_id>[/<db>]``.

The chain is checked whole before anything is written, restored into a temporary database
(``<db>_restoring_<hex>``) and published into the destination only once every payload read
to its authenticated end; a failure drops the temporary database and leaves the
destination as it was.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterable
from datetime import datetime
from typing import Any, BinaryIO

from include.backup.catalog.manifest import Manifest
from include.backup.config import schema
from include.backup.errors import RestoreRefused, SourceError
from include.backup.sources.base import drain
from include.backup.sources.mongo.client import MongoConn, redact, source_error
from include.backup.sources.mongo.layout import BATCH_DOCS, OPLOG_NAME, iter_bson, load_metadata
from include.backup.sources.mongo.positions import check_chain, utc
from include.backup.sources.mongo.replay import RestoreState

log = logging.getLogger(__name__)

RESTORING_MARK = "_restoring_"


class MongoRestore:
    """Restores of the backups of mongo source ``name``."""

    def __init__(self, name: str, cfg: schema.MongoSource) -> None:
        self.name = name
        self.cfg = cfg

    def _err(self, text: str) -> SourceError:
        return source_error(self.name, text)

    def _open(self, conn_id: str | None = None) -> MongoConn:
        return MongoConn(conn_id or self.cfg.conn_id, self.name)

    def _target(self, into: str) -> tuple[MongoConn, str]:
        if into.startswith("conn:"):
            conn_id, _, db = into[len("conn:"):].partition("/")
            if not conn_id:
                raise RestoreRefused(f"restore target {into!r}: name a connection: conn:<conn_id>[/<db>]")
            conn = self._open(conn_id)
            db = db or conn.default_db or ""
            if not db:
                conn.close()
                raise RestoreRefused(
                    f"restore target {into!r}: connection {conn_id!r} has no default database; "
                    "use conn:<conn_id>/<db>"
                )
            return conn, db
        if not into or "/" in into or "." in into or "$" in into or " " in into:
            raise RestoreRefused(
                f"restore target {into!r} is not a database name; give a database name "
                "(restored over this source's connection) or conn:<conn_id>[/<db>]"
            )
        return self._open(), into

    def run(
        self,
        chain: Iterable[tuple[Manifest, BinaryIO]],
        into: str,
        *,
        only: list[str] | None = None,
        overwrite: bool = False,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        from pymongo.errors import (
            PyMongoError,  # lazy: pymongo: loaded only when a restore runs
        )

        items = list(chain)
        manifests = [m for m, _ in items]
        until = utc(until) if until is not None else None
        items = check_chain(manifests, items, until)
        conn, db_name = self._target(into)
        try:
            db = conn.client[db_name]
            known = _known_collections(manifests)
            clash = _check_destination(db, db_name, into, only, overwrite, known)
            src_db = manifests[0].source_state.get("database") or manifests[0].stats.get("database")
            # The chain is restored into a temporary database and moved into ``into`` only
            # once every payload read to its authenticated end; a failure drops it and
            # leaves ``into`` as it was (a crashed worker leaves "<db>_restoring_<hex>").
            work = conn.client[temp_db_name(db_name)]
            try:
                state = RestoreState(db=work, src_db=src_db, only=set(only) if only else None, until=until)
                for manifest, stream in items:
                    _restore_one(manifest, stream, state)
                    drain(stream)  # authenticates the container's last chunk
                state.finish()
                _move_into(conn.client, work, db, clash, into)
            finally:
                conn.client.drop_database(work.name)
            restored = sorted(state.touched if state.only is None else state.touched & state.only)
            names = set(db.list_collection_names())
            counts = {n: db[n].count_documents({}) for n in restored if n in names and n not in state.views}
            return {
                "database": db_name,
                "collections": counts,
                "documents": sum(counts.values()),
                "oplog_applied": state.applied,
                "oplog_skipped_after_until": state.after_until,
                "chain": [m.backup_id for m, _ in items],
            }
        except PyMongoError as exc:
            raise self._err(f"restore into {db_name!r} failed: {redact(str(exc))}") from None
        finally:
            conn.close()


def _known_collections(manifests: list[Manifest]) -> set[str]:
    known: set[str] = set()
    for m in manifests:
        known.update((m.stats.get("collections") or {}).keys())
        known.update(m.stats.get("views") or [])
    return known


def _check_destination(
    db: Any, db_name: str, into: str, only: list[str] | None, overwrite: bool, known: set[str]
) -> list[str]:
    """Refuse what cannot be restored; return the collections ``overwrite`` replaces."""
    if only:
        unknown = [c for c in only if c not in known]
        if unknown:
            raise RestoreRefused(
                f"collection(s) {', '.join(unknown)} are not in this backup chain; it holds: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
    existing = [n for n in db.list_collection_names() if not n.startswith("system.")]
    clash = [n for n in existing if n in set(only)] if only else existing
    if clash and not overwrite:
        what = f"collection(s) {', '.join(sorted(clash))}" if only else f"{len(clash)} collection(s)"
        raise RestoreRefused(
            f"database {db_name!r} ({into}) is not empty: it holds {what}; restore into "
            "another database, or set overwrite to replace them"
        )
    return clash


def _restore_one(manifest: Manifest, stream: BinaryIO, state: RestoreState) -> None:
    with tarfile.open(fileobj=stream, mode="r|", format=tarfile.PAX_FORMAT) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name
            f = tar.extractfile(member)
            assert f is not None
            if name == OPLOG_NAME:
                state.finish_data()
                state.replay(iter_bson(f))
                continue
            db_part, _, file = name.partition("/")
            if file.endswith(".metadata.json"):
                state.create(file[: -len(".metadata.json")], load_metadata(f.read()))
            elif file.endswith(".bson"):
                state.insert(file[: -len(".bson")], iter_bson(f))
            else:
                log.warning("backup %s: ignoring unexpected member %s", manifest.backup_id, name)
    state.finish_data()


# --- the temporary database and its publication -------------------------------------------


def temp_db_name(db_name: str) -> str:
    """``<db>_restoring_<8 hex>`` within MongoDB's 63-byte database name limit."""
    suffix = f"{RESTORING_MARK}{os.urandom(4).hex()}"
    return db_name.encode()[: 63 - len(suffix)].decode("utf-8", "ignore") + suffix


def _move_into(client: Any, work: Any, db: Any, clash: list[str], into: str) -> None:
    """Move the restored collections from ``work`` into ``db``; views are re-created.
    What ``overwrite`` replaces is dropped only now, after the restore succeeded. A
    collection that appeared in ``db`` meanwhile is never replaced: the move is refused
    before it starts. Only the move of each collection is atomic, not the whole set."""
    infos = [i for i in work.list_collections() if not i["name"].startswith("system.")]
    existing = set(db.list_collection_names())
    in_the_way = sorted({i["name"] for i in infos} & (existing - set(clash)))
    if in_the_way:
        raise RestoreRefused(
            f"database {db.name!r} ({into}) gained collection(s) {', '.join(in_the_way)} while "
            "the restore ran; nothing was changed — restore again, with overwrite to replace them"
        )
    for name in clash:
        log.info("overwrite: dropping %s.%s, replaced by the restored one", db.name, name)
        db.drop_collection(name)
    for info in infos:
        if info.get("type") == "view":
            continue
        if info.get("options"):
            _copy_collection(work, db, info)
        else:
            # Across databases renameCollection keeps documents and indexes.
            client.admin.command(
                "renameCollection", f"{work.name}.{info['name']}", to=f"{db.name}.{info['name']}"
            )
    for info in infos:  # views after the collections they read
        if info.get("type") == "view":
            db.command({"create": info["name"], **(info.get("options") or {})})


def _copy_collection(work: Any, db: Any, info: dict[str, Any]) -> None:
    """Copy one collection with options (validator, capped, collation...) from ``work``
    into ``db``: created with its options first, documents in natural order, then its
    indexes. A rename would be cheaper, but not every server carries the options along
    (SecantusDB drops them), and a restore that loses a validator is not a restore."""
    from bson import (  # lazy: pymongo's bson: loaded only when a restore runs
        CodecOptions,
        decode_all,
    )
    from bson.raw_bson import RawBSONDocument  # lazy: pymongo's bson: loaded when MongoDB is used

    name = info["name"]
    db.command({"create": name, **info["options"]})
    src, dst = work[name], db[name]
    raw = CodecOptions(document_class=RawBSONDocument)
    for batch in src.find_raw_batches(batch_size=BATCH_DOCS):
        docs = decode_all(batch, raw)
        if docs:
            dst.insert_many(docs, ordered=True, bypass_document_validation=True)
    indexes = [
        {k: v for k, v in ix.items() if k not in ("ns", "v")}
        for ix in src.list_indexes()
        if ix.get("name") != "_id_"
    ]
    if indexes:
        db.command({"createIndexes": name, "indexes": indexes})
    work.drop_collection(name)
