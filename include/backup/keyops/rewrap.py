"""Moving backups off a key-encryption key: what ``keys retire KEY_ID`` does at a target.

The container's header is the associated data of every chunk (docs/container-format.md),
so a new wrap of the data key changes what every chunk is authenticated with: the payload
is re-encrypted, chunk by chunk, under a fresh data key wrapped by the active KEK, with the
same context (the backup it is bound to) and chunk size. Decrypted chunks go from the old
container straight into the new one in memory; only ciphertext touches the disk (a
temporary file in the staging root, as a target's ``put`` takes a file). Then the manifest
gets the new ``encryption`` block, the payload's new size and SHA-256, and a new signature
under the active key, and is written last, as at a backup.

Per backup, in this order, under the source's lock (so retention, which takes the same
lock, never deletes a backup while it is re-wrapped, and a deleted one is never
resurrected): read and authenticate the manifest; re-encrypt the payload to a temporary
file; put it; write the manifest. Idempotent and resumable: a backup whose manifest names
another key is skipped; one interrupted between its payload and its manifest (the payload
already under the active key, the manifest still under the old one) is finished by reading
the new payload to the end (it must decrypt, bound to this backup) and writing the manifest.
Between those two writes that target's copy fails its hash check (verify, restore): a
restore then uses another target, and the next ``keys retire`` finishes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from include.backup import faults
from include.backup.catalog import index
from include.backup.catalog.catalog import object_key, read_manifest, write_manifest
from include.backup.catalog.inflight import source_lock
from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME, EncryptionInfo, Manifest
from include.backup.catalog.signing import authenticate, sign
from include.backup.errors import BackupError, ObjectNotFound
from include.backup.keyops.audit import key_event
from include.backup.keys import KeyRing
from include.backup.pipeline.crypto import DecryptingReader, EncryptResult, encrypt_stream, read_header
from include.backup.pipeline.hashing import HashingWriter
from include.backup.targets.base import Target

log = logging.getLogger(__name__)

SCRATCH_STALE_S = 6 * 3600  # a scratch file this old belongs to a killed retire: no live one is that idle
HEADER_PEEK = 4096 + 512  # more than the largest header (context 4096, key id 255, fields)


@dataclass
class TargetResult:
    """What a retire pass did at one target."""

    target: str
    rewrapped: list[str] = field(default_factory=list)  # "<source>/<backup_id>"
    finished: list[str] = field(default_factory=list)  # interrupted earlier, completed now
    failed: dict[str, str] = field(default_factory=dict)  # "<source>/<backup_id>" -> why
    bytes_rewritten: int = 0


def uses_key(manifest: Manifest, key_id: str) -> bool:
    """Whether reading (or authenticating) this backup needs ``key_id``."""
    enc = manifest.encryption is not None and manifest.encryption.key_id == key_id
    return enc or (manifest.auth is not None and manifest.auth.key_id == key_id)


def manifest_ids(target: Target, source: str) -> list[str]:
    """The ids of ``source``'s backups at ``target`` that have a manifest (one listing)."""
    return sorted(
        parts[1]
        for info in target.list(f"{source}/")
        if len(parts := info.key.split("/")) == 3 and parts[2] == MANIFEST_NAME
    )


def retire_at_target(
    target: Target, ring: KeyRing, old_id: str, *, staging: Path, sources: list[str] | None = None
) -> TargetResult:
    """Move every backup at ``target`` that needs ``old_id`` to the ring's active key, then
    rebuild each source's catalog index (its records name the key, and its segments are
    signed with whatever key was active when they were written). One backup that fails
    is reported and the others go on: the next run retries it."""
    if old_id == ring.active_id:
        raise BackupError(f"key {old_id!r} is the active key: rotate first (keys rotate), then retire it")
    ring.get(old_id)  # the old key is needed to read what it protects
    result = TargetResult(target.name)
    for source in sources if sources is not None else index.index_sources(target):
        for backup_id in manifest_ids(target, source):
            name = f"{source}/{backup_id}"
            try:
                with source_lock(staging, source, purpose=f"re-wrapping {name} at {target.name}"):
                    _retire_one(target, ring, old_id, source, backup_id, staging, result)
            except BackupError as exc:
                log.warning("target '%s': cannot re-wrap %s: %s", target.name, name, exc)
                result.failed[name] = str(exc)
        index.rebuild(target, source, ring)
    return result


def _retire_one(
    target: Target,
    ring: KeyRing,
    old_id: str,
    source: str,
    backup_id: str,
    staging: Path,
    result: TargetResult,
) -> None:
    try:
        manifest = read_manifest(target, source, backup_id)
    except ObjectNotFound:
        return  # deleted by retention since the listing: nothing to move
    if not uses_key(manifest, old_id):
        return
    authenticate(manifest, ring, source=source, backup_id=backup_id)
    name = f"{source}/{backup_id}"
    if manifest.encryption is not None and manifest.encryption.key_id == old_id:
        header_key = _payload_key_id(target, manifest)
        if header_key == old_id:
            enc, digest, size = _reencrypt(target, manifest, ring, staging)
            faults.hit("rewrap.before-manifest")
            result.rewrapped.append(name)
            result.bytes_rewritten += size
        else:  # put earlier, manifest not written: check the new payload, then finish
            enc, digest, size = _check_payload(target, manifest, ring)
            result.finished.append(name)
        manifest.encryption = EncryptionInfo(
            algorithm=enc.algorithm, key_id=enc.key_id, wrapped_key=enc.wrapped_key, chunk_size=enc.chunk_size
        )
        for obj in manifest.objects:
            if obj.name == PAYLOAD_NAME:
                obj.size, obj.sha256 = size, digest
        manifest.stored_size = sum(o.size for o in manifest.objects)
    else:
        result.rewrapped.append(name)  # the payload is under another key: a new signature is all
    if manifest.auth is not None:  # an unsigned (legacy) manifest stays unsigned: nothing vouches for it
        key_id, kek = ring.active()
        sign(manifest, key_id, kek)
    write_manifest(target, manifest)
    key_event("rewrapped", backup=name, target=target.name, old_key=old_id, new_key=ring.active_id)


def _payload_key_id(target: Target, manifest: Manifest) -> str:
    with contextlib.closing(target.open(object_key(manifest), 0, HEADER_PEEK)) as src:
        return read_header(cast(BinaryIO, src)).key_id


def _reencrypt(
    target: Target, manifest: Manifest, ring: KeyRing, staging: Path
) -> tuple[EncryptResult, str, int]:
    """Decrypt the stored payload (bound to this backup) and encrypt it again under the
    active key into a temporary file; put it over the payload. (result, sha256, size)."""
    key_id, kek = ring.active()
    context = manifest.payload_context()
    with _scratch(staging) as path:
        with (
            contextlib.closing(target.open(object_key(manifest))) as src,
            open(path, "wb") as out,
        ):
            reader = DecryptingReader(cast(BinaryIO, src), ring, context=context)
            hashed = HashingWriter(cast(BinaryIO, out))
            enc = encrypt_stream(
                cast(BinaryIO, reader), cast(BinaryIO, hashed), kek, key_id,
                chunk_size=reader.header.chunk_size, context=context,
            )  # fmt: skip
            if not reader.finished:
                raise BackupError(f"payload of {manifest.backup_id} ended before its final chunk")
            out.flush()
        info = target.put(object_key(manifest), path)
        if info.size != hashed.count:
            raise BackupError(
                f"target '{target.name}' stored {info.size} bytes of the re-encrypted payload of "
                f"{manifest.backup_id}, {hashed.count} were written; run keys retire again"
            )
    return enc, hashed.sha256, hashed.count


def _check_payload(target: Target, manifest: Manifest, ring: KeyRing) -> tuple[EncryptResult, str, int]:
    """The payload an interrupted run already put: it must decrypt to the end, bound to
    this backup, under a key of the ring. Its hash and encryption block for the manifest."""
    sink = HashingWriter(cast(BinaryIO, _Null()))
    with contextlib.closing(target.open(object_key(manifest))) as src:
        tee = _Tee(cast(BinaryIO, src), sink)
        reader = DecryptingReader(cast(BinaryIO, tee), ring, context=manifest.payload_context())
        plain = 0
        while data := reader.read(1 << 20):
            plain += len(data)
        if not reader.finished:
            raise BackupError(f"payload of {manifest.backup_id} ended before its final chunk")
    h = reader.header
    enc = EncryptResult(h.key_id, h.wrapped_key_b64, h.chunk_size, plain, sink.count)
    return enc, sink.sha256, sink.count


@contextlib.contextmanager
def _scratch(staging: Path) -> Iterator[Path]:
    """A private (0600) temporary file in the staging root, removed afterwards (and, when a
    killed retire left one, by a later retire once it is untouched for SCRATCH_STALE_S)."""
    staging.mkdir(parents=True, exist_ok=True)
    for old in staging.glob(".rewrap-*"):
        with contextlib.suppress(OSError):  # gone meanwhile: fine
            if time.time() - old.stat().st_mtime > SCRATCH_STALE_S:
                old.unlink()
    fd, name = tempfile.mkstemp(prefix=".rewrap-", dir=staging)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


class _Null:
    def write(self, b: bytes) -> int:
        return len(b)

    def flush(self) -> None:
        pass


class _Tee:
    """A readable stream that copies what is read into ``sink`` (to hash the ciphertext)."""

    def __init__(self, src: BinaryIO, sink: HashingWriter) -> None:
        self._src, self._sink = src, sink

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self._sink.write(data)
        return data
