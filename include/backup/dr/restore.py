"""Restore a backup (and the chain it depends on) from a target.

Only a target and the keys are needed: the catalog is read from the target itself, so a
restore works when Airflow's database is the thing that was lost.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from include.backup.catalog.catalog import chain_for, find_backup, read_manifest, verify_object
from include.backup.catalog.chains import pitr_chain
from include.backup.catalog.index import optional_keys, read_chain, summaries
from include.backup.catalog.manifest import PAYLOAD_NAME, Manifest, backup_prefix
from include.backup.catalog.signing import authenticate
from include.backup.config.schema import BackupConfig
from include.backup.dr.destinations import check_files_directory
from include.backup.errors import IntegrityError, ObjectNotFound, RestoreRefused, TargetError
from include.backup.pipeline.stream import open_sealed
from include.backup.progress import Progress, counted
from include.backup.sources import build_source
from include.backup.targets import build_target
from include.backup.wal.plan import pushed_plan

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    backup_id: str
    target: str
    into: str
    chain: list[str]
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)
    until: datetime | None = None  # the point in time asked for, if any
    source: str = ""  # the restored backup's source (metrics)
    # Backups of the chain marked incomplete at dump time (the source moved under them).
    incomplete: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the restore lacks, said why


def incomplete_note(manifest: Manifest) -> str:
    """What to say about a backup marked incomplete: its id and the dump's first warning."""
    warnings = manifest.stats.get("warnings") or ["the source changed during its dump"]
    return f"backup {manifest.backup_id} is INCOMPLETE ({warnings[0]})"


def locate(config: BackupConfig, backup_id: str, target_name: str | None = None) -> tuple[Any, Manifest]:
    """The first target (the named one, else any in config order) holding ``backup_id``."""

    names = [target_name] if target_name else list(config.targets)
    if target_name and target_name not in config.targets:
        raise RestoreRefused(
            f"no target named {target_name!r} in the config; known: {', '.join(config.targets)}"
        )
    errors: list[str] = []
    for name in names:
        target = build_target(name, config.targets[name])
        try:
            return target, find_backup(target, backup_id)
        except ObjectNotFound:
            errors.append(f"{name}: not there")
        except TargetError as exc:
            errors.append(f"{name}: {exc}")
    raise RestoreRefused(
        f"backup {backup_id!r} was not found at any target ({'; '.join(errors)}); "
        "run `python -m include.backup list --target NAME` to see what each holds"
    )


def _open_chain(
    stack: ExitStack, target: Any, chain: list[Manifest], keys: Any, progress: Progress | None = None
) -> list[tuple[Manifest, BinaryIO]]:
    """One decrypting, decompressing stream per backup of the chain. All are opened up
    front (sources validate the whole chain before writing anything) and closed by
    ``stack`` once the restore is over; nothing is read until the source reads. The
    stored bytes the source's reads pull count into ``progress``."""

    streams = []
    for manifest in chain:
        key = f"{backup_prefix(manifest.source, manifest.backup_id)}/{PAYLOAD_NAME}"
        raw = counted(stack.enter_context(target.open(key)), progress)
        # The payload must be the one made for this backup (container version 2 binding).
        sealed = open_sealed(raw, keys, manifest.compression, context=manifest.payload_context())
        streams.append((manifest, sealed))
    return streams


def restore_backup(
    config: BackupConfig,
    backup_id: str | None,
    into: str,
    *,
    keys: Any,
    target_name: str | None = None,
    only: list[str] | None = None,
    overwrite: bool = False,
    until: datetime | None = None,
    source_name: str | None = None,
) -> RestoreResult:
    """Verify every object of the chain against its manifest first (so a corrupt backup is
    refused before anything is written), then stream the chain into the source's restore.

    Which chain:
    - ``backup_id``: that backup and the chain it depends on (``chain_for``); with
      ``until`` too, the chain is cut at the first backup reaching ``until`` and ``until``
      must lie inside it.
    - no ``backup_id``, ``until`` and ``source_name``: point-in-time recovery: the source's
      backups at the target (the named one, else the first in config order that can reach
      ``until``) give the chain (:func:`include.backup.catalog.chains.pitr_chain`, gaps
      checked with the source's ``continuity`` method when it has one).
    - no ``backup_id``, no ``until``, ``source_name``: the newest backup of the source.
    ``until`` (naive = UTC) is passed on to ``source.restore`` which replays up to it.
    """

    started = time.monotonic()
    if until is not None:
        until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    plan = None
    if backup_id is not None:
        target, manifest = locate(config, backup_id, target_name)
        if source_name is not None and manifest.source != source_name:
            raise RestoreRefused(
                f"backup {backup_id} is of source {manifest.source!r}, not {source_name!r}"
            )
        source = _build(config, manifest.source, build_source)
        chain = chain_for(target, manifest)
        if until is not None:
            chain = pitr_chain(chain, until, _continuity(source))
    elif source_name is not None:
        source = _build(config, source_name, build_source)
        # A source whose WAL is pushed (wal-push): its base backup, then that WAL.
        plan = pushed_plan(config, source_name, target_name, until, keys)
        target, chain = plan[:2] if plan else _find_chain(config, source_name, target_name, until, source)
        manifest = chain[-1]
    else:
        raise RestoreRefused(
            "name the backup to restore (backup_id), or the source (source_name) for its "
            "newest backup or a point in time (until)"
        )
    backup_id = manifest.backup_id
    if getattr(config.sources.get(manifest.source), "type", None) == "files":
        check_files_directory(into, manifest.source)  # before anything is read or written
    total = sum(o.size for m in chain for o in m.objects)
    with Progress(f"check {backup_id} before restoring", total) as checked:
        for m in chain:
            # Signed manifests are checked against the key ring: write access to a target is
            # not enough to point a restore at other data (catalog/signing.py).
            authenticate(m, keys)
            for obj in m.objects:
                ok, detail = verify_object(target, m, obj.name, progress=checked)
                if not ok:
                    raise IntegrityError(
                        f"refusing to restore {backup_id}: {m.backup_id}/{obj.name} at target "
                        f"{target.name!r} does not match its manifest ({detail}); restore from "
                        "another target or an earlier backup"
                    )
    log.info(
        "restoring %s (chain %s) into %s%s",
        backup_id,
        [m.backup_id for m in chain],
        into,
        f" up to {until.isoformat()}" if until else "",
    )
    kwargs: dict[str, Any] = {"only": only, "overwrite": overwrite, **({"pushed": plan[2]} if plan else {})}
    if until is not None:
        kwargs["until"] = until
    notes = [incomplete_note(m) for m in chain if m.incomplete]
    for note in notes:
        log.warning("restoring %s: %s; what vanished or changed then is not restored", backup_id, note)
    payloads = sum(m.object(PAYLOAD_NAME).size for m in chain if _has_payload(m))
    with ExitStack() as stack, Progress(f"restore {backup_id} into {into}", payloads) as progress:
        streams = _open_chain(stack, target, chain, keys, progress)
        stats = source.restore(streams, into, **kwargs)
    return RestoreResult(
        backup_id=backup_id,
        target=target.name,
        into=into,
        chain=[m.backup_id for m in chain],
        seconds=time.monotonic() - started,
        stats=stats,
        until=until,
        source=manifest.source,
        incomplete=[m.backup_id for m in chain if m.incomplete],
        warnings=notes,
    )


def _has_payload(manifest: Manifest) -> bool:
    return any(o.name == PAYLOAD_NAME for o in manifest.objects)


def _build(config: BackupConfig, source_name: str, build_source: Any) -> Any:
    if source_name not in config.sources:
        raise RestoreRefused(
            f"source {source_name!r} is not defined in the config (known: "
            f"{', '.join(config.sources) or 'none'}); add it under sources: to say how to "
            "restore it"
        )
    return build_source(source_name, config.sources[source_name])


def _continuity(source: Any) -> Any:
    fn = getattr(source, "continuity", None)
    return fn if callable(fn) else None


def _whole_chain(target: Any, source: str, keys: Any, chain: str | list[Manifest]) -> list[Manifest]:
    """The whole manifests of a chain the catalog index found (it holds records only): of
    the chain ending at the backup id ``chain``, or of the record-only ``chain``. A manifest
    deleted since the index was written makes the chain unusable at this target."""
    try:
        if isinstance(chain, str):
            return read_chain(target, source, keys, chain)
        return [read_manifest(target, source, m.backup_id) for m in chain]
    except ObjectNotFound as exc:
        raise IntegrityError(f"{exc}; the catalog index is behind the target (list --rebuild-index)") from exc


def _find_chain(
    config: BackupConfig,
    source_name: str,
    target_name: str | None,
    until: datetime | None,
    source: Any,
) -> tuple[Any, list[Manifest]]:
    """The first target (the named one, else config order) whose backups of
    ``source_name`` give a chain to ``until`` (or to the newest backup)."""

    if target_name and target_name not in config.targets:
        raise RestoreRefused(
            f"no target named {target_name!r} in the config; known: {', '.join(config.targets)}"
        )
    names = [target_name] if target_name else list(config.targets)
    first_error: Exception | None = None
    notes: list[str] = []
    keys = optional_keys(config)  # the chain is found in the catalog index: only its manifests are read
    for name in names:
        target = build_target(name, config.targets[name])
        try:
            backups = summaries(target, source_name, keys)
        except TargetError as exc:
            notes.append(f"{name}: {exc}")
            continue
        if not backups:
            notes.append(f"{name}: no backups of {source_name}")
            continue
        try:
            if until is None:
                return target, _whole_chain(target, source_name, keys, backups[-1].backup_id)
            chain = pitr_chain(backups, until, _continuity(source))
            return target, _whole_chain(target, source_name, keys, chain)
        except (RestoreRefused, IntegrityError) as exc:
            notes.append(f"{name}: {exc}")
            if first_error is None:
                first_error = exc
    if first_error is not None:
        if len(names) == 1:
            raise first_error
        raise type(first_error)(
            f"no target can restore source {source_name!r}"
            + (f" to {until.isoformat()}" if until else "")
            + ": "
            + "; ".join(notes)
        ) from first_error
    raise RestoreRefused(
        f"no backup of source {source_name!r} was found at any target ({'; '.join(notes)}); "
        "run `python -m include.backup list --target NAME` to see what each holds"
    )
