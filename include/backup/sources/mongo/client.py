"""The connection layer of the mongo source: a pymongo client from an Airflow connection,
the database to use, and reads of the oplog's edges and the server's clock.

The client comes from the Mongo provider's hook (``MongoHook(mongo_conn_id=...)``), built
when a dump or restore runs, never at DAG parse time. Driver messages quoted in errors
have the credentials of any mongodb:// URI removed.
"""

from __future__ import annotations

import re
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from include.backup.config import schema
from include.backup.errors import SourceError
from include.backup.sources.mongo.layout import OPLOG_NS
from include.backup.sources.mongo.positions import utc


def source_error(source_name: str, text: str) -> SourceError:
    return SourceError(f"mongo source {source_name!r}: {text}")


def redact(text: str) -> str:
    """Drop credentials from a mongodb:// URI quoted in a driver message."""
    return re.sub(r"(mongodb(?:\+srv)?://)[^@/\s]+@", r"\1***@", text)


class MongoConn:
    """A pymongo client from an Airflow connection, plus the connection's default db."""

    def __init__(self, conn_id: str, source_name: str) -> None:
        try:
            # The provider (and pymongo under it) is loaded only when a dump or restore runs.
            from airflow.providers.mongo.hooks.mongo import (
                MongoHook,  # lazy: provider hook: loaded when the connection is used
            )
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
                f"{redact(str(exc))}; define it (type mongo) in the Airflow UI, a secrets "
                f"backend or AIRFLOW_CONN_{conn_id.upper()}"
            ) from None
        self.conn_id = conn_id
        self.default_db = self.hook.connection.schema or None
        self.client = self.hook.get_conn()

    def close(self) -> None:
        with suppress(Exception):  # closing must not hide the real error
            self.client.close()


def source_database(source_name: str, cfg: schema.MongoSource, conn: MongoConn) -> str:
    """``sources.<name>.database`` or, when unset, the connection's schema."""
    db = cfg.database or conn.default_db
    if not db:
        raise source_error(
            source_name,
            f"no database to back up: set sources.{source_name}.database, or the "
            f"schema (Default DB) of Airflow connection {cfg.conn_id!r}",
        )
    return db


def oplog(client: Any, raw: bool = False) -> Any:
    """``local.oplog.rs``; with ``raw``, read as undecoded documents."""
    from bson.codec_options import (
        CodecOptions,  # lazy: pymongo's bson: loaded only when a backup runs
    )
    from bson.raw_bson import RawBSONDocument  # lazy: pymongo's bson: loaded when MongoDB is used

    coll = client[OPLOG_NS[0]][OPLOG_NS[1]]
    if raw:
        coll = coll.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return coll


def edge_ts(client: Any, direction: int, source_name: str) -> Any:
    """The newest (-1) or oldest (1) oplog timestamp; SourceError without an oplog."""
    from pymongo.errors import (
        OperationFailure,  # lazy: pymongo: loaded only when a backup runs
    )

    try:
        doc = oplog(client).find_one({}, {"ts": 1}, sort=[("$natural", direction)])
    except OperationFailure as exc:
        raise source_error(
            source_name,
            f"cannot read local.oplog.rs ({exc}); the server must run as a replica set "
            "(a one-member set will do) and the connection's user needs read on local",
        ) from None
    if doc is None:
        if direction == -1:
            raise source_error(
                source_name,
                "local.oplog.rs is empty or missing; the server must run as a replica set "
                "(a one-member set will do) for oplog positions and log backups",
            )
        return None
    return doc["ts"]


def server_time(client: Any) -> datetime:
    try:
        local = client.admin.command("hello").get("localTime")
    except Exception:  # noqa: BLE001 - old servers: isMaster; else our clock
        local = None
    if isinstance(local, datetime):
        return utc(local)
    return datetime.now(UTC)
