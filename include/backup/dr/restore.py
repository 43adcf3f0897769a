"""Restore a backup (and the chain it depends on) from a target.

Only a target and the keys are needed: the catalog is read from the target itself, so a
restore works when Airflow's database is the thing that was lost.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from include.backup.catalog.manifest import PAYLOAD_NAME, Manifest, backup_prefix
from include.backup.config.schema import BackupConfig
from include.backup.errors import IntegrityError, RestoreRefused, TargetError

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    backup_id: str
    target: str
    into: str
    chain: list[str]
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def locate(config: BackupConfig, backup_id: str, target_name: str | None = None) -> tuple[Any, Manifest]:
    """The first target (the named one, else any in config order) holding ``backup_id``."""
    from include.backup.catalog.catalog import find_backup
    from include.backup.errors import ObjectNotFound
    from include.backup.targets import build_target

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
    stack: ExitStack, target: Any, chain: list[Manifest], keys: Any
) -> list[tuple[Manifest, BinaryIO]]:
    """One decrypting, decompressing stream per backup of the chain. All are opened up
    front (sources validate the whole chain before writing anything) and closed by
    ``stack`` once the restore is over; nothing is read until the source reads."""
    from include.backup.pipeline.stream import open_sealed

    streams = []
    for manifest in chain:
        key = f"{backup_prefix(manifest.source, manifest.backup_id)}/{PAYLOAD_NAME}"
        raw = stack.enter_context(target.open(key))
        streams.append((manifest, open_sealed(raw, keys, manifest.compression)))
    return streams


def restore_backup(
    config: BackupConfig,
    backup_id: str,
    into: str,
    *,
    keys: Any,
    target_name: str | None = None,
    only: list[str] | None = None,
    overwrite: bool = False,
) -> RestoreResult:
    """Verify every object of the chain against its manifest first (so a corrupt backup is
    refused before anything is written), then stream the chain into the source's restore."""
    from include.backup.catalog.catalog import chain_for, verify_object
    from include.backup.sources import build_source

    started = time.monotonic()
    target, manifest = locate(config, backup_id, target_name)
    chain = chain_for(target, manifest)
    for m in chain:
        for obj in m.objects:
            ok, detail = verify_object(target, m, obj.name)
            if not ok:
                raise IntegrityError(
                    f"refusing to restore {backup_id}: {m.backup_id}/{obj.name} at target "
                    f"{target.name!r} does not match its manifest ({detail}); restore from "
                    "another target or an earlier backup"
                )
    if manifest.source not in config.sources:
        raise RestoreRefused(
            f"backup {backup_id} is of source {manifest.source!r}, which the config does not "
            "define; add it under sources: to say how to restore it"
        )
    source = build_source(manifest.source, config.sources[manifest.source])
    log.info("restoring %s (chain %s) into %s", backup_id, [m.backup_id for m in chain], into)
    with ExitStack() as stack:
        streams = _open_chain(stack, target, chain, keys)
        stats = source.restore(streams, into, only=only, overwrite=overwrite)
    return RestoreResult(
        backup_id=backup_id,
        target=target.name,
        into=into,
        chain=[m.backup_id for m in chain],
        seconds=time.monotonic() - started,
        stats=stats,
    )
