"""What backups one target holds, read from the target alone.

Layout at a target (keys relative to its root)::

    <source>/<backup_id>/payload         the stored (encrypted) data
    <source>/<backup_id>/manifest.json   written last: without it there is no backup

Nothing here needs Airflow's database, which may be the very thing being recovered.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from pydantic import ValidationError

from include.backup.catalog.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    Manifest,
    backup_prefix,
)
from include.backup.errors import IntegrityError, ObjectNotFound, TargetError
from include.backup.progress import Progress
from include.backup.targets.base import Target
from include.backup.targets.tiers import TieredStore, TierState, metadata_check

log = logging.getLogger(__name__)

READ_BLOCK = 4 << 20  # verify reads in 4 MiB blocks: few round trips, flat memory
# Types that start a chain: they need no parent to restore.
STANDALONE_TYPES = frozenset({"FULL", "SCHEMA"})


@dataclass
class CatalogScan:
    """The result of reading every manifest under a prefix."""

    backups: list[Manifest] = field(default_factory=list)  # sorted by started_at
    problems: list[str] = field(default_factory=list)  # one line per unusable manifest


def manifest_key(source: str, backup_id: str) -> str:
    return f"{backup_prefix(source, backup_id)}/{MANIFEST_NAME}"


def object_key(manifest: Manifest, name: str = PAYLOAD_NAME) -> str:
    return f"{backup_prefix(manifest.source, manifest.backup_id)}/{name}"


def as_utc(moment: datetime) -> datetime:
    """Manifests written by this package are aware (UTC); treat a naive one as UTC rather
    than fail to compare it."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def sort_key(manifest: Manifest) -> tuple[datetime, str]:
    return as_utc(manifest.started_at), manifest.backup_id


# --- listing ---------------------------------------------------------------------------


def scan_backups(target: Target, source: str | None = None) -> CatalogScan:
    """Every backup at ``target`` (of ``source``, or of all sources) plus a line for each
    manifest that could not be used. Never raises for one bad manifest: a listing must
    still show the good backups when one is damaged."""
    prefix = f"{source}/" if source else ""
    scan = CatalogScan()
    for info in target.list(prefix):
        parts = info.key.split("/")
        if len(parts) != 3 or parts[2] != MANIFEST_NAME:
            continue
        manifest, problem = load_listed(target, parts[0], parts[1], info.key)
        if problem:
            log.warning("%s", problem)
            scan.problems.append(problem)
        elif manifest is not None:
            scan.backups.append(manifest)
    scan.backups.sort(key=sort_key)
    return scan


def load_listed(
    target: Target, source: str, backup_id: str, key: str
) -> tuple[Manifest | None, str | None]:
    try:
        data = target.read_bytes(key)
    except ObjectNotFound:
        return None, None  # deleted (by retention) between list and read: not a problem
    except TargetError as exc:
        return None, f"target '{target.name}': cannot read manifest {key}: {exc}"
    try:
        manifest = Manifest.from_json(data)
    except (ValidationError, ValueError) as exc:
        return None, (
            f"target '{target.name}': manifest {key} is not a valid manifest "
            f"({_first_line(exc)}); backup {backup_id} cannot be used from this target"
        )
    if (manifest.source, manifest.backup_id) != (source, backup_id):
        # A manifest copied into the wrong folder would point restores at the wrong data.
        return None, (
            f"target '{target.name}': manifest {key} describes backup "
            f"{manifest.source}/{manifest.backup_id}, not {source}/{backup_id}; ignored"
        )
    return manifest, None


def list_backups(target: Target, source: str | None = None) -> list[Manifest]:
    """Every backup at ``target`` whose manifest exists and is valid, oldest first.

    Unusable manifests are logged as warnings; use :func:`scan_backups` to get them."""
    return scan_backups(target, source).backups


def read_manifest(target: Target, source: str, backup_id: str) -> Manifest:
    """The manifest of one backup. ObjectNotFound if the target does not hold it,
    IntegrityError if the stored manifest is damaged."""
    key = manifest_key(source, backup_id)
    try:
        data = target.read_bytes(key)
    except ObjectNotFound as exc:
        raise ObjectNotFound(
            f"target '{target.name}' holds no backup {backup_id} of source {source} "
            f"(no {key}); list the target to see what it holds"
        ) from exc
    try:
        manifest = Manifest.from_json(data)
    except (ValidationError, ValueError) as exc:
        raise IntegrityError(
            f"target '{target.name}': manifest {key} is damaged ({_first_line(exc)}); "
            f"restore backup {backup_id} from another target"
        ) from exc
    if (manifest.source, manifest.backup_id) != (source, backup_id):
        # A manifest copied into another backup's folder must not be taken for that backup.
        raise IntegrityError(
            f"target '{target.name}': manifest {key} describes backup "
            f"{manifest.source}/{manifest.backup_id}, not {source}/{backup_id}: it was copied "
            "into the wrong folder; restore from another target"
        )
    return manifest


def find_backup(target: Target, backup_id: str) -> Manifest:
    """The backup ``backup_id`` of whichever source it belongs to: one look per source the
    target holds (:func:`target_sources`), not a listing of every key at the target."""
    keys = [key for source in target_sources(target) if target.stat(key := manifest_key(source, backup_id))]
    if not keys:
        raise ObjectNotFound(
            f"target '{target.name}' holds no backup {backup_id}; "
            "list the target to see what it holds"
        )
    if len(keys) > 1:
        raise IntegrityError(
            f"target '{target.name}' holds backup id {backup_id} under several sources "
            f"({', '.join(keys)}); name the source explicitly"
        )
    source = keys[0].split("/", 1)[0]
    return read_manifest(target, source, backup_id)


# --- which sources a target holds (beside the catalog index: catalog/index.py) ---------

INDEX_DIR = "_catalog"
_REGISTRY = f"{INDEX_DIR}/sources/"
_COMPLETE = f"{INDEX_DIR}/complete"


def register_source(target: Target, source: str) -> None:
    target.put_bytes(f"{_REGISTRY}{source}", b"")


def target_sources(target: Target) -> list[str]:
    """The sources ``target`` holds backups of: the registry (one listing), found by one
    walk over every key the first time (a target written before the index existed)."""
    listed = [o.key for o in target.list(f"{INDEX_DIR}/")]
    names = sorted(k[len(_REGISTRY):] for k in listed if k.startswith(_REGISTRY))
    if _COMPLETE in listed:
        return names
    found = set(names)
    for info in target.list(""):
        parts = info.key.split("/")
        if len(parts) == 3 and not parts[0].startswith("_") and parts[2] == MANIFEST_NAME:
            found.add(parts[0])
    try:
        for name in sorted(found - set(names)):
            register_source(target, name)
        target.put_bytes(_COMPLETE, b"")
    except TargetError as exc:
        log.warning("target '%s': cannot record its sources (%s)", target.name, exc)
    return sorted(found)


def write_manifest(target: Target, manifest: Manifest) -> None:
    """Publish the manifest: call this after every object it lists is stored."""
    target.put_bytes(manifest_key(manifest.source, manifest.backup_id), manifest.to_json())


def latest(
    target: Target,
    source: str,
    *,
    types: Iterable[str] | None = None,
    verified_only: bool = False,
) -> Manifest | None:
    """The newest backup of ``source`` at ``target`` (of ``types``, if given).

    ``verified_only`` asks for a backup verified good at this target (or, when this target
    recorded no verification, at any target)."""
    wanted = {_type_name(t) for t in types} if types is not None else None
    for manifest in reversed(list_backups(target, source)):
        if wanted is not None and manifest.backup_type not in wanted:
            continue
        if verified_only and not verified_at(manifest, target.name):
            continue
        return manifest
    return None


def verified_at(manifest: Manifest, target_name: str) -> bool:
    """True when ``target_name`` verified the backup good, or recorded nothing and another
    target did (the copies are byte-identical, hashes come from one manifest)."""
    result = manifest.verification.get(target_name)
    if result is not None:
        return result.ok
    return manifest.verified


def _type_name(t: object) -> str:
    return str(t.value) if isinstance(t, Enum) else str(t)


# --- chains ----------------------------------------------------------------------------


def chain_for(
    target: Target, manifest: Manifest, *, known: Mapping[str, Manifest] | None = None
) -> list[Manifest]:
    """The backups needed to restore ``manifest``: its FULL first, then each incremental
    or log backup in order, ending with ``manifest`` itself.

    ``known`` (backup id -> manifest) saves re-reading manifests already listed."""
    chain = [manifest]
    seen = {manifest.backup_id}
    current = manifest
    while current.parent_id is not None:
        parent_id = current.parent_id
        if parent_id in seen:
            raise IntegrityError(
                f"backup chain of {manifest.backup_id} at target '{target.name}' loops "
                f"through {parent_id}; the manifests are damaged — restore another backup"
            )
        current = _parent(target, current, parent_id, known)
        seen.add(parent_id)
        chain.append(current)
    if current.backup_type not in STANDALONE_TYPES:
        raise IntegrityError(
            f"backup chain broken: {current.backup_id} is {current.backup_type} but names no "
            f"parent, so {manifest.backup_id} cannot be restored from target '{target.name}'"
        )
    chain.reverse()
    return chain


def _parent(
    target: Target, child: Manifest, parent_id: str, known: Mapping[str, Manifest] | None
) -> Manifest:
    if known is not None and parent_id in known:
        return known[parent_id]
    try:
        return read_manifest(target, child.source, parent_id)
    except ObjectNotFound as exc:
        raise IntegrityError(
            f"backup chain broken: {child.backup_id} needs parent {parent_id}, which target "
            f"'{target.name}' does not hold; restore from a target that holds the whole chain"
        ) from exc


# --- verification ----------------------------------------------------------------------


def verify_object(
    target: Target, manifest: Manifest, name: str = PAYLOAD_NAME, *, progress: Progress | None = None
) -> tuple[bool, str]:
    """Re-read object ``name`` of the backup from ``target`` and compare its size and
    SHA-256 with the manifest. Returns (ok, detail); a missing or altered object is a
    failed check, not an exception. Errors reaching the target still raise TargetError
    (retry later: that says nothing about the data). Bytes read count into ``progress``.
    An object frozen in an archive class (S3 GLACIER/DEEP_ARCHIVE, Azure Archive) is not
    read: its size and the store's own checksum are checked, and the detail says the data
    was not read (targets/tiers.py ``metadata_check``)."""
    label = f"{manifest.backup_id}/{name} at target '{target.name}'"
    try:
        expected = manifest.object(name)
    except KeyError:
        return False, f"{label}: the manifest lists no object {name!r}"
    frozen = _frozen_state(target, object_key(manifest, name))
    if frozen is not None:  # reading it would need a thaw: size and the store's checksum
        ok, detail = metadata_check(frozen, expected.size, expected.sha256)
        return ok, f"{label}: {detail}"
    try:
        size, digest = _hash_object(target, object_key(manifest, name), progress)
    except ObjectNotFound:
        return False, f"{label}: object missing"
    if size != expected.size:
        return False, f"{label}: size {size} bytes, manifest says {expected.size}"
    if digest != expected.sha256:
        return False, f"{label}: sha256 {digest[:16]}… differs from manifest {expected.sha256[:16]}…"
    return True, f"{label}: {size} bytes, sha256 {digest[:16]}… matches"


def _frozen_state(target: Target, key: str) -> TierState | None:
    """The object's state when it sits in a class that needs a thaw, else None (a store
    without classes is never asked)."""
    if not isinstance(target, TieredStore):
        return None
    state = target.tier_state(key)
    return state if state is not None and state.frozen else None


def _hash_object(target: Target, key: str, progress: Progress | None = None) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with target.open(key) as stream:
        while block := stream.read(READ_BLOCK):
            h.update(block)
            size += len(block)
            if progress is not None:
                progress.add(len(block))
    return size, h.hexdigest()


def _first_line(exc: Exception) -> str:
    """A one-line reason: pydantic's first line ("1 validation error for Manifest") says
    nothing, so name the first failing field instead."""
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            return f"{where}: {first['msg']}{more}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
