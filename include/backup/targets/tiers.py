"""Storage classes (archive tiers) of the object stores, behind the Target interface.

What each store calls its classes, which of them must be thawed before a read (S3 GLACIER
and DEEP_ARCHIVE, Azure Archive), and the typical wait of a thaw live here, beside the
store-neutral calls the rest of the code uses: :func:`tier_state` (the class, whether the
object can be read now, its size and the store's own checksums, read from the object's
metadata only), :func:`move_to_class` (S3 copy-in-place, Azure set tier, GCS rewrite) and
:func:`request_thaw` (S3 restore_object, Azure rehydrate by setting a readable tier). A
target without classes (local disk, SFTP, FTP) answers "always readable" and refuses a
move with a message that says so.

Payloads go to the configured ``storage_class``; manifests, the catalog index, audit and
run records always go to the store's hot class (:data:`HOT_CLASS`), so listing and
planning never wait on a thaw.

Nothing here imports a provider SDK: the stores' methods do, at first use.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from include.backup.errors import TargetError

# Every class a store offers, warmest first (the order archive_storage_class is checked by:
# an archive class must be colder than the upload class).
STORAGE_CLASSES: dict[str, tuple[str, ...]] = {
    "s3": ("STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"),
    "azure_blob": ("Hot", "Cool", "Cold", "Archive"),
    "gcs": ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"),
}
# Where manifests and every small record go: readable at once on every store.
HOT_CLASS: dict[str, str] = {"s3": "STANDARD", "azure_blob": "Hot", "gcs": "STANDARD"}
# archive_after_days moves payloads here unless archive_storage_class says otherwise.
DEFAULT_ARCHIVE_CLASS: dict[str, str] = {"s3": "GLACIER", "azure_blob": "Archive", "gcs": "ARCHIVE"}
# Classes whose objects cannot be read until a thaw (restore / rehydration) completes.
# (GCS reads every class at once; S3 GLACIER_IR is "instant retrieval".)
FROZEN_CLASSES: dict[str, frozenset[str]] = {
    "s3": frozenset({"GLACIER", "DEEP_ARCHIVE"}),
    "azure_blob": frozenset({"Archive"}),
    "gcs": frozenset(),
}
# The thaw speeds a store offers (S3 restore tiers, Azure rehydrate priorities).
THAW_TIERS: dict[str, tuple[str, ...]] = {
    "s3": ("Expedited", "Standard", "Bulk"),
    "azure_blob": ("Standard", "High"),
}
# Typical wait of a thaw by (store, class, speed), from the stores' documentation: shown
# to the user who waits, never relied on.
TYPICAL_WAIT: dict[tuple[str, str, str], str] = {
    ("s3", "GLACIER", "Expedited"): "1-5 minutes",
    ("s3", "GLACIER", "Standard"): "3-5 hours",
    ("s3", "GLACIER", "Bulk"): "5-12 hours",
    ("s3", "DEEP_ARCHIVE", "Expedited"): "not offered (DEEP_ARCHIVE has Standard and Bulk only)",
    ("s3", "DEEP_ARCHIVE", "Standard"): "up to 12 hours",
    ("s3", "DEEP_ARCHIVE", "Bulk"): "up to 48 hours",
    ("azure_blob", "Archive", "Standard"): "up to 15 hours",
    ("azure_blob", "Archive", "High"): "under 1 hour for blobs under 10 GB",
}
# How long S3 keeps the restored (readable) copy of a thawed object.
THAW_KEEP_DAYS = 7


def typical_wait(kind: str, storage_class: str, tier: str) -> str:
    return TYPICAL_WAIT.get((kind, storage_class, tier), "unknown")


@dataclass(frozen=True)
class TierState:
    """One object's class and readability, from its metadata (no data read)."""

    key: str
    size: int
    storage_class: str | None  # None: the store has no classes (local disk, SFTP, FTP)
    readable: bool  # a read would succeed now
    thawing: bool = False  # a thaw was requested and has not completed yet
    # The store's own checksums of the whole object, as the store reports them
    # ({"sha256": hex, "crc32": base64, "md5": hex, "crc32c": base64, "etag": ...}).
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def frozen(self) -> bool:
        return not self.readable


@runtime_checkable
class TieredStore(Protocol):
    """The optional part of the Target interface for stores with classes (s3, azure_blob,
    gcs). :func:`tier_state`, :func:`move_to_class` and :func:`request_thaw` call it."""

    store_kind: str  # "s3", "azure_blob", "gcs": the key of the tables above

    def tier_state(self, key: str) -> TierState | None:
        """The object's class and readability, or None when it does not exist."""
        ...

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Move the object to ``storage_class`` in place (same key, same bytes)."""
        ...

    def request_thaw(self, key: str, tier: str) -> bool:
        """Ask the store to make a frozen object readable; True when a request was made
        now, False when one was already in progress or the object is readable."""
        ...


def tier_state(target: object, key: str) -> TierState | None:
    """``key``'s class and readability at ``target``; a target without classes reports
    its objects as readable with no class."""
    if isinstance(target, TieredStore):
        return target.tier_state(key)
    info = target.stat(key)  # type: ignore[attr-defined]
    return None if info is None else TierState(key=key, size=info.size, storage_class=None, readable=True)


def move_to_class(target: object, key: str, storage_class: str) -> None:
    if not isinstance(target, TieredStore):
        raise TargetError(
            f"target '{getattr(target, 'name', '?')}': this kind of target has no storage classes; "
            "storage_class and archive_after_days apply to s3, azure_blob and gcs targets only"
        )
    check_class(target.store_kind, storage_class, getattr(target, "name", "?"))
    target.set_storage_class(key, storage_class)


def request_thaw(target: object, key: str, tier: str = "Standard") -> bool:
    if not isinstance(target, TieredStore):
        return False  # nothing there is ever frozen
    return target.request_thaw(key, tier)


def check_class(kind: str, storage_class: str, target_name: str) -> str:
    allowed = STORAGE_CLASSES.get(kind, ())
    if storage_class not in allowed:
        raise TargetError(
            f"target '{target_name}': storage class {storage_class!r} is not one of "
            f"{kind}'s ({', '.join(allowed) or 'none'})"
        )
    return storage_class


def is_colder(kind: str, colder: str, than: str) -> bool:
    order = STORAGE_CLASSES[kind]
    return order.index(colder) > order.index(than)


NOT_READ_MARK = "data NOT read"  # in every detail of a check that did not read the data
NOT_READ = NOT_READ_MARK + " (frozen in {klass}: checked from the store's metadata only)"


def metadata_check(state: TierState, size: int, sha256_hex: str) -> tuple[bool, str]:
    """Verify a frozen object without reading (thawing) it: its size, and the store's own
    checksum. A full-object SHA-256 the store keeps (S3 ChecksumSHA256 of a single-part
    object) is compared with ``sha256_hex``; any other checksum (CRC32, MD5, CRC32C, a
    multipart composite) is the store's proof of what it received, named in the detail
    but not comparable with a SHA-256. Returns (ok, detail); the detail always says the
    data was not read."""
    not_read = NOT_READ.format(klass=state.storage_class)
    if state.size != size:
        return False, f"size {state.size} bytes, manifest says {size}; {not_read}"
    stored = state.checksums.get("sha256", "")
    composite = "-" in stored or state.checksums.get("checksum_type", "FULL_OBJECT") != "FULL_OBJECT"
    if stored and not composite:
        got = _b64_hex(stored)
        if got != sha256_hex:
            why = f"the store's SHA-256 {got[:16]}… differs from the manifest's {sha256_hex[:16]}…"
            return False, f"{why}; {not_read}"
        return True, f"{size} bytes, the store's SHA-256 {got[:16]}… matches the manifest; {not_read}"
    kinds = [k for k in ("sha256", "crc32", "crc32c", "crc64nvme", "md5") if state.checksums.get(k)]
    named = (
        f"the store's own checksum ({', '.join(kinds)}) is present but not comparable with the "
        "manifest's SHA-256"
        if kinds
        else "the store keeps no checksum of it"
    )
    return True, f"{size} bytes match the manifest, {named}; {not_read}"


def _b64_hex(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value.lower()  # a store that reports hex
