"""The catalog index: compact records of a source's backups at a target, so that listing,
retention planning, RPO checks and the DR page never read (nor parse) whole manifests.

Layout at a target, beside the backups (restic-style index files: every write a new
object with a unique name, so concurrent writers never overwrite each other)::

    <source>/_catalog/base-<time>-<random>.json  every record, from a rebuild or a compaction
    <source>/_catalog/add-<time>-<random>.json   records appended on publish and on verify
    <source>/_catalog/gone-<backup_id>           a tombstone: the backup was deleted
    _catalog/sources/<source>                    which sources the target holds
    _catalog/complete                            ... and that list is complete

A record holds what readers show (id, schedule, types, parent, times, sizes, position,
verification per target, key id, the incomplete mark): never the file index, the source
state, the stats or the objects. Each base and add segment is signed (HMAC-SHA-256 under
a key derived from the key ring, like manifests: catalog/signing.py); tombstones are not,
since a forged one can only hide a backup, which deleting its manifest (same write access)
does too, and a rebuild from the manifests undoes it.

The manifests stay the source of truth. The index is rebuilt from them when it has no base
segment (a target written before the index existed, or a fresh one), when a segment fails
its check, or on request (``list --rebuild-index``); :func:`reconcile` compares it with the
manifest keys (a listing, no reads) and fixes what differs.

Why no lock is needed for compaction (it runs when segments pile up): a compaction writes
a new base holding the merge of the segments it read, then deletes exactly those. A
segment written meanwhile has another name and survives; merging is idempotent and
order-free (records of one id merge their verifications, tombstones win), so two
compactions at once only leave two equal bases, which the next one folds into one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel

from include.backup.catalog.catalog import (
    INDEX_DIR,
    as_utc,
    chain_for,
    load_listed,
    read_manifest,
    register_source,
    target_sources,
    write_manifest,
)
from include.backup.catalog.manifest import (
    MANIFEST_NAME,
    EncryptionInfo,
    Manifest,
    Verification,
)
from include.backup.config.schema import BackupConfig
from include.backup.errors import BackupError, KeyNotFoundError, ObjectNotFound, TargetError
from include.backup.gc_pause import gc_paused
from include.backup.keys import KeyRing
from include.backup.runtime import load_keys
from include.backup.targets.base import Target

log = logging.getLogger(__name__)

SEGMENT_FORMAT = 1
COMPACT_AT = 48  # segments and tombstones of a source before a writer folds them into a base
TOMBSTONE_DAYS = 30  # how long a base remembers a deletion (against late records of it)
READ_ATTEMPTS = 3  # a compaction may delete a segment between our listing and our read
_HKDF_INFO = b"airflow-backup catalog-index v1"
_DOMAIN = b"AFBK-CATALOG-INDEX\x00"
# Left out of records: large (file index, per-table stats), or only needed by a restore.
_LEFT_OUT = frozenset({"objects", "source_state", "stats", "encryption", "auth", "verification"})

Record = dict[str, Any]


class IndexInvalid(Exception):
    """A segment that cannot be trusted (unreadable, altered, or signed with an unknown key)."""


@dataclass
class IndexState:
    """What a source's index holds after merging every segment read."""

    records: dict[str, Record] = field(default_factory=dict)
    deleted: dict[str, str] = field(default_factory=dict)  # backup id -> deletion time (ISO)
    segment_keys: list[str] = field(default_factory=list)  # base/add segments read
    tombstone_keys: list[str] = field(default_factory=list)
    has_base: bool = False

    def live(self) -> list[Record]:
        """Records not deleted, oldest first."""
        rows = [r for i, r in self.records.items() if i not in self.deleted]
        rows.sort(key=lambda r: (r["started_at"], r["backup_id"]))
        return rows


# --- records ---------------------------------------------------------------------------


def record_of(manifest: Manifest) -> Record:
    """The compact record of a manifest (JSON-ready)."""
    rec: Record = manifest.model_dump(mode="json", exclude=set(_LEFT_OUT))
    rec["key_id"] = manifest.encryption.key_id if manifest.encryption else None
    rec["verification"] = {
        name: v.model_dump(mode="json") for name, v in sorted(manifest.verification.items())
    }
    return rec


def summary_of(rec: Record) -> Manifest:
    """A Manifest carrying only what the record holds: no objects (so check_shape refuses
    it for a restore or a verify, which must read the real manifest), no source state.

    Built without pydantic's validation or ``model_construct`` (the record is authenticated
    and was dumped from a valid Manifest): at 10,000 records this is most of a listing."""
    fields: dict[str, Any] = {**_summary_defaults(), **rec}
    if not rec.keys() <= _RECORD_KEYS:  # a record field this version does not know
        fields = {k: v for k, v in fields.items() if k in _RECORD_KEYS}
    key_id = fields.pop("key_id", None)
    fields.update(objects=[], stats={}, source_state={}, position=rec.get("position") or {})
    fields["started_at"] = _dt(rec["started_at"])
    finished = rec.get("finished_at")
    fields["finished_at"] = _dt(finished) if finished else None
    fields["verification"] = {
        name: _new(Verification, {"ok": v["ok"], "verified_at": _dt(v["verified_at"]),
                                  "deep": v.get("deep", False), "detail": v.get("detail", "")})
        for name, v in rec.get("verification", {}).items()
    }  # fmt: skip
    fields["encryption"] = (
        _construct(EncryptionInfo, key_id=key_id, wrapped_key="", chunk_size=0) if key_id else None
    )
    return _new(Manifest, fields)


_DEFAULTS: dict[str, Any] = {}


def _summary_defaults() -> dict[str, Any]:
    """The Manifest fields' immutable defaults (the mutable ones summary_of sets fresh)."""
    if not _DEFAULTS:
        _DEFAULTS.update(
            {n: d for n, d, factory in _fields_of(Manifest) if factory is None and d is not _NO_DEFAULT}
        )
        _DEFAULTS["key_id"] = None
    return _DEFAULTS


_Model = TypeVar("_Model", bound=BaseModel)
# Per model: (name, default, default factory) of each field, looked up once (the
# ``model_fields`` property and ``FieldInfo.get_default`` cost more than the construct).
_FIELD_CACHE: dict[type[BaseModel], list[tuple[str, Any, Any]]] = {}
_NO_DEFAULT = object()


def _fields_of(cls: type[BaseModel]) -> list[tuple[str, Any, Any]]:
    if cls not in _FIELD_CACHE:
        _FIELD_CACHE[cls] = [
            (name, _NO_DEFAULT if info.is_required() else info.default, info.default_factory)
            for name, info in cls.model_fields.items()
        ]
    return _FIELD_CACHE[cls]


def _construct(cls: type[_Model], **fields: Any) -> _Model:
    """``cls.model_construct(**fields)`` for trusted (authenticated) values, without its
    per-call cost (pydantic inspects every default factory's signature on each call: 10x
    the cost of a listing otherwise). Fields not given take their defaults."""
    for name, default, factory in _fields_of(cls):
        if name not in fields:
            if factory is not None:
                fields[name] = factory()
            elif default is not _NO_DEFAULT:
                fields[name] = default  # immutable (None, a number, a string): shared safely
    return _new(cls, fields)


def _new(cls: type[_Model], fields: dict[str, Any]) -> _Model:
    """An instance holding exactly ``fields`` (every field given), unvalidated."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    object.__setattr__(obj, "__pydantic_fields_set__", set(fields))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


_RECORD_KEYS = frozenset(Manifest.model_fields) | {"key_id"}


def _dt(value: str) -> datetime:
    """An ISO time of a record (always UTC, ``Z``: Python 3.11 parses it) as aware UTC."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is UTC else as_utc(moment)


def _merge_record(into: dict[str, Record], rec: Record) -> None:
    """Later verification per target wins; everything else is the manifest's and equal."""
    old = into.get(rec["backup_id"])
    if old is None:
        into[rec["backup_id"]] = rec
        return
    verification = dict(old.get("verification", {}))
    for name, v in rec.get("verification", {}).items():
        mine = verification.get(name)
        if mine is None or _dt(v["verified_at"]) >= _dt(mine["verified_at"]):
            verification[name] = v
    merged = {**old, **rec, "verification": verification}
    into[rec["backup_id"]] = merged


# --- segments --------------------------------------------------------------------------


def _mac_key(kek: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(kek)


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _index_prefix(source: str) -> str:
    return f"{source}/{INDEX_DIR}/"


def _new_key(source: str, kind: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{_index_prefix(source)}{kind}-{stamp}-{secrets.token_hex(6)}.json"


def _write_segment(
    target: Target,
    source: str,
    kind: str,
    keys: KeyRing,
    records: Iterable[Record],
    deleted: dict[str, str] | None = None,
) -> str:
    key_id, kek = keys.active()
    body = {"format": SEGMENT_FORMAT, "source": source, "kind": kind,
            "records": list(records), "deleted": dict(deleted or {}), "key_id": key_id}  # fmt: skip
    mac = hmac.new(_mac_key(kek), _signed_bytes(body), hashlib.sha256).hexdigest()
    key = _new_key(source, kind)
    target.put_bytes(key, json.dumps({**body, "mac": mac}, separators=(",", ":")).encode())
    return key


def _read_segment(target: Target, key: str, source: str, keys: KeyRing) -> dict[str, Any]:
    """The checked body of a segment. ObjectNotFound passes through (a compaction raced
    us); anything else wrong raises IndexInvalid."""
    data = target.read_bytes(key)
    try:
        doc = json.loads(data)
        mac = doc.pop("mac")
        kek = keys.get(doc["key_id"])
        given = str(mac).encode("utf-8", "surrogatepass")
    except (ValueError, KeyError, TypeError, AttributeError, KeyNotFoundError) as exc:
        raise IndexInvalid(f"index segment {key} is unreadable or names an unknown key ({exc})") from exc
    want = hmac.new(_mac_key(kek), _signed_bytes(doc), hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(want, given):
        raise IndexInvalid(f"index segment {key} failed authentication (altered after it was written)")
    if doc.get("format") != SEGMENT_FORMAT or doc.get("source") != source:
        raise IndexInvalid(f"index segment {key} is for another source or format; ignored")
    return dict(doc)


def _kind(key: str) -> str | None:
    name = key.rsplit("/", 1)[-1]
    for kind in ("base", "add"):
        if name.startswith(f"{kind}-") and name.endswith(".json"):
            return kind
    return "gone" if name.startswith("gone-") else None


def read_state(target: Target, source: str, keys: KeyRing) -> IndexState:
    """Merge every segment of ``source``'s index. Raises IndexInvalid when one fails its
    check, ObjectNotFound when a segment vanished (a compaction ran: read again)."""
    state = IndexState()
    listed = sorted(o.key for o in target.list(_index_prefix(source)))
    for key in listed:
        kind = _kind(key)
        if kind == "gone":
            state.tombstone_keys.append(key)
            state.deleted.setdefault(key.rsplit("/", 1)[-1][len("gone-") :], "")
        elif kind is not None:
            doc = _read_segment(target, key, source, keys)
            state.segment_keys.append(key)
            state.has_base = state.has_base or kind == "base"
            for rec in doc.get("records", []):
                _merge_record(state.records, rec)
            for backup_id, when in doc.get("deleted", {}).items():
                state.deleted[backup_id] = when
    return state


# --- reading ---------------------------------------------------------------------------


def load_records(target: Target, source: str, keys: KeyRing) -> list[Record]:
    """The records of ``source``'s backups at ``target``, oldest first: from the index,
    which is built from the manifests when missing and rebuilt when it fails its check."""
    for _ in range(READ_ATTEMPTS):
        try:
            state = read_state(target, source, keys)
        except ObjectNotFound:
            continue  # a compaction replaced a segment under us: list again
        except IndexInvalid as exc:
            log.warning("target '%s': %s; rebuilding the index of %s from the manifests",
                        target.name, exc, source)  # fmt: skip
            return rebuild(target, source, keys)
        if not state.has_base:
            return rebuild(target, source, keys)
        return state.live()
    return rebuild(target, source, keys)


def rebuild(target: Target, source: str, keys: KeyRing | None) -> list[Record]:
    """Records from every manifest of ``source``; with a key ring, written as a new base
    that replaces the segments found before the scan (best effort: a reader without write
    access still gets its listing)."""
    before = [o.key for o in target.list(_index_prefix(source)) if _kind(o.key)]
    records = scan_records(target, source)
    if keys is not None:
        try:
            _write_segment(target, source, "base", keys, records)
            register_source(target, source)
            for key in before:
                target.delete(key)
        except TargetError as exc:
            log.warning("target '%s': cannot write the index of %s (%s); listing from the manifests",
                        target.name, source, exc)  # fmt: skip
    return records


def scan_records(target: Target, source: str | None) -> list[Record]:
    """A record of every manifest (of ``source``, or of all sources), oldest first, read
    one at a time: the whole manifests (file indexes) are never all in memory at once."""
    records: list[Record] = []
    for info in target.list(f"{source}/" if source else ""):
        parts = info.key.split("/")
        if len(parts) != 3 or parts[2] != MANIFEST_NAME:
            continue
        manifest, problem = load_listed(target, parts[0], parts[1], info.key)
        if problem:
            log.warning("%s", problem)
        elif manifest is not None:
            records.append(record_of(manifest))
    records.sort(key=lambda r: (_dt(r["started_at"]), r["backup_id"]))
    return records


def summaries(target: Target, source: str | None, keys: KeyRing | None) -> list[Manifest]:
    """Every backup at ``target`` (of ``source``, or of every source) as record-only
    manifests (:func:`summary_of`), oldest first. Without a key ring the index cannot be
    checked: the manifests are scanned instead (slower, same answer)."""
    if keys is None:
        return [summary_of(r) for r in scan_records(target, source)]
    # Hundreds of thousands of new containers, none garbage: the collector's passes were a
    # third of a listing's CPU at 10,000 backups.
    with gc_paused():
        out = [summary_of(r) for r in iter_records(target, source, keys)]
    out.sort(key=_started)  # summary_of made every time aware UTC: no conversion per key
    return out


def _started(m: Manifest) -> tuple[datetime, str]:
    return m.started_at, m.backup_id


def iter_records(target: Target, source: str | None, keys: KeyRing) -> Iterator[Record]:
    """Records source by source (each source's oldest first)."""
    for name in [source] if source else index_sources(target):
        yield from load_records(target, name, keys)


def read_chain(
    target: Target, source: str, keys: KeyRing | None, backup_id: str | None = None
) -> list[Manifest]:
    """The whole manifests of the chain that restores ``backup_id`` (default: the newest
    backup of ``source``), oldest first: the chain is found in the index records, then only
    its manifests are read. ObjectNotFound when the target holds no such backup."""
    listed = load_records(target, source, keys) if keys else scan_records(target, source)
    records = {r["backup_id"]: r for r in listed}
    if backup_id is None and listed:
        backup_id = listed[-1]["backup_id"]  # oldest first: the last is the newest
    if backup_id is None or backup_id not in records:
        raise ObjectNotFound(
            f"target '{target.name}' holds no backup {backup_id or ''} of source {source}; "
            "list the target to see what it holds"
        )
    wanted: list[str] = []
    current = records.get(backup_id)
    while current is not None and current["backup_id"] not in wanted:
        wanted.append(current["backup_id"])
        current = records.get(current["parent_id"]) if current.get("parent_id") else None
    known = {backup_id: read_manifest(target, source, backup_id)}
    for parent_id in wanted[1:]:
        with contextlib.suppress(ObjectNotFound):  # gone behind the index: chain_for says so
            known[parent_id] = read_manifest(target, source, parent_id)
    return chain_for(target, known[backup_id], known=known)  # checks links, loops and the root


# --- sources ---------------------------------------------------------------------------


def index_sources(target: Target) -> list[str]:
    """The sources ``target`` holds backups of (catalog.target_sources: the registry)."""
    return target_sources(target)


# --- writing ---------------------------------------------------------------------------


def publish(target: Target, manifest: Manifest, keys: KeyRing) -> None:
    """Write the manifest (the backup exists from here on), then its index record. An
    index write that fails raises TargetError, so the step is retried: a backup missing
    from the index would stay unlisted until the next rebuild or :func:`reconcile`."""
    write_manifest(target, manifest)
    record_published(target, manifest, keys)


def optional_keys(config: BackupConfig) -> KeyRing | None:
    """The key ring for a reader, or None (logged) when none is configured here: the
    reader then lists from the manifests, as before the index existed."""
    try:
        return load_keys(config)
    except Exception as exc:  # noqa: BLE001 - no connection, no Airflow, a bad key file: all mean "none here"
        log.warning("no key ring, so the catalog index cannot be checked; reading the "
                    "manifests instead (slower): %s", exc)  # fmt: skip
        return None


def record_published(target: Target, manifest: Manifest, keys: KeyRing) -> None:
    """Append the record of ``manifest`` (just published, or re-written with a verification)
    to its source's index; compact the index when segments pile up."""
    _write_segment(target, manifest.source, "add", keys, [record_of(manifest)])
    register_source(target, manifest.source)
    count = sum(1 for o in target.list(_index_prefix(manifest.source)) if _kind(o.key))
    if count > COMPACT_AT:
        compact(target, manifest.source, keys)


def record_deleted(target: Target, source: str, backup_id: str) -> None:
    """Leave a tombstone for ``backup_id`` (call it once its manifest is deleted)."""
    stamp = datetime.now(UTC).isoformat()
    target.put_bytes(f"{_index_prefix(source)}gone-{backup_id}", stamp.encode())


def compact(target: Target, source: str, keys: KeyRing) -> None:
    """Fold every segment and tombstone into one base, then delete what was folded."""
    try:
        state = read_state(target, source, keys)
    except (ObjectNotFound, IndexInvalid):
        return  # another compaction ran, or a reader will rebuild: nothing to fold now
    now = datetime.now(UTC)
    horizon = now - timedelta(days=TOMBSTONE_DAYS)
    deleted = {i: (w or now.isoformat()) for i, w in state.deleted.items()}
    records = [r for i, r in state.records.items() if i not in deleted]
    kept = {i: w for i, w in deleted.items() if _dt(w) >= horizon}
    _write_segment(target, source, "base", keys, records, kept)
    for key in state.segment_keys + state.tombstone_keys:
        target.delete(key)


def reconcile(target: Target, source: str, keys: KeyRing) -> tuple[int, int]:
    """Compare the index with the manifest keys (one listing, no manifest reads); append
    the manifests it lacks and tombstone the records whose manifest is gone. Returns
    (added, removed)."""
    listed = [o.key for o in target.list(f"{source}/")]
    present = {parts[1] for key in listed if len(parts := key.split("/")) == 3 and parts[2] == MANIFEST_NAME}
    if not present and not any(_kind(key) for key in listed if "/_catalog/" in key):
        return 0, 0  # no backup and no index of this source here: nothing to start one for
    indexed = {r["backup_id"] for r in load_records(target, source, keys)}
    added = 0
    for backup_id in sorted(present - indexed):
        try:
            record_published(target, read_manifest(target, source, backup_id), keys)
            added += 1
        except BackupError as exc:  # gone meanwhile, damaged, unreachable: the next pass retries
            log.warning("target '%s': cannot index %s/%s (%s)", target.name, source, backup_id, exc)
    gone = sorted(indexed - present)
    for backup_id in gone:
        record_deleted(target, source, backup_id)
    return added, len(gone)
