"""Restore a backup (and the chain it depends on) from a target.

Only a target and the keys are needed: the catalog is read from the target itself, so a
restore works when Airflow's database is the thing that was lost.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from include.backup.catalog.catalog import chain_for, find_backup, read_manifest, verify_object
from include.backup.catalog.chains import pitr_chain
from include.backup.catalog.index import optional_keys, read_chain, summaries
from include.backup.catalog.manifest import PAYLOAD_NAME, Manifest, backup_prefix
from include.backup.catalog.signing import authenticate
from include.backup.config.schema import BackupConfig
from include.backup.dr.destinations import check_files_directory
from include.backup.errors import BackupError, IntegrityError, ObjectNotFound, RestoreRefused, TargetError
from include.backup.pipeline.stream import open_sealed
from include.backup.progress import Progress, counted
from include.backup.sources import build_source
from include.backup.targets import build_target
from include.backup.targets.tiers import FROZEN_CLASSES, request_thaw, tier_state, typical_wait
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
    target, chain, manifest, source, plan = select_chain(
        config, backup_id, target_name, until, source_name, keys
    )
    backup_id = manifest.backup_id
    # A payload frozen in an archive class cannot be read: its thaw is requested and the
    # restore refused with what to do (the restore DAG waits in its thaw sensor instead).
    thaw = thaw_chain(config, target, chain)
    if not thaw.ready:
        raise FrozenBackup(thaw.message(backup_id))
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


def select_chain(
    config: BackupConfig,
    backup_id: str | None,
    target_name: str | None,
    until: datetime | None,
    source_name: str | None,
    keys: Any,
) -> tuple[Any, list[Manifest], Manifest, Any, Any]:
    """(target, chain, the backup asked for, source, pushed-WAL plan) of a restore: the
    rules of :func:`restore_backup`'s docstring. Reads manifests and the catalog index,
    never a payload: a frozen chain is found without a thaw. ``until`` is aware UTC."""
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
    return target, chain, manifest, source, plan


# --- frozen backups (archive tiers, targets/tiers.py) ----------------------------------


class FrozenBackup(BackupError):
    """Payloads of the chain are in an archive class: a thaw was requested (or is in
    progress); the same restore succeeds once it completes."""


@dataclass
class ThawStatus:
    """Where each payload of a chain stands: frozen ones, and the thaws asked for now."""

    target: str
    storage_class: str = ""  # the (coldest) class the frozen payloads sit in
    tier: str = "Standard"  # the thaw speed asked for
    expected_wait: str = ""  # the store's typical wait for that class and speed
    frozen: list[str] = field(default_factory=list)  # backup ids whose payload is unreadable
    requested: list[str] = field(default_factory=list)  # of those, thaws requested by this call

    @property
    def ready(self) -> bool:
        return not self.frozen

    def message(self, backup_id: str) -> str:
        asked = (
            f"a thaw was requested now for {', '.join(self.requested)}"
            if self.requested
            else "a thaw was already requested and is in progress"
        )
        return (
            f"backup {backup_id} is frozen at target {self.target!r}: the payloads of "
            f"{', '.join(self.frozen)} are in {self.storage_class}, which cannot be read before a "
            f"thaw; {asked} ({self.tier} tier, typically {self.expected_wait}). Run the same "
            "restore again once the thaw completes (the restore DAG waits for it in its thaw "
            "task), or restore from another target (--target / param target)"
        )

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


# The restore DAG's thaw sensor: a check every 15 minutes (in reschedule mode: no worker
# slot held in between), given up after 72 hours (DEEP_ARCHIVE's Bulk thaw takes up to 48).
THAW_POKE_INTERVAL_S = 15 * 60
THAW_TIMEOUT_S = 72 * 3600


def thaw_poke_interval_s() -> float:
    """THAW_POKE_INTERVAL_S, or $BACKUP_THAW_POKE_SECONDS when set (> 0; read when the DAG
    is parsed): an Expedited thaw takes minutes, and a test seconds."""
    env = os.environ.get("BACKUP_THAW_POKE_SECONDS")
    if not env:
        return THAW_POKE_INTERVAL_S
    try:
        seconds = float(env)
    except ValueError:
        raise ValueError(
            f"BACKUP_THAW_POKE_SECONDS={env!r} is not a number of seconds; set e.g. 300"
        ) from None
    if seconds <= 0:
        raise ValueError(f"BACKUP_THAW_POKE_SECONDS={env!r} must be more than 0")
    return seconds


def may_freeze(config: BackupConfig) -> bool:
    """Whether a target of ``config`` uploads or archives payloads into a class that needs
    a thaw: the restore DAG then waits for thaws in a sensor before its restore task."""
    for cfg in config.targets.values():
        kind = str(getattr(cfg, "type", ""))
        archive = getattr(cfg, "archive_class", None)
        classes = {getattr(cfg, "storage_class", None), archive() if callable(archive) else None}
        if classes & FROZEN_CLASSES.get(kind, frozenset()):
            return True
    return False


def thaw_for_restore(
    config: BackupConfig,
    backup_id: str | None,
    *,
    keys: Any,
    target_name: str | None = None,
    until: datetime | None = None,
    source_name: str | None = None,
) -> ThawStatus:
    """The restore DAG's thaw sensor, one poke: the chain the restore will read, each
    frozen payload's thaw requested once, and whether all can be read now. Logs the
    expected wait while anything is frozen."""
    if until is not None:
        until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    target, chain, manifest, _source, _plan = select_chain(
        config, backup_id, target_name, until, source_name, keys
    )
    status = thaw_chain(config, target, chain)
    if status.ready:
        log.info("every payload of %s's chain at target %s can be read now", manifest.backup_id, target.name)
    else:
        asked = f"; requested now for {', '.join(status.requested)}" if status.requested else ""
        log.info(
            "waiting for a thaw at target %s: %s in %s (%s tier, typically %s)%s; this task "
            "gives its worker slot back between checks",
            target.name, ", ".join(status.frozen), status.storage_class, status.tier,
            status.expected_wait, asked,
        )  # fmt: skip
    return status


def thaw_chain(config: BackupConfig, target: Any, chain: list[Manifest]) -> ThawStatus:
    """Look at every payload of ``chain`` at ``target`` (metadata only) and request a thaw
    of each frozen one that has none in progress, at the target's ``thaw_tier``."""
    cfg = config.targets.get(target.name)
    tier = str(getattr(cfg, "thaw_tier", None) or "Standard")
    status = ThawStatus(target=target.name, tier=tier)
    kind = str(getattr(cfg, "type", ""))
    for m in chain:
        if not _has_payload(m):
            continue
        key = f"{backup_prefix(m.source, m.backup_id)}/{PAYLOAD_NAME}"
        state = tier_state(target, key)
        if state is None or state.readable:
            continue  # missing: the check before restoring says so
        status.frozen.append(m.backup_id)
        status.storage_class = str(state.storage_class)
        if not state.thawing and request_thaw(target, key, tier):
            status.requested.append(m.backup_id)
    if status.frozen:
        status.expected_wait = typical_wait(kind, status.storage_class, tier)
    return status


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
