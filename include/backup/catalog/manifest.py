"""The backup manifest: the JSON document that makes a set of stored objects a backup.

It is written last at each target (an object without a manifest is not a backup) and holds
everything needed to verify and restore the backup from that target alone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "payload"
# 2: signed (``auth``) and its payload bound to it (container version 2). 1 is still read.
FORMAT_VERSION = 2


def utcnow() -> datetime:
    return datetime.now(UTC)


class StoredObject(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str  # relative to the backup's folder at the target, e.g. "payload"
    size: int  # bytes as stored (ciphertext)
    sha256: str  # hex digest of the stored bytes


class EncryptionInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str = "AES-256-GCM-STREAM"
    key_id: str
    wrapped_key: str  # base64 of the data key wrapped by the key-encryption key
    chunk_size: int


class ManifestAuth(BaseModel):
    """The manifest's signature (catalog/signing.py): HMAC-SHA-256 under a key derived
    from the key-encryption key ``key_id``, over everything but ``verification``."""

    model_config = ConfigDict(extra="forbid")
    algorithm: str = "HMAC-SHA256"
    key_id: str
    mac: str  # hex


class Verification(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool
    verified_at: datetime
    deep: bool = False  # True when the payload was also decrypted and decompressed to the end
    detail: str = ""


_OPTIONAL_RUN_FIELDS = ("dag_run_id", "logical_date")  # left out of a manifest's JSON while None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    backup_id: str
    schedule: str
    source: str  # source name from the config
    source_type: str  # postgres | mongo | files
    backup_type: str  # FULL | INCREMENTAL | TRANSACTION_LOG | SCHEMA (what was really done)
    parent_id: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    payload_format: str  # e.g. "tar", "pg_dump-custom"
    position: dict[str, Any] = Field(default_factory=dict)  # LSN, WAL range, oplog ts...
    raw_size: int = 0  # bytes the source produced
    compressed_size: int = 0
    stored_size: int = 0  # sum of stored object sizes
    compression: str = "zstd"
    encryption: EncryptionInfo | None = None
    objects: list[StoredObject] = Field(default_factory=list)
    stats: dict[str, Any] = Field(default_factory=dict)  # row counts, file counts...
    source_state: dict[str, Any] = Field(default_factory=dict)  # e.g. the file index
    verification: dict[str, Verification] = Field(default_factory=dict)  # per target name
    auth: ManifestAuth | None = None  # None: made before manifests were signed
    # True: the source moved under the dump (files that vanished or changed while read, with
    # the source's on_changed: warn) and the backup lacks part of it; stats["warnings"] says
    # what. Signed like every field; left out of the JSON while False (below).
    incomplete: bool = False
    # The Airflow DAG run that made the backup, and its logical date (the data interval a
    # scheduled run stands for; the backup id is named by when the dump started instead).
    # None for the CLI and for backups made before the fields existed; left out of the JSON
    # while None, like ``incomplete``.
    dag_run_id: str | None = None
    logical_date: datetime | None = None

    @model_serializer(mode="wrap")
    def _omit_complete(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump ``incomplete`` only when True and the run fields only when set: the signed
        bytes of every manifest made before the fields existed stay what they were
        (catalog/signing.py signs the dump), and such a manifest stays readable by earlier
        versions."""
        data: dict[str, Any] = handler(self)
        if not self.incomplete:
            data.pop("incomplete", None)
        for name in _OPTIONAL_RUN_FIELDS:
            if data.get(name, 0) is None:
                data.pop(name)
        return data

    def to_json(self) -> bytes:
        """The manifest as written to a target: sorted keys, indented by one space. The
        same bytes as ``json.dumps(..., indent=1, sort_keys=True)``, 3-4x faster: the
        standard library's indenting encoder is pure Python (a file index of 200 entries
        took 16 ms), so the compact C encoder writes and msgspec re-indents."""
        compact = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return msgspec.json.format(compact.encode(), indent=1)

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)

    def object(self, name: str) -> StoredObject:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"backup {self.backup_id} has no object {name!r}")

    @property
    def verified(self) -> bool:
        return any(v.ok for v in self.verification.values())

    def payload_context(self) -> bytes:
        """What the payload container is bound to (its authenticated context): a payload
        made for another backup, source, type or parent fails to open as this one's."""
        binding = {
            "backup_id": self.backup_id,
            "backup_type": self.backup_type,
            "parent_id": self.parent_id,
            "source": self.source,
        }
        return json.dumps(binding, sort_keys=True, separators=(",", ":")).encode()


def backup_prefix(source: str, backup_id: str) -> str:
    """Folder of one backup at a target, relative to the target root."""
    return f"{source}/{backup_id}"
