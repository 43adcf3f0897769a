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

Modules: :mod:`.layout` (the tar members and BSON streams), :mod:`.positions` (oplog
positions, chain continuity), :mod:`.client` (the connection), :mod:`.dump`,
:mod:`.restore` with :mod:`.replay` (applying collections and oplog entries), and
:mod:`.source` (the :class:`MongoSource` that ties them together).
"""

from include.backup.sources.mongo.layout import PAYLOAD_FORMAT, SOURCE_TYPE
from include.backup.sources.mongo.positions import continuity
from include.backup.sources.mongo.source import MongoSource

__all__ = ["PAYLOAD_FORMAT", "SOURCE_TYPE", "MongoSource", "continuity"]
