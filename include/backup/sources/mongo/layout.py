"""The mongodump layout of a mongo payload, and the shape of oplog entries.

One uncompressed PAX tar stream: ``<db>/<collection>.metadata.json`` (canonical extended
JSON, as mongodump writes it), ``<db>/<collection>.bson`` (concatenated BSON) and
``oplog.bson``. This module writes and reads those members; it knows nothing of servers.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, BinaryIO

from include.backup.errors import IntegrityError

PAYLOAD_FORMAT = "mongodump-tar"
SOURCE_TYPE = "mongo"
OPLOG_NAME = "oplog.bson"
OPLOG_NS = ("local", "oplog.rs")
LOG_TYPES = ("TRANSACTION_LOG", "INCREMENTAL")
BATCH_DOCS = 1000  # documents per insert_many on restore
BATCH_BYTES = 8 << 20  # ... or this many bytes, whichever comes first
SPOOL_DIR_ENV = "BACKUP_MONGO_SPOOL_DIR"  # where per-collection spools go (default: tmp)


# --- BSON streams ------------------------------------------------------------------------


def iter_bson(stream: IO[bytes]) -> Iterator[bytes]:
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


def count_docs(batch: bytes) -> int:
    """Documents in a raw batch (concatenated BSON), by walking the length prefixes."""
    n = pos = 0
    end = len(batch)
    unpack = struct.unpack_from
    while pos < end:
        pos += unpack("<i", batch, pos)[0]
        n += 1
    return n


# --- tar members -------------------------------------------------------------------------


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_spool(tar: tarfile.TarFile, name: str, spool: BinaryIO) -> int:
    size = spool.tell()
    spool.seek(0)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, spool)
    return size


@contextmanager
def spool_file() -> Iterator[BinaryIO]:
    directory = os.environ.get(SPOOL_DIR_ENV) or None
    with tempfile.TemporaryFile(prefix="mongo-spool-", dir=directory) as f:
        yield f  # type: ignore[misc]


# --- metadata ----------------------------------------------------------------------------


def metadata_json(db_name: str, info: dict[str, Any], indexes: list[dict[str, Any]]) -> bytes:
    """metadata.json as mongodump writes it (canonical extended JSON)."""
    from bson import (
        json_util,  # lazy: pymongo's bson: loaded only when a mongo backup runs
    )

    uuid = (info.get("info") or {}).get("uuid")
    doc: dict[str, Any] = {
        "options": info.get("options", {}),
        "indexes": [{k: v for k, v in ix.items() if k != "ns"} for ix in indexes],
        "uuid": bytes(uuid).hex() if uuid is not None else "",
        "collectionName": info["name"],
        "type": info.get("type", "collection"),
    }
    return json_util.dumps(doc, json_options=json_util.CANONICAL_JSON_OPTIONS).encode()


def load_metadata(data: bytes) -> dict[str, Any]:
    from bson import (
        json_util,  # lazy: pymongo's bson: loaded only when a mongo restore runs
    )

    return json_util.loads(data.decode(), json_options=json_util.CANONICAL_JSON_OPTIONS)


# --- oplog entries -----------------------------------------------------------------------


def command_collection(o: Any) -> str | None:
    """The collection a command oplog entry acts on (None for database-wide ones)."""
    for key in ("create", "drop", "createIndexes", "dropIndexes", "collMod", "deleteIndexes"):
        if key in o:
            return o[key]
    if "renameCollection" in o:
        return str(o["renameCollection"]).partition(".")[2]
    return None
