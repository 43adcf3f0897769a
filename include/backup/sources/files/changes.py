"""What the files source does with paths that vanished or changed while it read them.

A path listed but gone when it was opened (a file, or a whole folder renamed or deleted
away), or a file whose size or mtime moved while it was copied, means the archive no longer
matches the source at any one moment. By default (``on_changed: fail``) that fails the dump
with the paths named, so no backup looks good that is not. ``on_changed: warn`` publishes it
anyway, with the paths in ``stats["warnings"]`` and the manifest marked ``incomplete``.
"""

from __future__ import annotations

import logging
from typing import Any

from include.backup.config import schema
from include.backup.errors import SourceError

log = logging.getLogger(__package__)

# The stats keys (lists capped at MAX_LISTED, plus "<key>_count") the dump fills, and how a
# message names them.
CHANGE_KEYS = {"vanished": "vanished", "changed_during_read": "changed while read"}
NAMED = 5  # paths named in the error; the manifest's stats keep up to MAX_LISTED


def changed_paths(stats: dict[str, Any]) -> tuple[list[str], int]:
    """("path (what happened)" for the listed paths, total count) from a dump's stats."""
    named = [f"{p} ({how})" for key, how in CHANGE_KEYS.items() for p in stats[key]]
    return named, sum(stats[f"{key}_count"] for key in CHANGE_KEYS)


def check_changes(name: str, cfg: schema.FilesSource, stats: dict[str, Any]) -> bool:
    """Raise SourceError when paths vanished or changed during the dump and the source
    says ``on_changed: fail``; with ``warn``, record them in ``stats["warnings"]`` and
    return True (the backup is incomplete). False when nothing changed."""
    named, count = changed_paths(stats)
    if not count:
        return False
    shown = ", ".join(named[:NAMED]) + (f" and {count - NAMED} more" if count > NAMED else "")
    if cfg.on_changed == "fail":
        raise SourceError(
            f"source {name!r} (files): {count} path(s) vanished or changed while the backup "
            f"read them: {shown}. A folder that vanished counts once for all it held. The "
            "backup would not match the source, so none was made. Run it again when nothing "
            "moves or writes there (or back up a file-system snapshot), exclude paths that "
            f"change all the time in sources.{name}.exclude, or set sources.{name}.on_changed: "
            "warn to publish such backups marked incomplete"
        )
    warning = (
        f"incomplete: {count} path(s) vanished or changed while the backup read them: {shown}"
    )
    stats["warnings"].insert(0, warning)
    log.warning("source %s: %s; the backup is published marked incomplete", name, warning)
    return True
