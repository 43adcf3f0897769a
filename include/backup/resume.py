"""What an earlier attempt of a backup step finished: the checks that let a retried step
return its output instead of failing or doing the work twice (docs/faults.md).

Airflow retries a task whose process died after the work but before its success was
recorded; each check here finds that work in staging or at a target, proves it complete
(sizes, hashes, signatures, a payload opened to the end), and hands it back. Anything that
does not pass is treated as not done: the step redoes it, or fails saying what to clear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

from include.backup.catalog.catalog import find_backup, read_manifest
from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME, Manifest, backup_prefix
from include.backup.catalog.signing import authenticate
from include.backup.errors import BackupError, IntegrityError, KeyNotFoundError, ObjectNotFound
from include.backup.pipeline.stream import open_sealed
from include.backup.staging import DRAFT_NAME, DUMP_NAME


def finished_dump(stage: Path) -> Manifest | None:
    """The draft of a dump an earlier attempt finished: not yet encrypted, and a dump of
    the size it records. None when there is none (or it is incomplete)."""
    try:
        draft = Manifest.from_json((stage / DRAFT_NAME).read_bytes())
        size = (stage / DUMP_NAME).stat().st_size
    except (OSError, ValueError):
        return None
    if draft.encryption is not None or size != draft.compressed_size:
        return None
    return draft


def sealed_payload(stage: Path, backup_id: str, keys: Any) -> Manifest | None:
    """The draft of a payload an earlier encrypt completed and whose dump it removed: the
    draft records its encryption and size, and it opens (every chunk authenticated, bound
    to this backup, the plaintext of the recorded size). None when nothing was sealed.
    Raises when the payload is there without its dump and does not open."""
    payload = stage / PAYLOAD_NAME
    draft = Manifest.from_json((stage / DRAFT_NAME).read_bytes())
    if draft.encryption is None or not payload.exists():
        return None
    size = payload.stat().st_size
    if draft.stored_size not in (0, size):  # 0: a draft from before the size was recorded
        problems = [f"it is {size} bytes, the draft records {draft.stored_size}"]
    else:
        with open(payload, "rb") as raw:
            problems = sealed_problems(raw, keys, draft)
    if problems:
        raise BackupError(
            f"staging {stage} holds the payload of backup {backup_id} but not its dump, "
            f"and the payload does not open: {'; '.join(problems)}. Clear the dump task to run "
            "the backup again"
        )
    return draft


def sealed_problems(raw: BinaryIO, keys: Any, manifest: Manifest) -> list[str]:
    """Decrypt and decompress the payload ``raw`` to the end: what is wrong with it (every
    chunk authenticated, bound to this backup, the plaintext of the recorded size)."""
    try:
        plain = open_sealed(raw, keys, manifest.compression, context=manifest.payload_context())
        total = 0
        while block := plain.read(1 << 20):
            total += len(block)
    except BackupError as exc:
        return [str(exc)]
    if total != manifest.raw_size:
        return [f"decrypted size {total} differs from the recorded {manifest.raw_size}"]
    return []


def signed_for(path: Path, keys: Any, backup_id: str, digest: str, size: int) -> bool:
    """Whether ``path`` is a signed manifest of ``backup_id`` naming a payload of this
    hash and size (the checksum step's output)."""
    try:
        manifest = Manifest.from_json(path.read_bytes())
        authenticate(manifest, keys, backup_id=backup_id)
        payload = manifest.object(PAYLOAD_NAME)
    except (OSError, ValueError, KeyError, BackupError):
        return False
    return manifest.auth is not None and payload.sha256 == digest and payload.size == size


def staged_manifest(stage: Path) -> Manifest | None:
    """The checksum step's manifest in staging; None once the staging is gone."""
    try:
        return Manifest.from_json((stage / MANIFEST_NAME).read_bytes())
    except FileNotFoundError:
        return None


def published(
    target: Any, keys: Any, backup_id: str, staged: Manifest | None, sha256: str | None, size: int | None
) -> Manifest | None:
    """This backup as ``target`` holds it, when an earlier upload published it: a signed
    manifest naming the payload this run sealed (the staged manifest's, else ``sha256``
    and ``size`` from XCom), and a payload object of that size. None otherwise."""
    try:
        if staged is not None:
            stored = read_manifest(target, staged.source, staged.backup_id)
        else:
            stored = find_backup(target, backup_id)
        authenticate(stored, keys, backup_id=backup_id)
        payload = stored.object(PAYLOAD_NAME)
    except (ObjectNotFound, IntegrityError, KeyNotFoundError, KeyError):
        return None
    if staged is not None:
        sha256, size = staged.object(PAYLOAD_NAME).sha256, staged.object(PAYLOAD_NAME).size
    if stored.auth is None or (payload.sha256, payload.size) != (sha256, size):
        return None
    info = target.stat(f"{backup_prefix(stored.source, stored.backup_id)}/{PAYLOAD_NAME}")
    return stored if info is not None and info.size == payload.size else None
