"""The steps of a backup run, as plain functions the generated DAGs call.

Why about 500 lines: the six steps and their typed metadata, each step with the checks
that make it safe to retry; retention lives in schedule_retention.py, staging in staging.py,
the checks of what an earlier attempt of a step finished in resume.py.

Each step reads its inputs from the staging directory of the backup and hands the next a
:class:`BackupMeta` (ids, paths, sizes, hashes: never data, never secrets), a plain dict
in XCom. Every step is idempotent: a retry redoes the step from its inputs, or returns
what an earlier attempt finished once it has checked it (docs/faults.md).

The steps (``dump``, ``encrypt``, ``checksum``, ``upload``, ``verify``, ``cleanup``) take
the config (and the schedule) they run for; the ``@task`` wrappers (factory.py) resolve
them. ``run_dump`` … ``run_cleanup`` do the same for callers outside Airflow (the CLI's
``backup`` verb, tests): they load the config once and take and return XCom dicts.

    dump ─► encrypt ─► checksum ─► upload[target…] ─► verify[target…] ─► cleanup

Runs of several schedules (and of one) may overlap: the dump records its run as in flight
and retention keeps what such runs need (docs/concurrency.md; schedule_retention.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from include.backup import audit, faults
from include.backup.archiving import archive_schedule_payloads
from include.backup.assets import backup_asset_uri
from include.backup.catalog.catalog import (
    find_backup,
    latest,
    verify_object,
)
from include.backup.catalog.index import publish
from include.backup.catalog.inflight import InFlight, run_lock, source_lock, write_inflight
from include.backup.catalog.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    EncryptionInfo,
    Manifest,
    StoredObject,
    Verification,
    backup_prefix,
    utcnow,
)
from include.backup.catalog.signing import authenticate, sign
from include.backup.config.schema import BackupConfig, BackupType, Schedule
from include.backup.errors import (
    BackupError,
    IntegrityError,
    KeyNotFoundError,
    TargetError,
)
from include.backup.metrics import emit_backup_run
from include.backup.pipeline.compression import compress_writer
from include.backup.pipeline.crypto import encrypt_stream
from include.backup.pipeline.hashing import CountingWriter, sha256_file
from include.backup.progress import Progress, counted, counting_reads, file_sizes
from include.backup.resume import (
    finished_dump,
    sealed_payload,
    sealed_problems,
    signed_for,
    staged_manifest,
)
from include.backup.resume import published as find_published
from include.backup.runtime import load_config, load_keys
from include.backup.schedule_retention import (
    apply_schedule_retention,
    orphan_report,
    schedule_targets,
    sweep_schedule_orphans,
)
from include.backup.settings import plaintext_grace_s, staging_root, stale_staging_s
from include.backup.sources import build_source
from include.backup.sources.postgres.spool import spool_in_use
from include.backup.staging import (
    DRAFT_NAME,
    StagingFile,
    StagingFull,
    as_staging_full,
    backup_stage,
    fmt_bytes,
    full_message,
    remove_stale_staging,
    sweep_plaintext,
    write_private,
)
from include.backup.targets import build_target
from include.backup.targets.tiers import NOT_READ_MARK

log = logging.getLogger(__name__)

DUMP_NAME = "dump"  # compressed source stream, before encryption
STALE_STAGING_DAYS = 7  # more than STALE_STAGING_HOURS: what tests age a staging by
CHAIN_TYPES = ("FULL", "INCREMENTAL", "TRANSACTION_LOG")  # what a chain can be built from


@dataclass(frozen=True)
class BackupMeta:
    """What a step hands the next through XCom. The dump sets the first six fields,
    encrypt adds ``key_id`` and ``stored_size``, checksum ``sha256`` (and the size of what
    it hashed); a field not set yet is left out of the XCom dict, so its shape is the one
    each step has always pushed."""

    backup_id: str
    staging: str
    backup_type: str
    parent_id: str | None
    raw_size: int
    compressed_size: int
    key_id: str | None = None
    stored_size: int | None = None
    sha256: str | None = None

    @property
    def stage(self) -> Path:
        return Path(self.staging)

    def to_xcom(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _LATER_FIELDS or v is not None}

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> BackupMeta:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


_LATER_FIELDS = frozenset({"key_id", "stored_size", "sha256"})  # set by encrypt and checksum


# --- helpers ---------------------------------------------------------------------------


def make_backup_id(schedule: str, when: datetime, run_id: str) -> str:
    """Deterministic per DAG run, so a retried task finds the same staging directory and
    overwrites the same objects instead of leaving an orphan beside them. ``when`` is the
    time the backup is named by: :func:`run_started_at` for a DAG run."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = hashlib.sha256(run_id.encode()).hexdigest()[:6]
    return f"{schedule}-{stamp}-{suffix}"


def _attr(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _utc(value: Any) -> datetime | None:
    if isinstance(value, str) and value:
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def run_started_at(context: Mapping[str, Any]) -> datetime | None:
    """When a DAG run's backup was taken, for its backup id: the run's start (wall clock),
    fixed for the run so every retry gets the same id. Not the logical date: a scheduled
    run that starts hours after its interval (an unpaused DAG, a busy scheduler) would
    carry the interval's time. Falls back to run_after, then the logical date; None
    without a run. The dump task and the failure callback both name the staging with it."""
    dag_run = context.get("dag_run")
    for value in (_attr(dag_run, "start_date"), _attr(dag_run, "run_after"), context.get("logical_date")):
        when = _utc(value)
        if when is not None:
            return when
    return None


def staging_dir(config: BackupConfig, backup_id: str) -> Path:
    return staging_root(config) / backup_id


def _read_draft(stage: Path) -> Manifest:
    path = stage / DRAFT_NAME
    if not path.exists():
        raise BackupError(
            f"staging {stage} has no {DRAFT_NAME}: the dump step did not finish; "
            "clear the dump task to run the backup again"
        )
    return Manifest.from_json(path.read_bytes())


def _write_atomic(path: Path, data: bytes) -> None:
    write_private(path, data)  # 0600, and a full disk named (include/backup/staging.py)


def resolve_schedule(config: BackupConfig, name: str, step: str, backup_id: str | None = None) -> Schedule:
    """The schedule ``name``, or an error saying that it left the config (removed, made
    invalid, or renamed) after the run began, instead of a bare KeyError."""
    try:
        return config.schedule(name)
    except KeyError:
        run = f" of backup {backup_id}" if backup_id else ""
        raise BackupError(
            f"the {step} step{run} cannot run: schedule {name!r} is no longer a valid schedule "
            "of the config (it was removed, renamed or broken by an edit after this run was "
            "created; `python -m include.backup validate` names what is wrong). Restore the "
            "schedule and clear the task, or let the run fail"
        ) from None


def _config_target(config: BackupConfig, name: str, step: str, backup_id: str) -> Any:
    """The config of target ``name``, or an error saying that it left the config."""

    if name not in config.targets:
        raise BackupError(
            f"the {step} step of backup {backup_id} cannot run: target {name!r} is no longer "
            "in the config (removed or broken by an edit after this run was created; "
            "`python -m include.backup validate` names what is wrong). Restore the target "
            "and clear the task; the next run uses the new config"
        )
    return build_target(name, config.targets[name])


def _find_parent(config: BackupConfig, schedule: Schedule) -> Manifest | None:
    """The newest backup of the source held by any of the schedule's targets: the parent
    of an incremental or a log backup (whichever schedule made it; SCHEMA backups hold no
    data and start no chain). An unreachable target is skipped (another may hold it)."""

    best: Manifest | None = None
    for name, target in schedule_targets(config, schedule).items():
        try:
            found = latest(target, schedule.source, types=CHAIN_TYPES)
        except TargetError as exc:
            log.warning("cannot look for a parent backup at target %s: %s", name, exc)
            continue
        if found is not None and (best is None or found.started_at > best.started_at):
            best = found
    return best


def _choose_parent(
    config: BackupConfig, schedule: Schedule, stage: Path, backup_id: str
) -> Manifest | None:
    """The parent (for incrementals and logs), recorded with this run as in flight.

    Under the source's lock, which retention also takes: a retention pass of any schedule
    of the source either sees the record and keeps the parent (and this run's own backup
    until the run is over), or finishes before the parent is chosen."""

    if schedule.type not in (BackupType.INCREMENTAL, BackupType.TRANSACTION_LOG):
        write_inflight(stage, InFlight(backup_id, schedule.name, schedule.source))
        return None
    with source_lock(stage.parent, schedule.source, purpose=f"choosing the parent of {backup_id}"):
        parent = _find_parent(config, schedule)
        parent_id = parent.backup_id if parent is not None else None
        write_inflight(stage, InFlight(backup_id, schedule.name, schedule.source, parent_id))
    return parent


def _spool_in_use(source_cfg: Any) -> AbstractContextManager[object]:
    """A physical PostgreSQL source's WAL spool, marked in use by this dump (see
    sources.postgres.spool.spool_in_use); nothing for other sources."""
    if getattr(source_cfg, "method", None) == "physical" and source_cfg.wal_archive_dir:
        return spool_in_use(Path(source_cfg.wal_archive_dir))
    return nullcontext()


def _touch(stage: Path) -> None:
    """Mark the staging directory as used now, so that it never looks stale (see
    _remove_stale_staging) while its run is still being worked on."""
    with suppress(FileNotFoundError):
        os.utime(stage)


# --- the steps -------------------------------------------------------------------------


def run_dump(schedule_name: str, run_id: str, logical_date: datetime | None) -> dict[str, Any]:
    """:func:`dump` of the schedule ``schedule_name`` of the config; the XCom dict."""
    config = load_config()
    return dump(config, resolve_schedule(config, schedule_name, "dump"), run_id, logical_date).to_xcom()


def run_encrypt(meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`encrypt`, from and to XCom dicts."""
    return encrypt(load_config(), BackupMeta.from_xcom(meta)).to_xcom()


def run_checksum(meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`checksum`, from and to XCom dicts."""
    return checksum(load_config(), BackupMeta.from_xcom(meta)).to_xcom()


def run_upload(meta: dict[str, Any], target_name: str) -> dict[str, Any]:
    """:func:`upload`, from an XCom dict."""
    return upload(load_config(), BackupMeta.from_xcom(meta), target_name)


def run_verify(meta: dict[str, Any], target_name: str, deep: bool = False) -> dict[str, Any]:
    """:func:`verify`, from an XCom dict."""
    return verify(load_config(), BackupMeta.from_xcom(meta), target_name, deep=deep)


def run_cleanup(meta: dict[str, Any], schedule_name: str, dry_run: bool = False) -> dict[str, Any]:
    """:func:`cleanup`, from an XCom dict."""
    return cleanup(load_config(), BackupMeta.from_xcom(meta), schedule_name, dry_run=dry_run)


def dump(
    config: BackupConfig,
    schedule: Schedule,
    run_id: str,
    when: datetime | None,
    *,
    logical_date: datetime | None = None,
    dag_run_id: str | None = None,
) -> BackupMeta:
    """Stream the source through the compressor into the staging directory.

    ``when`` names the backup id (:func:`run_started_at` in a DAG run; now when None);
    ``logical_date`` and ``dag_run_id`` are recorded in the manifest.
    A retry whose earlier attempt finished (its process died before Airflow recorded it)
    returns that dump; one that did not finish starts again from nothing."""
    started = utcnow()
    backup_id = make_backup_id(schedule.name, when or started, run_id)
    stage = staging_dir(config, backup_id)
    # Plaintext of any schedule's runs that died with their worker (staging.py).
    sweep_plaintext(stage.parent, grace_s=plaintext_grace_s(), skip=backup_id)
    finished = finished_dump(stage)
    if finished is not None:
        _touch(stage)
        log.info("the dump of %s had finished in an earlier attempt: kept", backup_id)
        return _dump_meta(stage, finished)
    if stage.exists():  # a retry: start the step again from nothing
        shutil.rmtree(stage)
    try:
        backup_stage(stage.parent, backup_id)
    except OSError as exc:
        full = as_staging_full(exc, stage)
        if full is not None:
            raise full from exc
        raise

    source_cfg = config.sources[schedule.source]
    source = build_source(schedule.source, source_cfg)

    algo = config.pipeline.compression
    partial = stage / (DUMP_NAME + ".partial")
    raw_out: StagingFile | None = None
    try:
        # The run lock tells the plaintext sweep that this dump is at work, however long
        # the source keeps it from writing. Held from before the parent is chosen to the
        # end of the dump: a physical PostgreSQL source's spool is then not pruned under
        # this run (sources.postgres.spool).
        with run_lock(stage, purpose=f"dump of {backup_id}"), _spool_in_use(source_cfg):
            parent = _choose_parent(config, schedule, stage, backup_id)
            with (
                StagingFile(partial, fault="dump.mid-write") as raw_out,
                Progress(f"dump {backup_id}", _dump_estimate(source)) as progress,
            ):
                with compress_writer(
                    cast(BinaryIO, raw_out), algo, config.pipeline.compression_level
                ) as zout:
                    counter = CountingWriter(zout, progress)
                    # CountingWriter is an io.RawIOBase: it has the write/flush that sources use.
                    result = source.dump(schedule.type.value, cast(BinaryIO, counter), parent)
                raw_out.sync()
            os.replace(partial, stage / DUMP_NAME)
    except BaseException as exc:
        # Named before the partial files go, so that the free space it gives is the space
        # the dump found; the source may have wrapped the full disk in its own error.
        full = _dump_full(config, schedule, exc, raw_out, stage)
        # A failed dump leaves nothing behind (a retry starts again from nothing anyway).
        shutil.rmtree(stage, ignore_errors=True)
        if full is not None:
            raise full from exc
        raise

    manifest = Manifest(
        backup_id=backup_id,
        schedule=schedule.name,
        source=schedule.source,
        source_type=source_cfg.type,
        backup_type=result.backup_type,
        parent_id=result.parent_id,
        started_at=started,
        payload_format=result.payload_format,
        position=result.position,
        raw_size=counter.count,
        compressed_size=(stage / DUMP_NAME).stat().st_size,
        compression=algo,
        stats=result.stats,
        source_state=result.source_state,
        incomplete=result.incomplete,
        dag_run_id=dag_run_id,
        logical_date=_utc(logical_date),
    )
    try:
        _write_atomic(stage / DRAFT_NAME, manifest.to_json())
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # a dump without its draft is no use: no plaintext kept
        raise
    log.info(
        "dumped %s (%s) as %s: %d bytes raw, %d compressed",
        schedule.source, result.backup_type, backup_id, manifest.raw_size, manifest.compressed_size,
    )
    faults.hit("dump.done")
    return _dump_meta(stage, manifest)


def _dump_meta(stage: Path, manifest: Manifest) -> BackupMeta:
    return BackupMeta(
        backup_id=manifest.backup_id,
        staging=str(stage),
        backup_type=manifest.backup_type,
        parent_id=manifest.parent_id,
        raw_size=manifest.raw_size,
        compressed_size=manifest.compressed_size,
    )


def _dump_full(
    config: BackupConfig, schedule: Schedule, exc: BaseException, raw_out: StagingFile | None, stage: Path
) -> StagingFull | None:
    """A full staging disk during the dump, named with what the dump was expected to
    need (the last backup of this type); None when ``exc`` is something else."""
    if raw_out is not None and raw_out.full is not None:
        expected = _expected_dump(config, schedule)
        message = full_message(raw_out.path, raw_out.written, None, expected=expected, free=raw_out.free)
        return StagingFull(message)
    if as_staging_full(exc, stage) is None:
        return None
    return as_staging_full(exc, stage, expected=_expected_dump(config, schedule))


def _dump_estimate(source: Any) -> int | None:
    """The source's guess of the dump's raw size (``estimated_size()``, e.g. PostgreSQL's
    ``pg_database_size``) for the dump's percent and ETA; None when it has none or
    cannot tell (the dump itself then says what is wrong)."""
    estimate = getattr(source, "estimated_size", None)
    if estimate is None:
        return None
    try:
        return cast(int | None, estimate())
    except Exception as exc:  # noqa: BLE001 - only the percent is lost
        log.info("no size estimate for the dump's progress (%s)", type(exc).__name__)
        return None


def _expected_dump(config: BackupConfig, schedule: Schedule) -> str | None:
    """What the dump is expected to take in staging: the compressed size of the last
    backup of this type of the source, at the first target that answers (best effort:
    this only words an error message)."""
    for target in schedule_targets(config, schedule).values():
        try:
            last = latest(target, schedule.source, types=(schedule.type.value,))
        except Exception as exc:  # noqa: BLE001 - a message detail must not hide the full disk
            log.debug("no size estimate from target %s: %s", target.name, exc)
            continue
        if last is not None:
            return (
                f"the last {last.backup_type} backup of {schedule.source} ({last.backup_id}) "
                f"took {fmt_bytes(last.compressed_size)} compressed"
            )
    return None


def encrypt(config: BackupConfig, meta: BackupMeta) -> BackupMeta:
    """Encrypt the compressed dump into the payload container with a fresh data key.

    The plaintext dump goes as soon as the container is complete. When this step fails it
    stays (0600, in a 0700 directory) for Airflow's retry of this step only: once the task
    has failed for good, the failure callback removes it (alerts/callbacks.py), and a
    worker killed outright is covered by the staging sweep (staging.py).

    A retry whose earlier attempt finished (the dump gone, the payload and the draft with
    its encryption there) checks that the payload opens and returns the same metadata."""
    stage = meta.stage
    if not stage.is_dir():
        raise BackupError(
            f"staging {stage} of backup {meta.backup_id} is gone (cleaned up, or on another "
            "worker's disk: staging must be a volume every worker shares); clear the dump task "
            "to run the backup again"
        )
    _touch(stage)
    with run_lock(stage, purpose=f"encrypt of {meta.backup_id}"):
        done = _finished_encrypt(config, meta, stage)
        if done is None:
            try:
                done = _encrypt_dump(config, meta, stage)
            except BaseException as exc:
                (stage / (PAYLOAD_NAME + ".partial")).unlink(missing_ok=True)
                full = as_staging_full(exc, stage)  # one no StagingFile named (the draft's is)
                if full is not None:
                    raise full from exc
                raise
    faults.hit("encrypt.done")
    return done


def _finished_encrypt(config: BackupConfig, meta: BackupMeta, stage: Path) -> BackupMeta | None:
    """The payload an earlier attempt completed, once it removed the dump (resume.py).
    None while the dump is there: it is encrypted again."""
    if (stage / DUMP_NAME).exists() or not (stage / PAYLOAD_NAME).exists():
        return None
    _read_draft(stage)  # no draft: say which task to clear
    draft = sealed_payload(stage, meta.backup_id, load_keys(config))
    if draft is None or draft.encryption is None:
        return None  # nothing was sealed: _encrypt_dump says that the dump is gone
    log.info("the encrypt of %s had finished in an earlier attempt: payload checked, kept", meta.backup_id)
    return replace(meta, key_id=draft.encryption.key_id, stored_size=(stage / PAYLOAD_NAME).stat().st_size)


def _encrypt_dump(config: BackupConfig, meta: BackupMeta, stage: Path) -> BackupMeta:
    if not (stage / DUMP_NAME).exists():
        raise BackupError(
            f"staging {stage} holds no plaintext dump of backup {meta.backup_id}: it is "
            "removed when the run fails for good and by the staging sweep once untouched for "
            f"{plaintext_grace_s() / 3600:g} h, never kept; clear the dump task to run the "
            "backup again"
        )
    manifest = _read_draft(stage)
    key_id, kek = load_keys(config).active()
    partial = stage / (PAYLOAD_NAME + ".partial")
    needed = _container_size(stage / DUMP_NAME, config.pipeline.chunk_size)
    with (
        open(stage / DUMP_NAME, "rb") as src,
        StagingFile(partial, needed=needed, fault="encrypt.mid-write") as staged,
        Progress(f"encrypt {meta.backup_id}", (stage / DUMP_NAME).stat().st_size) as progress,
    ):
        dst = cast(BinaryIO, staged)  # a raw binary stream: what encrypt_stream writes to
        enc = encrypt_stream(
            src,
            dst,
            kek,
            key_id,
            chunk_size=config.pipeline.chunk_size,
            context=manifest.payload_context(),  # binds the payload to this backup
            progress=progress,
        )
        staged.sync()
    # The draft records the wrapped data key before the payload is complete and long
    # before the dump goes: a process killed between them leaves either the dump (a retry
    # encrypts again) or a payload whose key is recorded (a retry checks it and keeps it).
    manifest.encryption = EncryptionInfo(
        key_id=enc.key_id, wrapped_key=enc.wrapped_key, chunk_size=enc.chunk_size
    )
    manifest.stored_size = enc.ciphertext_size
    _write_atomic(stage / DRAFT_NAME, manifest.to_json())
    os.replace(partial, stage / PAYLOAD_NAME)
    _sync_dir(stage)  # the payload's name is on disk before the dump's goes
    # The container is complete: the plaintext (compressed) dump goes at once.
    (stage / DUMP_NAME).unlink()
    return replace(meta, key_id=enc.key_id, stored_size=enc.ciphertext_size)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _container_size(dump: Path, chunk_size: int) -> int:
    """About what the container of ``dump`` takes: 16 bytes of tag per chunk plus a
    header (for the full-disk message only)."""
    size = dump.stat().st_size
    return size + 16 * (size // chunk_size + 1) + 4096


def checksum(config: BackupConfig, meta: BackupMeta) -> BackupMeta:
    """SHA-256 of exactly what will be stored, and the final manifest, signed with the
    key ring's active key (catalog/signing.py)."""

    stage = meta.stage
    _touch(stage)
    manifest = _read_draft(stage)
    payload = stage / PAYLOAD_NAME
    with Progress(f"checksum {manifest.backup_id}", file_sizes([payload])) as progress:
        digest, size = sha256_file(payload, progress=progress)
    keys = load_keys(config)
    if signed_for(stage / MANIFEST_NAME, keys, manifest.backup_id, digest, size):
        # An earlier attempt finished: its manifest stays byte for byte what it was.
        log.info("the checksum of %s had finished in an earlier attempt: manifest kept", manifest.backup_id)
    else:
        manifest.objects = [StoredObject(name=PAYLOAD_NAME, size=size, sha256=digest)]
        manifest.stored_size = size
        manifest.finished_at = utcnow()
        key_id, kek = keys.active()
        sign(manifest, key_id, kek)
        _write_atomic(stage / MANIFEST_NAME, manifest.to_json())
    faults.hit("checksum.done")
    return replace(meta, sha256=digest, stored_size=size)


def upload(config: BackupConfig, meta: BackupMeta, target_name: str) -> dict[str, Any]:
    """Data objects first, the manifest last: until the manifest is there, the target
    holds no backup. The schedule is the one the manifest names.

    When the target already holds this backup (an earlier attempt got that far, even if
    the run's staging is gone since), the step checks it and puts nothing again."""
    stage = meta.stage
    _touch(stage)
    staged = staged_manifest(stage)
    backup_id = staged.backup_id if staged is not None else meta.backup_id
    target = _config_target(config, target_name, "upload", backup_id)
    published = find_published(target, load_keys(config), backup_id, staged, meta.sha256, meta.stored_size)
    manifest = staged or published
    if manifest is None:
        raise BackupError(
            f"the upload step of backup {backup_id} cannot run: staging {stage} holds no "
            f"{MANIFEST_NAME} (the checksum step did not finish, or the staging was removed) "
            f"and target {target_name!r} does not hold the backup; clear the dump task to run "
            "the backup again"
        )
    schedule = resolve_schedule(config, manifest.schedule, "upload", manifest.backup_id)
    if target_name not in schedule.targets:
        raise BackupError(
            f"the upload step of backup {manifest.backup_id} cannot run: target {target_name!r} "
            f"is no longer one of schedule {schedule.name!r}'s targets (the config was edited "
            "after this run was created; its retention would never prune it there). Put it "
            "back and clear the task, or let the run fail; the next run uses the new config"
        )
    if published is not None:
        log.info("backup %s is already at target %s (an earlier attempt): kept", backup_id, target_name)
        return {"backup_id": backup_id, "target": target_name, "stored_size": published.stored_size}
    prefix = backup_prefix(manifest.source, manifest.backup_id)
    # A manifest of this id naming another payload (an attempt of an earlier encrypt)
    # goes first: while the payload is replaced, the target holds no backup, never a
    # manifest over the wrong payload.
    if target.stat(f"{prefix}/{MANIFEST_NAME}") is not None:
        target.delete(f"{prefix}/{MANIFEST_NAME}")
    files = [stage / obj.name for obj in manifest.objects]
    total = sum(o.size for o in manifest.objects)
    with (
        Progress(f"upload {manifest.backup_id} to {target_name}", total) as progress,
        counting_reads(files, progress),  # counted where the target reads them (progress.py)
    ):
        stored = 0
        for obj in manifest.objects:
            info = target.put(f"{prefix}/{obj.name}", stage / obj.name)
            if info.size != obj.size:
                raise TargetError(
                    f"target {target_name!r}: stored {obj.name} is {info.size} bytes, "
                    f"expected {obj.size}; the upload was cut short — retry the task"
                )
            stored += obj.size
            if progress.done < stored:  # a client that reads the file itself (GCS): per object
                progress.set(stored)
    faults.hit("upload.before-manifest")
    publish(target, manifest, load_keys(config))  # the manifest, then its catalog index record
    audit.note(config, "backup", source=manifest.source, backup_ids=[manifest.backup_id],
               target=target_name, keys=load_keys(config))  # never raises: a failed record warns  # fmt: skip
    faults.hit("upload.done")
    log.info("uploaded %s to target %s", manifest.backup_id, target_name)
    return {"backup_id": manifest.backup_id, "target": target_name, "stored_size": manifest.stored_size}


def verify(config: BackupConfig, meta: BackupMeta, target_name: str, deep: bool = False) -> dict[str, Any]:
    """Read back what the target holds, re-hash it, compare with the manifest, and record
    the result in the manifest at that target. Fails the task when they differ.

    Works from the target and the checksum step's XCom only (not the staging directory),
    so it can be re-run after cleanup."""

    target = _config_target(config, target_name, "verify", meta.backup_id)
    stored = find_backup(target, meta.backup_id)
    problems: list[str] = []
    try:
        # An altered manifest (or one without objects) is never recorded as verified.
        authenticate(stored, load_keys(config), backup_id=meta.backup_id)
    except (IntegrityError, KeyNotFoundError) as exc:
        raise BackupError(
            f"verification of {meta.backup_id} at target {target_name!r} failed: {exc}"
        ) from exc
    try:
        payload = stored.object(PAYLOAD_NAME)
        if payload.sha256 != meta.sha256 or payload.size != meta.stored_size:
            problems.append("the manifest at the target names another payload than this run wrote")
    except KeyError as exc:
        problems.append(str(exc))
    total = sum(o.size for o in stored.objects)
    unread: list[str] = []  # frozen objects checked from the store's metadata only
    with Progress(f"verify {stored.backup_id} at {target_name}", total) as progress:
        for obj in stored.objects:
            ok, detail = verify_object(target, stored, obj.name, progress=progress)
            if not ok:
                problems.append(detail)
            elif NOT_READ_MARK in detail:
                unread.append(detail)
    if deep and not problems and not unread:  # a deep verify of frozen data waits for a thaw
        with Progress(f"deep verify {stored.backup_id} at {target_name}", total) as progress:
            problems.extend(deep_verify(config, target, stored, progress=progress))
    result = Verification(
        ok=not problems, verified_at=utcnow(), deep=deep,
        detail="; ".join(problems or unread) or "sha256 match",
    )
    stored.verification[target_name] = result
    publish(target, stored, load_keys(config))  # and the verification into the catalog index
    faults.hit("verify.done")
    if problems:
        raise BackupError(
            f"verification of {stored.backup_id} at target {target_name!r} failed: {result.detail}"
        )
    log.info("verified %s at target %s: %s", stored.backup_id, target_name, result.detail)
    return {"backup_id": stored.backup_id, "target": target_name, "ok": True, "deep": deep}


def deep_verify(
    config: BackupConfig, target: Any, manifest: Manifest, keys: Any = None, progress: Progress | None = None
) -> list[str]:
    """Check the manifest's signature, then decrypt and decompress the payload to the end
    (authenticates every chunk and the payload's binding to this backup). ``keys``
    defaults to the configured key ring."""

    keys = keys if keys is not None else load_keys(config)
    try:
        authenticate(manifest, keys)
        with target.open(f"{backup_prefix(manifest.source, manifest.backup_id)}/{PAYLOAD_NAME}") as raw:
            return sealed_problems(counted(raw, progress), keys, manifest)
    except BackupError as exc:
        return [str(exc)]


def cleanup(
    config: BackupConfig, meta: BackupMeta, schedule_name: str, *, dry_run: bool = False
) -> dict[str, Any]:
    """Remove this run's staging, stale staging of earlier failed runs, and apply the
    schedule's retention at every target. Takes the schedule's name, not the schedule:
    this run's staging goes even when the schedule has left the config since the dump."""
    stage = meta.stage
    if not dry_run:
        if stage.exists():  # gone: an earlier attempt of this step emitted, then removed it
            emit_backup_run(meta.to_xcom(), schedule_name, stage)  # reads the manifest in stage; never raises
        # Before the schedule is looked up: a schedule edited out of the config since the
        # dump must not leave this run's staging behind.
        shutil.rmtree(stage, ignore_errors=True)
        _remove_stale_staging(stage.parent, schedule_name, known={s.name for s in config.schedules})
        sweep_plaintext(stage.parent, grace_s=plaintext_grace_s())
        faults.hit("cleanup.staging-removed")
    schedule = resolve_schedule(config, schedule_name, "cleanup", meta.backup_id)
    deleted = apply_schedule_retention(config, schedule, dry_run=dry_run)
    orphans = sweep_schedule_orphans(config, schedule, dry_run=dry_run)
    archived = archive_schedule_payloads(config, schedule, dry_run=dry_run)  # what retention kept
    faults.hit("cleanup.done")
    return {"backup_id": meta.backup_id, "deleted": deleted, "archived": archived, **orphan_report(orphans)}


def backup_event(config: BackupConfig, meta: BackupMeta, schedule_name: str) -> tuple[str, dict[str, Any]]:
    """(asset URI, extra) of the asset event the cleanup task emits for a verified backup:
    ``backup://<source>``, with the backup's id, sizes and targets (metadata only), so that
    ``GET /api/v2/assets/events`` follows backups and a DAG can be scheduled on them.
    Cleanup runs only once every target's verify passed: each target holds it, verified."""
    schedule = resolve_schedule(config, schedule_name, "cleanup", meta.backup_id)
    extra: dict[str, Any] = {
        "backup_id": meta.backup_id,
        "schedule": schedule.name,
        "source": schedule.source,
        "backup_type": meta.backup_type,
        "parent_id": meta.parent_id,
        "raw_size": meta.raw_size,
        "compressed_size": meta.compressed_size,
        "stored_size": meta.stored_size,
        "sha256": meta.sha256,
        "targets": list(schedule.targets),
    }
    return backup_asset_uri(schedule.source), extra


def _remove_stale_staging(root: Path, schedule_name: str, *, known: set[str] | None = None) -> None:
    """Staging of failed or killed runs is kept for retries, for STALE_STAGING_HOURS (24)
    untouched; then any schedule's cleanup removes it, as dr_monitor does (staging.py).
    ``schedule_name`` and ``known`` no longer narrow it: every schedule's goes."""
    remove_stale_staging(root, None, stale_s=stale_staging_s())


def summary(meta: dict[str, Any]) -> str:
    return json.dumps(meta, default=str, sort_keys=True)
