"""Restore of the files source: a FULL and its incrementals, checked, then staged.

Everything is checked before anything is written (the chain, ``only``, the destination);
the chain is extracted into a staged sibling (:mod:`.stage`) and published only when every
payload read to its authenticated end.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from include.backup.catalog.chains import ChainRules, check_chain
from include.backup.catalog.manifest import Manifest
from include.backup.errors import RestoreRefused
from include.backup.sources.base import drain
from include.backup.sources.files.extract import _Restorer
from include.backup.sources.files.index import PAYLOAD_FORMAT, SOURCE_TYPE
from include.backup.sources.files.stage import _commit, _make_stage, _remove_tree

_FORMAT = (
    "backup {m.backup_id} is a {m.source_type}/{m.payload_format} backup; the files source "
    "only restores files/tar backups"
)
CHAIN_RULES = ChainRules(
    base_format=PAYLOAD_FORMAT,
    link_format=PAYLOAD_FORMAT,
    source_type=SOURCE_TYPE,
    link_types=frozenset({"INCREMENTAL"}),
    empty="nothing to restore: the backup chain is empty; pass a FULL backup",
    wrong_format=_FORMAT,
    wrong_start=(
        "backup chain starts with {first.backup_type} backup {first.backup_id}; it must "
        "start with a FULL backup (its parent is {first.parent_id}); include the full "
        "backup and every incremental after it"
    ),
    wrong_link=(
        "backup chain has {cur.backup_type} backup {cur.backup_id} after "
        "{prev.backup_id}; only INCREMENTAL backups may follow the FULL one"
    ),
    wrong_parent=(
        "gap in backup chain: incremental {cur.backup_id} has parent "
        "{cur.parent_id} but follows {prev.backup_id}; backup {cur.parent_id} is "
        "missing from the chain (or the chain is out of order)"
    ),
)


def _normalize_only(only: list[str] | None) -> list[str] | None:
    if only is None:
        return None
    out = []
    for raw in only:
        parts = [p for p in PurePosixPath(raw.strip("/")).parts if p != "."]
        if ".." in parts:
            raise RestoreRefused(
                f"only path {raw!r} contains '..'; give paths inside the backup"
            )
        if not parts:
            return None  # "/" or "": everything
        out.append("/".join(parts))
    return out


def _check_destination(dest: Path, overwrite: bool) -> None:
    # A destination that is a symlink to a directory is fine: the user named it.
    if os.path.lexists(dest) and not dest.exists():
        raise RestoreRefused(
            f"restore destination {dest} is a symlink to nothing; remove it or name a "
            "directory"
        )
    if dest.exists() and not dest.is_dir():
        raise RestoreRefused(
            f"restore destination {dest} exists and is not a directory"
        )
    if dest.exists() and not overwrite and any(dest.iterdir()):
        raise RestoreRefused(
            f"restore destination {dest} is not empty; restore into an empty or new "
            "directory, or pass overwrite=True to write over its contents"
        )


def restore_chain(
    name: str,
    chain: Iterable[tuple[Manifest, BinaryIO]],
    into: str,
    *,
    only: list[str] | None = None,
    overwrite: bool = False,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Restore a full backup and its incrementals, in order, into directory ``into``.

    Everything is checked before anything is written: the chain (FULL first, each
    next one's parent_id is the previous backup_id), ``only`` and the destination.
    ``until`` is refused: files backups have no transaction log to replay.
    """
    if until is not None:
        raise RestoreRefused(
            f"files source {name!r}: point-in-time recovery needs transaction-log "
            "backups, which files sources do not have; restore a backup by its id instead"
        )
    links = list(chain)
    check_chain([m for m, _ in links], CHAIN_RULES)
    only_paths = _normalize_only(only)
    dest = Path(into)
    _check_destination(dest, overwrite)
    # Everything goes into a temporary sibling first; only a chain whose every payload
    # read to its authenticated end reaches ``into`` (a new one is renamed into place,
    # an existing one gets the restored entries moved in). On any failure the sibling
    # is removed and a pre-existing ``into`` is untouched.
    stage = _make_stage(dest)
    try:
        restorer = _Restorer(stage, only_paths)
        for i, (manifest, stream) in enumerate(links):
            if i > 0:
                restorer.delete(
                    manifest.source_state.get("deleted", []), manifest.backup_id
                )
            restorer.extract(manifest, stream)
            drain(stream)  # authenticates the container's last chunk
        _commit(stage, dest, restorer)
    except BaseException:
        _remove_tree(stage)
        raise
    return restorer.result()
