"""Checks across the parts of a config that each validate on their own.

Where things live: two targets in one place (each one's retention would delete the other's
backups), and a files source that would back up the staging directory or a local target
(the backup would back up itself). Both drop the entry and report it, like a schema error.
Warnings: what is valid but unwise (the 3-2-1 rule, a failover entry the failover DAG would
refuse, WAL spools that lose segments a chain needs).

Path checks are lexical only: the config is validated at DAG parse time, where no
file-system look-ups happen, and the paths may not exist on this machine.
"""

from __future__ import annotations

import fnmatch
import posixpath
from typing import Any

from include.backup.config.messages import known_list
from include.backup.config.schema import BackupConfig, BackupType, PostgresSource, Schedule

# --- where things live: no backup of itself, one place per target ---------------------


def _norm(path: str) -> str:
    # Lexical only: the config is validated at DAG parse time, where no file-system
    # look-ups happen, and the paths may not exist on this machine.
    return posixpath.normpath("/" + path.strip("/"))


def _covers(outer: str, inner: str) -> bool:
    """``inner`` is ``outer`` or below it."""
    o, i = _norm(outer), _norm(inner)
    return i == o or i.startswith(o.rstrip("/") + "/")


def _place(target: Any) -> tuple[tuple[str, ...], str, str]:
    """(the store a target writes to, its folder in that store, the key naming it)."""
    if target.type == "local":
        return ("local",), target.path, "path"
    if target.type in ("sftp", "ftp"):
        return (target.type, target.conn_id), target.path, "path"
    container = target.container if target.type == "azure_blob" else target.bucket
    return (target.type, target.conn_id, container), target.prefix, "prefix"


def target_overlaps(targets: dict[str, Any]) -> dict[str, list[str]]:
    """A target whose folder is another's (or inside it, or around it): the two would be
    one copy, and each one's retention would delete the other's backups."""
    broken: dict[str, list[str]] = {}
    seen: list[tuple[str, tuple[str, ...], str]] = []
    for name, target in targets.items():
        store, folder, key = _place(target)
        for other, other_store, other_folder in seen:
            if store == other_store and (_covers(folder, other_folder) or _covers(other_folder, folder)):
                same = "the same place as" if _norm(folder) == _norm(other_folder) else "a place overlapping"
                broken[str(name)] = [
                    f"targets.{name}.{key}: {folder!r} is {same} target {other!r} "
                    f"({other_folder!r} on the same {'/'.join(other_store)}); two targets there "
                    "hold one copy, not two, and each one's retention deletes the other's "
                    f"backups — give targets.{name} a {key} of its own"
                ]
                break
        else:
            seen.append((str(name), store, folder))
    return broken


def _excluded_below(source: Any, root: str, inner: str) -> bool:
    """Whether the files source's excludes skip ``inner`` (or a directory above it,
    below ``root``). The same matching as sources/files/index.py: anchored patterns against the
    absolute path, others against the base name and the path below the root."""
    root_n, cur = _norm(root), _norm(inner)
    while cur != root_n and cur != "/":
        rel = cur[len(root_n.rstrip("/")) + 1 :]
        for raw in source.exclude:
            glob = raw.strip("/")
            if not glob:
                continue
            if raw.startswith("/"):
                hit = fnmatch.fnmatchcase(cur.lstrip("/"), glob)
            else:
                hit = fnmatch.fnmatchcase(posixpath.basename(cur), glob) or fnmatch.fnmatchcase(rel, glob)
            if hit:
                return True
        cur = posixpath.dirname(cur)
    return False


def source_overlaps(
    sources: dict[str, Any], targets: dict[str, Any], staging: str
) -> dict[str, list[str]]:
    """A files source that would back up the staging directory (plaintext dumps of every
    backup) or a local target (every earlier backup, again in each run)."""
    broken: dict[str, list[str]] = {}
    places = [(f"the staging directory {staging}", staging, "staging_dir (or BACKUP_STAGING_DIR)")]
    places += [
        (f"local target {t!r} ({cfg.path})", cfg.path, f"targets.{t}.path")
        for t, cfg in targets.items()
        if cfg.type == "local"
    ]
    for name, source in sources.items():
        if source.type != "files":
            continue
        issues = []
        for i, path in enumerate(source.paths):
            where = f"sources.{name}.paths[{i}]"
            if _covers(staging, path) and _norm(path) != _norm(staging):
                issues.append(
                    f"{where}: {path!r} is inside the staging directory {staging}, which holds "
                    "the plaintext dumps of running backups; back up the data itself instead"
                )
                continue
            for what, inner, key in places:
                if _covers(path, inner) and not _excluded_below(source, path, inner):
                    issues.append(
                        f"{where}: {path!r} contains {what}, so the backup would back up "
                        f"itself; add {_norm(inner) + '/'!r} to sources.{name}.exclude, "
                        f"narrow the path, or move {key} elsewhere"
                    )
        if issues:
            broken[str(name)] = issues
    return broken


def drop_broken(valid: dict[str, Any], broken: dict[str, list[str]], found: dict[str, list[str]]) -> None:
    for name, issues in found.items():
        valid.pop(name, None)
        broken.setdefault(name, []).extend(issues)


# --- warnings --------------------------------------------------------------------------


def _schedule_warnings(
    index: int, schedule: Schedule, config: BackupConfig
) -> list[str]:
    """The 3-2-1 rule: copies on at least two targets, one of them off-site."""
    label = f"schedules[{index}] ({schedule.name})"
    names = ", ".join(schedule.targets)
    warnings = []
    if len(schedule.targets) < 2:
        warnings.append(
            f"{label}.targets: only one target ({names}); the 3-2-1 rule wants copies on at "
            "least two targets — add a second target"
        )
    if not any(config.targets[t].offsite for t in schedule.targets):
        warnings.append(
            f"{label}.targets: no off-site target ({names} on-site); the 3-2-1 rule wants one "
            "copy off-site — add an s3, azure_blob, gcs, sftp or ftp target, or set "
            "offsite: true on a target that is off-site"
        )
    return warnings + media_warnings(label, [(t, config.targets[t]) for t in schedule.targets])


# The 3-2-1 rule's "two kinds of storage", by target type.
MEDIA_KINDS = {
    "local": "disk", "s3": "object store", "azure_blob": "object store", "gcs": "object store",
    "sftp": "remote file system", "ftp": "remote file system",
}  # fmt: skip


def media_kind(target: Any) -> str:
    """disk, object store or remote file system; a local path marked offsite is a mount of
    another machine's storage (a NAS), so a remote file system."""
    if target.type == "local" and target.offsite:
        return "remote file system"
    return MEDIA_KINDS.get(target.type, target.type)


def store_of(target: Any) -> tuple[str, ...]:
    """Where a target's copies really live: two targets with the same store share a fate
    (one account, bucket or server lost, both copies gone) whatever their prefixes."""
    kind = target.type
    if kind == "local":  # on-site: this machine's disks, one failure domain; off-site: a mount
        return (kind, target.path) if target.offsite else (kind, "this machine")
    if kind in ("s3", "gcs"):
        return (kind, target.conn_id, target.bucket)
    if kind == "azure_blob":
        return (kind, target.conn_id, target.container)
    return (kind, target.conn_id)  # sftp / ftp: one server


def media_warnings(label: str, targets: list[tuple[str, Any]]) -> list[str]:
    """Two or more targets, but every copy on one kind of medium, or in one store."""
    if len(targets) < 2:
        return []
    names = ", ".join(n for n, _ in targets)
    kinds = {media_kind(t) for _, t in targets}
    warnings = []
    if len(kinds) == 1:
        warnings.append(
            f"{label}.targets: every copy ({names}) is on one kind of storage ({kinds.pop()}); the "
            "3-2-1 rule wants two kinds (disk, object store, remote file system) — add a target "
            "of another kind"
        )
    if len({store_of(t) for _, t in targets}) == 1:
        warnings.append(
            f"{label}.targets: every copy ({names}) is in one store (same connection and "
            "bucket, container or server, or the same machine's disks); losing it loses every "
            "copy — put one target in another account, bucket or server"
        )
    return warnings


def _failover_warnings(config: BackupConfig) -> list[str]:
    """dr.failover entries the failover DAG would refuse when it is needed most."""
    warnings = []
    for name, settings in config.dr.failover.items():
        source = config.sources.get(name)
        if source is None:
            warnings.append(
                f"dr.failover.{name}: no source named {name!r}; "
                f"{known_list(sorted(config.sources), 'sources')} — fix the name or remove the entry"
            )
        elif (
            settings.switch is not None
            and settings.switch.kind == "promote_standby"
            and source.type != "postgres"
        ):
            warnings.append(
                f"dr.failover.{name}.switch: kind promote_standby promotes a PostgreSQL standby, but "
                f"source {name!r} is a {source.type} source — use kind command, airflow_variable "
                "or airflow_connection"
            )
    return warnings


def _spool_warnings(config: BackupConfig) -> list[str]:
    """WAL spool set-ups that lose segments a chain needs (docs/concurrency.md)."""
    warnings = []
    by_spool: dict[str, list[str]] = {}
    for name, source in config.sources.items():
        if not isinstance(source, PostgresSource) or source.method != "physical":
            continue
        spool = source.wal_archive_dir or ""
        by_spool.setdefault(spool, []).append(name)
        types = {s.type for s in config.schedules if s.source == name and s.active}
        if source.prune_wal_archive and {BackupType.INCREMENTAL, BackupType.TRANSACTION_LOG} <= types:
            warnings.append(
                f"sources.{name}.prune_wal_archive: its TRANSACTION_LOG schedule prunes WAL its "
                "INCREMENTAL schedule still needs (every segment since the base) — set "
                "prune_wal_archive: false or keep only one of the two schedule types"
            )
    for spool, names in sorted(by_spool.items()):
        if len(names) > 1:
            warnings.append(
                f"sources.{names[1]}.wal_archive_dir: {spool} is also the spool of "
                f"{', '.join(names[:1] + names[2:])}; one source's pruning deletes segments the other's "
                "chain needs — give each physical source its own archive directory"
            )
    return warnings


def config_warnings(config: BackupConfig, items: list[Any] | None) -> list[str]:
    warnings: list[str] = []
    if not config.dr.notification_emails:
        warnings.append(
            "dr.notification_emails: empty; backup failures and RPO/RTO misses will not be "
            "emailed — add at least one address"
        )
    if not items:
        warnings.append(
            "schedules: none defined; no backup DAG will be generated — add a schedule"
        )
    warnings += _failover_warnings(config) + _spool_warnings(config)
    # Walk the file's items so each warning names the position the user can find; a valid
    # schedule is always the first item carrying its name.
    pending = {s.name: s for s in config.schedules}
    for index, item in enumerate(items or []):
        name = item.get("name") if isinstance(item, dict) else None
        schedule = pending.pop(name, None) if isinstance(name, str) else None
        if schedule is not None:
            warnings += _schedule_warnings(index, schedule, config)
    return warnings
