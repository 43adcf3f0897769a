"""The pushed WAL at a target: where each file goes, and the signed record that makes it
archived.

Layout (relative to the target root), one pair per WAL file PostgreSQL archives::

    <source>/_wal/<name>        the container: zstd, then AES-256-GCM-STREAM (the backup
                                container of docs/container-format.md), bound to the context
                                {"kind": "wal", "name": <name>, "source": <source>}
    <source>/_wal/<name>.rec    the record (JSON), written after the container

``<name>`` is what PostgreSQL names the file: a segment (24 hex digits), a timeline
history file (``00000002.history``), a backup history file or a ``.partial`` segment. A
container without its record is not archived (a push cut short): fetch ignores it and the
next push of that name replaces it. ``_wal`` starts with ``_``, so the orphan sweep and the
backup listings never take it for a backup.

The record is authenticated like a manifest (catalog/signing.py): HMAC-SHA-256 under a key
derived by HKDF-SHA-256 from the key-encryption key it names, over the canonical JSON of
every field but ``auth``, with its own HKDF info and domain prefix (a record can never pass
for a manifest, nor the other way round). Only the key ring can sign, so write access to a
target is not enough to forge or alter a segment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from include.backup.errors import IntegrityError

RECORD_FORMAT = "afbk-wal-1"
ALGORITHM = "HMAC-SHA256"
WAL_DIR = "_wal"
RECORD_SUFFIX = ".rec"
_HKDF_INFO = b"airflow-backup wal-record-mac v1"
_DOMAIN = b"AFBK-WAL-RECORD\x00"
# What PostgreSQL hands archive_command / asks restore_command for, and nothing else: a
# name from a record or a command line becomes part of an object key and of a local path.
WAL_NAME = re.compile(
    r"\A(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)\Z"
)
SEGMENT = re.compile(r"\A[0-9A-F]{24}\Z")

KeyLookup = Callable[[str], bytes]


def check_name(name: str) -> str:
    """``name`` if it is a WAL file name PostgreSQL uses, else IntegrityError."""
    if not WAL_NAME.match(name):
        raise IntegrityError(
            f"{name[:80]!r} is not a WAL file name (a segment, .history, .backup or .partial "
            "file); wal-push and wal-fetch take what PostgreSQL passes as %p / %f"
        )
    return name


def kind_of(name: str) -> str:
    if SEGMENT.match(name):
        return "segment"
    return name.rsplit(".", 1)[-1]  # history | backup | partial


def object_key(source: str, name: str) -> str:
    return f"{source}/{WAL_DIR}/{name}"


def record_key(source: str, name: str) -> str:
    return f"{source}/{WAL_DIR}/{name}{RECORD_SUFFIX}"


def context(source: str, name: str) -> bytes:
    """What a WAL container is bound to: moved under another name or source, it fails to open."""
    return json.dumps({"kind": "wal", "name": name, "source": source}, sort_keys=True,
                      separators=(",", ":")).encode()  # fmt: skip


@dataclass
class WalRecord:
    """What is known about one pushed WAL file (JSON at ``record_key``)."""

    source: str
    name: str
    size: int  # bytes of the WAL file
    sha256: str  # of the WAL file (what PostgreSQL handed over)
    stored_size: int  # bytes of the container at the target
    stored_sha256: str  # of the container
    key_id: str  # the key-encryption key of the container (and of the record's MAC)
    pushed_at: str  # ISO-8601 UTC: when the push finished (the segment's RPO time)
    compression: str = "zstd"
    format: str = RECORD_FORMAT
    auth: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return kind_of(self.name)

    def signed_bytes(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "auth"}
        return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def sign(self, kek: bytes) -> WalRecord:
        mac = hmac.new(mac_key(kek), self.signed_bytes(), hashlib.sha256).hexdigest()
        self.auth = {"algorithm": ALGORITHM, "key_id": self.key_id, "mac": mac}
        return self

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()


def mac_key(kek: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(kek)


def parse_record(data: bytes, keys: KeyLookup, *, source: str, name: str) -> WalRecord:
    """The record of ``source``/``name``, authenticated; IntegrityError when it was altered,
    forged, copied from another name or is not a record at all."""
    where = f"WAL record of {source}/{name}"
    try:
        raw: Any = json.loads(data)
        auth = raw.pop("auth")
        record = WalRecord(**raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise IntegrityError(f"{where} is not a WAL record ({type(exc).__name__}); refusing it") from None
    if record.format != RECORD_FORMAT:
        raise IntegrityError(f"{where}: unknown record format {record.format!r}; refusing it")
    signed_as = (auth.get("algorithm"), auth.get("key_id")) if isinstance(auth, dict) else None
    if signed_as != (ALGORITHM, record.key_id):
        raise IntegrityError(f"{where} carries no valid signature; refusing it")
    try:
        kek = keys(record.key_id)
    except KeyError as exc:  # KeyNotFoundError is one
        raise IntegrityError(
            f"{where} is signed with key id {record.key_id!r}, which is not in the key ring: "
            "add that key back to read it"
        ) from exc
    given = str(auth.get("mac", "")).encode("utf-8", "surrogatepass")
    expected = hmac.new(mac_key(kek), record.signed_bytes(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), given):
        raise IntegrityError(
            f"{where} failed authentication: it was altered after it was pushed (or signed "
            f"with another key than {record.key_id!r}); refusing it"
        )
    if record.source != source or record.name != name:
        raise IntegrityError(
            f"{where} describes {record.source}/{record.name}: it was copied under another "
            "name; refusing it"
        )
    record.auth = auth
    return record
