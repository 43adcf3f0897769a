"""Manifest authentication: who may write to a target must not be able to forge a backup.

A manifest is signed with HMAC-SHA-256 under a key derived (HKDF-SHA-256) from the
key-encryption key that the key ring names ``auth.key_id``; the key ring alone can sign, so
write access to a target is not enough to alter what a manifest says (hashes, chain,
positions, type). The MAC covers the canonical JSON of every field except ``verification``
(written later, per target, by the verify step, which re-reads the data itself) and
``auth``. See docs/container-format.md ("Manifest authentication") and docs/security.md.

Manifests made before signing existed (``auth`` absent, format_version 1) are accepted with
a warning; a format_version 2 manifest without a signature is refused (stripping the
signature must not downgrade a backup to "legacy").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from include.backup.catalog.manifest import MANIFEST_NAME, Manifest, ManifestAuth
from include.backup.errors import IntegrityError, KeyNotFoundError

log = logging.getLogger(__name__)

ALGORITHM = "HMAC-SHA256"
_HKDF_INFO = b"airflow-backup manifest-mac v1"
_DOMAIN = b"AFBK-MANIFEST\x00"  # the MAC input starts with this, so it cannot be another message
# Names that become parts of object keys at a target: a manifest naming "../x" would make
# a restore read someone else's object.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}")

KeyLookup = Callable[[str], bytes]


class AuthStatus(StrEnum):
    SIGNED = "signed"  # signature verified
    UNSIGNED = "unsigned"  # a legacy manifest: nothing authenticated


def mac_key(kek: bytes) -> bytes:
    """The MAC key derived from a key-encryption key (never the KEK itself)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(kek)


def signed_bytes(manifest: Manifest) -> bytes:
    """Exactly what the MAC covers."""
    body = manifest.model_dump(mode="json", exclude={"verification", "auth"})
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _mac(manifest: Manifest, kek: bytes) -> str:
    return hmac.new(mac_key(kek), signed_bytes(manifest), hashlib.sha256).hexdigest()


def sign(manifest: Manifest, key_id: str, kek: bytes) -> Manifest:
    """Set ``manifest.auth`` (and format_version 2). Call it once every signed field is final."""
    manifest.format_version = 2
    manifest.auth = None
    manifest.auth = ManifestAuth(algorithm=ALGORITHM, key_id=key_id, mac=_mac(manifest, kek))
    return manifest


def check_shape(manifest: Manifest, *, source: str | None = None, backup_id: str | None = None) -> None:
    """What must hold for any manifest before it is trusted with a restore or a verify:
    it lists objects, the names it puts into object keys are plain names, and it sits in
    its own folder (``source``/``backup_id``, when the caller knows them)."""
    where = f"manifest of {manifest.source}/{manifest.backup_id}"
    for what, value in (("source", manifest.source), ("backup_id", manifest.backup_id)):
        if not _SAFE_NAME.fullmatch(value):
            raise IntegrityError(f"{where}: {what} {value[:80]!r} is not a plain name; refusing it")
    if manifest.parent_id is not None and not _SAFE_NAME.fullmatch(manifest.parent_id):
        raise IntegrityError(f"{where}: parent_id {manifest.parent_id[:80]!r} is not a plain name")
    if not manifest.objects:
        raise IntegrityError(
            f"{where} lists no objects: it describes no data, so it is not a backup "
            "(the manifest was altered or written by a faulty tool)"
        )
    for obj in manifest.objects:
        if not _SAFE_NAME.fullmatch(obj.name) or obj.name == MANIFEST_NAME:
            raise IntegrityError(f"{where}: object name {obj.name[:80]!r} is not a plain file name")
    if (source is not None and manifest.source != source) or (
        backup_id is not None and manifest.backup_id != backup_id
    ):
        raise IntegrityError(
            f"manifest in folder {source}/{backup_id} describes backup "
            f"{manifest.source}/{manifest.backup_id}: it was copied into the wrong folder; "
            "refusing it"
        )


def authenticate(
    manifest: Manifest,
    keys: KeyLookup,
    *,
    source: str | None = None,
    backup_id: str | None = None,
) -> AuthStatus:
    """Check shape and signature. Raises IntegrityError when the manifest was altered (or
    signed with a key that is not the one it names), KeyNotFoundError when the key ring
    lacks its key; returns UNSIGNED for a legacy manifest (logged as a warning)."""
    check_shape(manifest, source=source, backup_id=backup_id)
    auth = manifest.auth
    if auth is None:
        if manifest.format_version >= 2:
            raise IntegrityError(
                f"manifest of {manifest.backup_id} has format_version {manifest.format_version} "
                "but no signature: the signature was removed; refusing it"
            )
        log.warning(
            "manifest of %s is unsigned (made before manifests were signed): its contents "
            "are not authenticated",
            manifest.backup_id,
        )
        return AuthStatus.UNSIGNED
    if auth.algorithm != ALGORITHM:
        raise IntegrityError(
            f"manifest of {manifest.backup_id}: unknown signature algorithm {auth.algorithm!r}"
        )
    try:
        kek = keys(auth.key_id)
    except KeyError as exc:
        raise KeyNotFoundError(
            f"manifest of {manifest.backup_id} is signed with key id {auth.key_id!r}, which is "
            "not in the key ring: add that key back to check it"
        ) from exc
    # Bytes: compare_digest refuses str with non-ASCII characters (a hostile "mac" may hold any).
    given = auth.mac.encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(_mac(manifest, kek).encode("ascii"), given):
        raise IntegrityError(
            f"manifest of {manifest.backup_id} failed authentication: it was altered after it "
            f"was signed (or signed with another key than {auth.key_id!r}); refusing it — "
            "restore from another target or another backup"
        )
    return AuthStatus.SIGNED
