"""The MongoDB source: FULL, SCHEMA, TRANSACTION_LOG and INCREMENTAL through pymongo.

The connection comes from the Mongo provider's hook (``MongoHook(mongo_conn_id=...)``),
built when a dump or restore runs, never at DAG parse time. The database is
``sources.<name>.database`` or, when unset, the connection's schema ("Default DB").

Payload (``payload_format`` "mongodump-tar"): one uncompressed PAX tar stream in
mongodump's directory layout, so mongorestore can read an extracted FULL too::

    <db>/<collection>.metadata.json   options, indexes, uuid, collectionName, type
                                      (canonical extended JSON, as mongodump writes it)
    <db>/<collection>.bson            the documents, concatenated BSON (FULL only)
    oplog.bson                        oplog entries, concatenated BSON (FULL: the entries
                                      written while the dump ran, like ``mongodump
                                      --oplog``; logs: the whole slice)

Each collection's metadata precedes its documents in the tar, so a restore streams the
archive once: create the collection, insert the documents, build the indexes, replay.

- FULL: every collection of the database (``collections`` in the config restricts it;
  ``system.*`` is skipped), read with raw batch cursors (no decoding, one batch in memory)
  and spooled per collection to a temporary file (a tar header needs the size first).
  The dump is not a snapshot: documents are read while writes go on. The oplog position
  is read before and after, and the entries between are stored in ``oplog.bson`` and
  replayed on restore, which makes the restored data consistent at ``end_time``.
- SCHEMA: only the ``metadata.json`` files.
- TRANSACTION_LOG: the oplog entries of the database with ts > the parent's
  ``oplog_end``, up to the newest entry. INCREMENTAL: the same, since the parent backup
  (whatever its type); an INCREMENTAL without a parent becomes a FULL (logged), a
  TRANSACTION_LOG without a parent is an error (take a FULL first). When the parent's
  position is no longer in the oplog (it rolled over), the dump fails: the changes in
  between are lost and only a new FULL starts a usable chain again.

Positions (``Manifest.position``): ``oplog_start`` / ``oplog_end`` as ``{"t": seconds,
"i": increment}`` and ``start_time`` / ``end_time`` (ISO-8601 UTC, the server's clock).
A log's ``oplog_start`` is its parent's ``oplog_end`` (see :func:`continuity`).

Restore: into a database name on the same connection, or ``conn:<conn_id>[/<db>]`` for
another server. Point in time: entries whose ``wall`` time (milliseconds; the ts seconds
for servers that do not record it) is after ``until`` are not replayed.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from itertools import pairwise
from typing import IO, Any, BinaryIO

from include.backup.catalog.manifest import Manifest
from include.backup.config import schema
from include.backup.errors import IntegrityError, RestoreRefused, SourceError
from include.backup.sources.base import DumpResult, drain

log = logging.getLogger(__name__)

PAYLOAD_FORMAT = "mongodump-tar"
SOURCE_TYPE = "mongo"
OPLOG_NAME = "oplog.bson"
OPLOG_NS = ("local", "oplog.rs")
LOG_TYPES = ("TRANSACTION_LOG", "INCREMENTAL")
BATCH_DOCS = 1000  # documents per insert_many on restore
BATCH_BYTES = 8 << 20  # ... or this many bytes, whichever comes first
COPY_CHUNK = 1 << 20
SPOOL_DIR_ENV = "BACKUP_MONGO_SPOOL_DIR"  # where per-collection spools go (default: tmp)


# --- positions ---------------------------------------------------------------------------


def _ts_to_pos(ts: Any) -> dict[str, int] | None:
    if ts is None:
        return None
    return {"t": int(ts.time), "i": int(ts.inc)}


def _pos_to_ts(pos: Any) -> Any:
    from bson.timestamp import Timestamp

    if not isinstance(pos, dict) or "t" not in pos or "i" not in pos:
        return None
    return Timestamp(int(pos["t"]), int(pos["i"]))


def _pos_text(pos: Any) -> str:
    if not isinstance(pos, dict):
        return "(none)"
    moment = datetime.fromtimestamp(int(pos.get("t", 0)), UTC)
    return f"ts({pos.get('t')}, {pos.get('i')}) ~{_iso(moment)}"


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def continuity(prev: Manifest, cur: Manifest) -> str | None:
    """None when ``cur`` starts exactly where ``prev`` ended in the oplog, else what is
    missing. For :func:`include.backup.catalog.chains.pitr_chain` and restore."""
    start, end = cur.position.get("oplog_start"), prev.position.get("oplog_end")
    if not isinstance(start, dict) or not isinstance(end, dict):
        return (
            f"{prev.backup_id if not isinstance(end, dict) else cur.backup_id} records no "
            "oplog position"
        )
    if (int(start["t"]), int(start["i"])) != (int(end["t"]), int(end["i"])):
        return (
            f"oplog entries between {_pos_text(end)} (end of {prev.backup_id}) and "
            f"{_pos_text(start)} (start of {cur.backup_id}) are in no backup"
        )
    return None


# --- connections -------------------------------------------------------------------------


def _redact(text: str) -> str:
    """Drop credentials from a mongodb:// URI quoted in a driver message."""
    import re

    return re.sub(r"(mongodb(?:\+srv)?://)[^@/\s]+@", r"\1***@", text)


class _Conn:
    """A pymongo client from an Airflow connection, plus the connection's default db."""

    def __init__(self, conn_id: str, source_name: str) -> None:
        try:
            from airflow.providers.mongo.hooks.mongo import MongoHook
        except ImportError as exc:  # pragma: no cover - a deployment problem
            raise SourceError(
                f"mongo source {source_name!r}: apache-airflow-providers-mongo is not "
                f"installed ({exc}); add it to requirements.txt"
            ) from None
        try:
            self.hook = MongoHook(mongo_conn_id=conn_id)
        except Exception as exc:  # noqa: BLE001 - the hook raises several kinds
            raise SourceError(
                f"mongo source {source_name!r}: cannot use Airflow connection {conn_id!r}: "
                f"{_redact(str(exc))}; define it (type mongo) in the Airflow UI, a secrets "
                f"backend or AIRFLOW_CONN_{conn_id.upper()}"
            ) from None
        self.conn_id = conn_id
        self.default_db = self.hook.connection.schema or None
        self.client = self.hook.get_conn()

    def close(self) -> None:
        with suppress(Exception):  # closing must not hide the real error
            self.client.close()


# --- BSON streams ------------------------------------------------------------------------


def _iter_bson(stream: IO[bytes]) -> Iterator[bytes]:
    """The documents of a concatenated-BSON stream, as raw bytes, one at a time."""
    while True:
        head = _read_exact(stream, 4)
        if not head:
            return
        if len(head) < 4:
            raise IntegrityError("BSON stream cut inside a document length")
        (size,) = struct.unpack("<i", head)
        if size < 5:
            raise IntegrityError(f"BSON stream holds a document of impossible size {size}")
        body = _read_exact(stream, size - 4)
        if len(body) != size - 4:
            raise IntegrityError("BSON stream cut inside a document")
        yield head + body


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    parts = []
    left = n
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _count_docs(batch: bytes) -> int:
    """Documents in a raw batch (concatenated BSON), by walking the length prefixes."""
    n = pos = 0
    end = len(batch)
    unpack = struct.unpack_from
    while pos < end:
        pos += unpack("<i", batch, pos)[0]
        n += 1
    return n


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_spool(tar: tarfile.TarFile, name: str, spool: BinaryIO) -> int:
    size = spool.tell()
    spool.seek(0)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, spool)
    return size


@contextmanager
def _spool() -> Iterator[BinaryIO]:
    directory = os.environ.get(SPOOL_DIR_ENV) or None
    with tempfile.TemporaryFile(prefix="mongo-spool-", dir=directory) as f:
        yield f  # type: ignore[misc]


# --- metadata ----------------------------------------------------------------------------


def _metadata_json(db_name: str, info: dict[str, Any], indexes: list[dict[str, Any]]) -> bytes:
    """metadata.json as mongodump writes it (canonical extended JSON)."""
    from bson import json_util

    uuid = (info.get("info") or {}).get("uuid")
    doc: dict[str, Any] = {
        "options": info.get("options", {}),
        "indexes": [{k: v for k, v in ix.items() if k != "ns"} for ix in indexes],
        "uuid": bytes(uuid).hex() if uuid is not None else "",
        "collectionName": info["name"],
        "type": info.get("type", "collection"),
    }
    return json_util.dumps(doc, json_options=json_util.CANONICAL_JSON_OPTIONS).encode()


def _load_metadata(data: bytes) -> dict[str, Any]:
    from bson import json_util

    return json_util.loads(data.decode(), json_options=json_util.CANONICAL_JSON_OPTIONS)


# --- the source --------------------------------------------------------------------------


class MongoSource:
    """Backs up one MongoDB database through pymongo."""

    payload_format = PAYLOAD_FORMAT

    def __init__(self, name: str, cfg: schema.MongoSource) -> None:
        self.name = name
        self.cfg = cfg

    # continuity of chains of this source, for catalog.chains and restore
    continuity = staticmethod(continuity)

    # -- helpers -----------------------------------------------------------------------

    def _err(self, text: str) -> SourceError:
        return SourceError(f"mongo source {self.name!r}: {text}")

    def _open(self, conn_id: str | None = None) -> _Conn:
        return _Conn(conn_id or self.cfg.conn_id, self.name)

    def _database(self, conn: _Conn) -> str:
        db = self.cfg.database or conn.default_db
        if not db:
            raise self._err(
                f"no database to back up: set sources.{self.name}.database, or the "
                f"schema (Default DB) of Airflow connection {self.cfg.conn_id!r}"
            )
        return db

    @staticmethod
    def _oplog(client: Any, raw: bool = False) -> Any:
        from bson.codec_options import CodecOptions
        from bson.raw_bson import RawBSONDocument

        coll = client[OPLOG_NS[0]][OPLOG_NS[1]]
        if raw:
            coll = coll.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
        return coll

    def _edge_ts(self, client: Any, direction: int) -> Any:
        """The newest (-1) or oldest (1) oplog timestamp; SourceError without an oplog."""
        from pymongo.errors import OperationFailure

        try:
            doc = self._oplog(client).find_one({}, {"ts": 1}, sort=[("$natural", direction)])
        except OperationFailure as exc:
            raise self._err(
                f"cannot read local.oplog.rs ({exc}); the server must run as a replica set "
                "(a one-member set will do) and the connection's user needs read on local"
            ) from None
        if doc is None:
            if direction == -1:
                raise self._err(
                    "local.oplog.rs is empty or missing; the server must run as a replica set "
                    "(a one-member set will do) for oplog positions and log backups"
                )
            return None
        return doc["ts"]

    @staticmethod
    def _server_time(client: Any) -> datetime:
        try:
            local = client.admin.command("hello").get("localTime")
        except Exception:  # noqa: BLE001 - old servers: isMaster; else our clock
            local = None
        if isinstance(local, datetime):
            return _utc(local)
        return datetime.now(UTC)

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
                return _command_collection(o) in (*self.cfg.collections, None)
            return True
        return self._wanted(db_name, ns)

    def _write_oplog(
        self, client: Any, db_name: str, after: Any, upto: Any, spool: BinaryIO
    ) -> dict[str, Any]:
        """Entries of the database with after < ts <= upto into ``spool``; their counts."""
        import re

        oplog = self._oplog(client, raw=True)
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
        for entry in oplog.find(query, batch_size=BATCH_DOCS):
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
            stats["oplog_first_wall"] = _iso(first_wall)
            stats["oplog_last_wall"] = _iso(last_wall)  # type: ignore[arg-type]
        return stats

    # -- dump --------------------------------------------------------------------------

    def dump(self, backup_type: str, out: BinaryIO, parent: Manifest | None) -> DumpResult:
        from pymongo.errors import PyMongoError

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
        conn = self._open()
        try:
            db_name = self._database(conn)
            if kind in LOG_TYPES:
                assert parent is not None
                return self._dump_log(conn.client, db_name, kind, out, parent)
            return self._dump_full(conn.client, db_name, out, schema_only=(kind == "SCHEMA"))
        except PyMongoError as exc:
            raise self._err(f"dump of database failed: {_redact(str(exc))}") from None
        finally:
            conn.close()

    def _dump_full(self, client: Any, db_name: str, out: BinaryIO, *, schema_only: bool) -> DumpResult:
        from bson.codec_options import CodecOptions
        from bson.raw_bson import RawBSONDocument

        db = client[db_name]
        start_time = self._server_time(client)
        start = None if schema_only else self._edge_ts(client, -1)
        infos, missing = self._collection_infos(db)
        stats: dict[str, Any] = {"database": db_name, "collections": {}, "bytes": {}, "views": []}
        raw_opts = CodecOptions(document_class=RawBSONDocument)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for info in infos:
                name = info["name"]
                is_view = info.get("type") == "view"
                indexes = [] if is_view else list(db[name].list_indexes())
                _add_bytes(tar, f"{db_name}/{name}.metadata.json", _metadata_json(db_name, info, indexes))
                if is_view:
                    stats["views"].append(name)
                    continue
                if schema_only:
                    stats["collections"][name] = 0
                    continue
                coll = db.get_collection(name, codec_options=raw_opts)
                count = 0
                with _spool() as spool:
                    for batch in coll.find_raw_batches({}, batch_size=BATCH_DOCS):
                        spool.write(batch)
                        count += _count_docs(batch)
                    stats["bytes"][name] = _add_spool(tar, f"{db_name}/{name}.bson", spool)
                stats["collections"][name] = count
            position: dict[str, Any] = {"start_time": _iso(start_time)}
            if not schema_only:
                end_time = self._server_time(client)
                end = self._edge_ts(client, -1)
                with _spool() as spool:
                    stats.update(self._write_oplog(client, db_name, start, end, spool))
                    _add_spool(tar, OPLOG_NAME, spool)
                position.update(
                    oplog_start=_ts_to_pos(start), oplog_end=_ts_to_pos(end), end_time=_iso(end_time)
                )
            else:
                position["end_time"] = _iso(start_time)
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
        after = _pos_to_ts(parent.position.get("oplog_end"))
        if after is None:
            raise self._err(
                f"parent backup {parent.backup_id} records no oplog position; take a FULL backup"
            )
        self._check_not_rolled_over(client, after, parent)
        start_time = parent.position.get("end_time")
        end_time = self._server_time(client)
        end = self._edge_ts(client, -1)
        with (
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            _spool() as spool,
        ):
            stats = self._write_oplog(client, db_name, after, end, spool)
            # Pruned while we read? Then entries may be missing from the slice.
            self._check_not_rolled_over(client, after, parent)
            _add_spool(tar, OPLOG_NAME, spool)
        stats["database"] = db_name
        stats["collections"] = dict(stats.get("oplog_collections", {}))
        return DumpResult(
            backup_type=kind,
            payload_format=PAYLOAD_FORMAT,
            parent_id=parent.backup_id,
            position={
                "oplog_start": _ts_to_pos(after),
                "oplog_end": _ts_to_pos(end),
                "start_time": start_time or _iso(parent.finished_at or parent.started_at),
                "end_time": _iso(end_time),
            },
            stats=stats,
            source_state={"database": db_name, "collections": list(self.cfg.collections)},
        )

    def _check_not_rolled_over(self, client: Any, after: Any, parent: Manifest) -> None:
        oldest = self._edge_ts(client, 1)
        if oldest is not None and oldest <= after:
            return
        if self._oplog(client).find_one({"ts": after}, {"ts": 1}) is not None:
            return
        lost_to = _pos_text(_ts_to_pos(oldest)) if oldest is not None else "now"
        raise self._err(
            f"oplog rolled over: entries between {_pos_text(_ts_to_pos(after))} (end of "
            f"backup {parent.backup_id}) and {lost_to} are lost; take a FULL backup (and "
            "make the oplog larger or run log backups more often)"
        )

    # -- restore -----------------------------------------------------------------------

    def _target(self, into: str) -> tuple[_Conn, str]:
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

    def restore(
        self,
        chain: Iterable[tuple[Manifest, BinaryIO]],
        into: str,
        *,
        only: list[str] | None = None,
        overwrite: bool = False,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        from pymongo.errors import PyMongoError

        items = list(chain)
        manifests = [m for m, _ in items]
        until = _utc(until) if until is not None else None
        items = self._check_chain(manifests, items, until, only)
        conn, db_name = self._target(into)
        try:
            db = conn.client[db_name]
            known = self._known_collections(manifests)
            clash = self._check_destination(db, db_name, into, only, overwrite, known)
            src_db = manifests[0].source_state.get("database") or manifests[0].stats.get("database")
            # The chain is restored into a temporary database and moved into ``into`` only
            # once every payload read to its authenticated end; a failure drops it and
            # leaves ``into`` as it was (a crashed worker leaves "<db>_restoring_<hex>").
            work = conn.client[_temp_db_name(db_name)]
            try:
                state = _RestoreState(db=work, src_db=src_db, only=set(only) if only else None, until=until)
                for manifest, stream in items:
                    self._restore_one(manifest, stream, state)
                    drain(stream)  # authenticates the container's last chunk
                state.finish()
                self._move_into(conn.client, work, db, clash, into)
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
            raise self._err(f"restore into {db_name!r} failed: {_redact(str(exc))}") from None
        finally:
            conn.close()

    @staticmethod
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

    def _check_chain(
        self,
        manifests: list[Manifest],
        items: list[tuple[Manifest, BinaryIO]],
        until: datetime | None,
        only: list[str] | None,
    ) -> list[tuple[Manifest, BinaryIO]]:
        """Validate the whole chain before anything is written; return the part to apply."""
        if not manifests:
            raise RestoreRefused("nothing to restore: the chain is empty")
        self._check_formats(manifests)
        self._check_links(manifests)
        if until is None:
            return items
        return self._until_slice(manifests, items, until)

    @staticmethod
    def _check_formats(manifests: list[Manifest]) -> None:
        for m in manifests:
            if m.source_type != SOURCE_TYPE or m.payload_format != PAYLOAD_FORMAT:
                raise RestoreRefused(
                    f"backup {m.backup_id} is a {m.source_type} backup in format "
                    f"{m.payload_format!r}; the mongo source restores {PAYLOAD_FORMAT!r} only"
                )

    @staticmethod
    def _check_links(manifests: list[Manifest]) -> None:
        """One FULL (or SCHEMA) then log/incremental backups, each continuing the last."""
        base = manifests[0]
        if base.backup_type not in ("FULL", "SCHEMA"):
            raise IntegrityError(
                f"backup chain broken: it starts with {base.backup_id}, a {base.backup_type}; "
                "a mongo restore starts from a FULL (or SCHEMA) backup"
            )
        if base.backup_type == "SCHEMA" and len(manifests) > 1:
            raise IntegrityError(
                f"backup chain broken: {manifests[1].backup_id} continues the SCHEMA backup "
                f"{base.backup_id}, which holds no data; restore from a FULL"
            )
        for prev, cur in pairwise(manifests):
            if cur.backup_type not in LOG_TYPES:
                raise IntegrityError(
                    f"backup chain broken: {cur.backup_id} ({cur.backup_type}) cannot follow "
                    f"{prev.backup_id}; a chain is one FULL then log/incremental backups"
                )
            if cur.parent_id != prev.backup_id:
                raise IntegrityError(
                    f"backup chain broken: {cur.backup_id} names parent {cur.parent_id}, not "
                    f"{prev.backup_id}"
                )
            problem = continuity(prev, cur)
            if problem:
                raise IntegrityError(
                    f"backup chain broken between {prev.backup_id} and {cur.backup_id}: "
                    f"{problem}; restore to a point before {prev.position.get('end_time')} or "
                    "from a newer FULL backup"
                )

    @staticmethod
    def _until_slice(
        manifests: list[Manifest], items: list[tuple[Manifest, BinaryIO]], until: datetime
    ) -> list[tuple[Manifest, BinaryIO]]:
        """For a point-in-time restore: check ``until`` is in reach; drop logs after it."""
        base = manifests[0]
        if base.backup_type != "FULL":
            raise RestoreRefused(
                "a point-in-time restore needs a FULL backup; this chain starts with a SCHEMA"
            )
        lo = _parse_iso(base.position.get("end_time"))
        hi = _parse_iso(manifests[-1].position.get("end_time"))
        if lo is None or hi is None:
            raise RestoreRefused(
                "the chain's manifests record no end_time; a point-in-time restore is not possible"
            )
        if not lo <= until <= hi:
            raise RestoreRefused(
                f"point in time {_iso(until)} is outside the window this chain reaches: "
                f"{_iso(lo)} – {_iso(hi)}"
            )
        # Logs that start after `until` add nothing.
        keep = [items[0]]
        for m, s in items[1:]:
            start = _parse_iso(m.position.get("start_time"))
            if start is not None and start > until:
                break
            keep.append((m, s))
        return keep

    @staticmethod
    def _known_collections(manifests: list[Manifest]) -> set[str]:
        known: set[str] = set()
        for m in manifests:
            known.update((m.stats.get("collections") or {}).keys())
            known.update(m.stats.get("views") or [])
        return known

    def _check_destination(
        self, db: Any, db_name: str, into: str, only: list[str] | None, overwrite: bool, known: set[str]
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

    def _restore_one(self, manifest: Manifest, stream: BinaryIO, state: _RestoreState) -> None:
        with tarfile.open(fileobj=stream, mode="r|", format=tarfile.PAX_FORMAT) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                f = tar.extractfile(member)
                assert f is not None
                if name == OPLOG_NAME:
                    state.finish_data()
                    state.replay(_iter_bson(f))
                    continue
                db_part, _, file = name.partition("/")
                if file.endswith(".metadata.json"):
                    state.create(file[: -len(".metadata.json")], _load_metadata(f.read()))
                elif file.endswith(".bson"):
                    state.insert(file[: -len(".bson")], _iter_bson(f))
                else:
                    log.warning("backup %s: ignoring unexpected member %s", manifest.backup_id, name)
        state.finish_data()


RESTORING_MARK = "_restoring_"


def _temp_db_name(db_name: str) -> str:
    """``<db>_restoring_<8 hex>`` within MongoDB's 63-byte database name limit."""
    suffix = f"{RESTORING_MARK}{os.urandom(4).hex()}"
    return db_name.encode()[: 63 - len(suffix)].decode("utf-8", "ignore") + suffix


def _copy_collection(work: Any, db: Any, info: dict[str, Any]) -> None:
    """Copy one collection with options (validator, capped, collation...) from ``work``
    into ``db``: created with its options first, documents in natural order, then its
    indexes. A rename would be cheaper, but not every server carries the options along
    (SecantusDB drops them), and a restore that loses a validator is not a restore."""
    from bson import CodecOptions, decode_all
    from bson.raw_bson import RawBSONDocument

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


# --- restore state and oplog replay -------------------------------------------------------


def _command_collection(o: Any) -> str | None:
    """The collection a command oplog entry acts on (None for database-wide ones)."""
    for key in ("create", "drop", "createIndexes", "dropIndexes", "collMod", "deleteIndexes"):
        if key in o:
            return o[key]
    if "renameCollection" in o:
        return str(o["renameCollection"]).partition(".")[2]
    return None


class _RestoreState:
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
        from bson.raw_bson import RawBSONDocument

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
        moment = _utc(wall) if isinstance(wall, datetime) else datetime.fromtimestamp(entry["ts"].time, UTC)
        return moment > self.until

    def replay(self, entries: Iterator[bytes]) -> None:
        import bson

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
            _apply_update(c, ident, o)
        elif op == "d":
            c.delete_one({"_id": o["_id"]})
        else:
            log.warning("oplog replay: ignoring op %r on %s", op, ns)
            return
        self.applied += 1

    def _command(self, o: dict[str, Any]) -> None:
        coll = _command_collection(o)
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
            self.db.command({"createIndexes": coll, "indexes": _index_specs(o)})
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


def _index_specs(o: dict[str, Any]) -> list[dict[str, Any]]:
    """The index specs of a createIndexes oplog command."""
    if "indexes" in o:
        return [{k: v for k, v in ix.items() if k not in ("ns", "entryFormat")} for ix in o["indexes"]]
    # mongod's form: one index per entry, the spec beside the collection name
    return [{k: v for k, v in o.items() if k not in ("createIndexes", "ns")}]


def _apply_update(coll: Any, ident: Any, o: dict[str, Any]) -> None:
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
