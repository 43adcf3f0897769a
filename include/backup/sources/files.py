"""The files source: file-system and configuration paths, FULL and INCREMENTAL.

Payload: one uncompressed POSIX.1-2001 (PAX) tar stream, written with tarfile's streaming
mode so nothing is held in memory. Members are stored under their absolute path without
the leading "/" (``/data/uploads/a.txt`` -> ``data/uploads/a.txt``) so several configured
roots coexist in one archive and restore lands at ``<into>/data/uploads/a.txt``.

What is kept: regular files (content, permission bits, mtime to the nanosecond), directories
(also empty ones), symlinks as symlinks (never followed), non-ASCII and long names. What is
not: owners (stored in the tar headers, but restore runs as the Airflow worker user and does
not chown), hard links (each link is stored as its own regular file), sparseness, xattrs/ACLs.
Sockets, devices and fifos are skipped with a warning in the stats.

Incrementals compare a file index (path -> type, size, mtime_ns, mode, link target) with the
parent's index kept in the parent manifest's ``source_state``; deleted paths are listed so a
chain restore removes them.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import grp
import hashlib
import logging
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from include.backup.catalog.chains import ChainRules, check_chain
from include.backup.catalog.manifest import Manifest
from include.backup.config import schema
from include.backup.errors import IntegrityError, RestoreRefused, SourceError
from include.backup.sources.base import DumpResult, drain

log = logging.getLogger(__name__)

PAYLOAD_FORMAT = "tar"
SOURCE_TYPE = "files"

# Index entry: [type, size, mtime_ns, mode, link target]. Lists, not tuples, because that is
# what comes back from the manifest's JSON and the two must compare equal.
IndexEntry = list[Any]
FILE, DIR, LINK = "f", "d", "l"

# Lists of paths kept in the stats (and so in the manifest) are capped; the *_count keys
# always hold the full number.
MAX_LISTED = 200
COPY_CHUNK = 1 << 20


# --- exclude patterns -------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    glob: str
    dirs_only: bool  # the pattern ended in "/": it only matches directories
    anchored: bool  # the pattern started with "/": it matches the absolute path


def _parse_patterns(patterns: Iterable[str]) -> list[_Pattern]:
    parsed = []
    for raw in patterns:
        dirs_only = raw.endswith("/")
        anchored = raw.startswith("/")
        glob = raw.strip("/")
        if glob:
            parsed.append(_Pattern(glob, dirs_only, anchored))
    return parsed


def _excluded(patterns: list[_Pattern], abs_path: str, rel: str, is_dir: bool) -> bool:
    """True when an entry matches an exclude pattern.

    ``rel`` is the path relative to the configured root. Unanchored patterns are tried
    against the base name and against ``rel`` (so "*.log" and "cache/*.bin" both work);
    anchored ones ("/data/uploads/tmp") against the absolute path. fnmatchcase, because
    file names are case-sensitive on the systems we back up. An excluded directory is not
    descended into, so everything under it is excluded too.
    """
    base = rel.rsplit("/", 1)[-1]
    for p in patterns:
        if p.dirs_only and not is_dir:
            continue
        if p.anchored:
            if fnmatch.fnmatchcase(abs_path.lstrip("/"), p.glob):
                return True
        elif fnmatch.fnmatchcase(base, p.glob) or fnmatch.fnmatchcase(rel, p.glob):
            return True
    return False


# --- tar header helpers ------------------------------------------------------------------


def _ns_to_pax(ns: int) -> str:
    """Exact decimal seconds for the PAX "mtime" record (tarfile would go through a float
    and lose the last digits of a nanosecond timestamp)."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


def _member_mtime_ns(member: tarfile.TarInfo) -> int:
    raw = member.pax_headers.get("mtime")
    if raw is not None:
        try:
            return int(Decimal(raw) * 1_000_000_000)
        except (InvalidOperation, ValueError):
            pass
    return int(member.mtime * 1_000_000_000)


class _Names:
    """uid/gid -> user/group name, cached: one lookup per id, not per file."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]


class _ExactSizeReader:
    """Serves exactly ``size`` bytes of a file to tarfile.

    The tar header (with the size) is already in the stream when the data is copied, so a
    file that shrinks while being read is padded with zeros and one that grows is cut at
    the announced size, as GNU tar does; the archive stays well-formed and the file is
    reported in stats["changed_during_read"]. Its index entry keeps the stat taken before
    reading, which no longer matches the file, so the next incremental takes it again.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size
        self.padded = 0

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = os.read(self._fd, min(n - got, COPY_CHUNK))
            if not chunk:
                self.padded += n - got
                parts.append(b"\0" * (n - got))
                got = n
                break
            parts.append(chunk)
            got += len(chunk)
        self._left -= got
        return b"".join(parts)


# --- dump ---------------------------------------------------------------------------------


@dataclass
class _DumpState:
    index: dict[str, IndexEntry] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("files", "dirs", "symlinks", "bytes", "excluded", "changed"):
            self.stats[key] = 0
        for key in ("vanished", "changed_during_read", "skipped_special"):
            self.stats[key] = []
            self.stats[f"{key}_count"] = 0
        self.stats["warnings"] = []

    def note(self, key: str, path: str) -> None:
        self.stats[f"{key}_count"] += 1
        if len(self.stats[key]) < MAX_LISTED:
            self.stats[key].append(_printable(path))


def _entry(kind: str, st: os.stat_result, target: str = "") -> IndexEntry:
    size = st.st_size if kind == FILE else 0
    return [kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), target]


class FilesSource:
    """Backs up configured absolute paths (files or directories) as a tar stream."""

    def __init__(self, name: str, cfg: schema.FilesSource) -> None:
        self.name = name
        self.cfg = cfg
        self._patterns = _parse_patterns(cfg.exclude)

    # -- dump --------------------------------------------------------------------------

    def dump(
        self, backup_type: str, out: BinaryIO, parent: Manifest | None
    ) -> DumpResult:
        kind = str(getattr(backup_type, "value", backup_type)).upper()
        if kind not in ("FULL", "INCREMENTAL"):
            raise SourceError(
                f"source {self.name!r} (files) cannot take a {kind} backup; "
                "use type FULL or INCREMENTAL for files sources"
            )
        parent_index = self._parent_index(parent) if kind == "INCREMENTAL" else None
        if kind == "INCREMENTAL" and parent_index is None:
            kind = "FULL"

        roots = self._check_roots()
        state = _DumpState()
        names = _Names()
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for root in roots:
                self._dump_root(root, tar, state, names, parent_index)

        deleted: list[str] = []
        if parent_index is not None:
            gone = _topmost(_arc_name(k) for k in parent_index if k not in state.index)
            deleted = [_index_key(p) for p in gone]
        state.stats["deleted"] = len(deleted)
        if kind == "FULL":
            state.stats["changed"] = state.stats["files"] + state.stats["symlinks"]
        for k, n in _tree_counts(state.index).items():
            state.stats[f"tree_{k}"] = n

        source_state: dict[str, Any] = {"file_index": state.index}
        if kind == "INCREMENTAL":
            source_state["deleted"] = deleted
        return DumpResult(
            backup_type=kind,
            payload_format=PAYLOAD_FORMAT,
            parent_id=parent.backup_id if kind == "INCREMENTAL" and parent else None,
            stats=state.stats,
            source_state=source_state,
        )

    def _parent_index(self, parent: Manifest | None) -> dict[str, IndexEntry] | None:
        """The parent's file index, or None (with a warning) when a FULL must be taken."""
        if parent is None:
            log.warning(
                "no parent backup found for incremental of source %s; taking a full backup",
                self.name,
            )
            return None
        if parent.source_type != SOURCE_TYPE:
            raise SourceError(
                f"source {self.name!r}: parent backup {parent.backup_id} is a "
                f"{parent.source_type} backup, not a files backup; the catalog passed the "
                "wrong parent"
            )
        index = parent.source_state.get("file_index")
        if not isinstance(index, dict):
            # A full is always a correct backup; failing here would block every run until
            # someone repairs the parent manifest.
            log.warning(
                "parent backup %s of source %s has no file index; taking a full backup",
                parent.backup_id,
                self.name,
            )
            return None
        return index

    def _check_roots(self) -> list[str]:
        """Every configured path must exist before anything is written."""
        roots = []
        for raw in self.cfg.paths:
            path = os.path.normpath(raw)
            if not os.path.exists(path):
                raise SourceError(
                    f"source {self.name!r}: configured path {raw} does not exist; create "
                    f"it, mount it, or remove it from sources.{self.name}.paths"
                )
            roots.append(path)
        return roots

    def _dump_root(
        self,
        root: str,
        tar: tarfile.TarFile,
        state: _DumpState,
        names: _Names,
        parent_index: dict[str, IndexEntry] | None,
    ) -> None:
        # A configured root that is a symlink is followed (the user named it to get its
        # contents): it is read through its real path but stored under the configured one.
        # Symlinks below the root are stored as symlinks.
        real = os.path.realpath(root)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise SourceError(
                f"source {self.name!r}: configured path {root} disappeared during the "
                "backup; check what removes or unmounts it and run the backup again"
            ) from None
        arc_root = root.lstrip("/")
        if not stat.S_ISDIR(st.st_mode):
            self._dump_leaf(tar, real, arc_root, st, state, names, parent_index)
            return
        stack: list[tuple[str, str, os.stat_result]] = [(real, "", st)]
        while stack:
            path, rel, dst = stack.pop()
            arc = _join(arc_root, rel)
            if _index_key(arc) in state.index:
                continue  # overlapping configured roots: already taken with another root
            children = self._list_dir(path, rel, root, state)
            if children is None:
                continue
            self._add(tar, arc, DIR, dst, state, names, parent_index, force=True)
            # Leaves now, sorted; subdirectories pushed in reverse so they pop sorted.
            # Each directory's header precedes its contents, which restore relies on.
            subdirs = []
            for child_path, child_rel, child_st in children:
                if stat.S_ISDIR(child_st.st_mode):
                    subdirs.append((child_path, child_rel, child_st))
                else:
                    self._dump_leaf(
                        tar,
                        child_path,
                        _join(arc_root, child_rel),
                        child_st,
                        state,
                        names,
                        parent_index,
                    )
            stack.extend(reversed(subdirs))

    def _list_dir(
        self, path: str, rel: str, root: str, state: _DumpState
    ) -> list[tuple[str, str, os.stat_result]] | None:
        """Sorted, lstat'ed, exclude-filtered children; None if the directory vanished."""
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            if not rel:
                raise SourceError(
                    f"source {self.name!r}: configured path {root} disappeared during the "
                    "backup; check what removes or unmounts it and run the backup again"
                ) from None
            state.note("vanished", path)
            return None
        except NotADirectoryError:
            state.note("changed_during_read", path)
            return None
        except PermissionError as e:
            raise SourceError(
                f"source {self.name!r}: cannot list directory {path} ({e.strerror}); give "
                "the Airflow worker user read and execute access, or exclude it"
            ) from None
        children = []
        for entry in entries:
            child_rel = _join(rel, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                state.note("vanished", entry.path)
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            # Anchored patterns see the configured path, not a symlinked root's real one.
            if _excluded(self._patterns, _join(root, child_rel), child_rel, is_dir):
                state.stats["excluded"] += 1
                continue
            children.append((entry.path, child_rel, st))
        return children

    def _dump_leaf(
        self,
        tar: tarfile.TarFile,
        path: str,
        arc: str,
        st: os.stat_result,
        state: _DumpState,
        names: _Names,
        parent_index: dict[str, IndexEntry] | None,
    ) -> None:
        if _index_key(arc) in state.index:
            return  # overlapping configured roots: already taken with another root
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except FileNotFoundError:
                state.note("vanished", path)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                state.note("changed_during_read", path)  # no longer a symlink
                return
            self._add(tar, arc, LINK, st, state, names, parent_index, target=target)
        elif stat.S_ISREG(st.st_mode):
            if parent_index is not None and parent_index.get(_index_key(arc)) == _entry(
                FILE, st
            ):
                # Unchanged since the parent by its listing stat: index it, skip the open.
                state.index[_index_key(arc)] = _entry(FILE, st)
                return
            self._add_file(tar, path, arc, state, names, parent_index)
        else:
            kind = _special_kind(st.st_mode)
            state.note("skipped_special", path)
            if len(state.stats["warnings"]) < MAX_LISTED:
                state.stats["warnings"].append(
                    f"skipped {kind} {_printable(path)}: not a regular file"
                )
            log.warning(
                "source %s: skipped %s %s (not a regular file)", self.name, kind, path
            )

    def _add_file(
        self,
        tar: tarfile.TarFile,
        path: str,
        arc: str,
        state: _DumpState,
        names: _Names,
        parent_index: dict[str, IndexEntry] | None,
    ) -> None:
        # O_NOFOLLOW/O_NONBLOCK: if the path was swapped for a symlink or a fifo since it
        # was listed, fail fast instead of following it or blocking on it.
        flags = (
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        )
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            state.note("vanished", path)
            return
        except PermissionError as e:
            raise SourceError(
                f"source {self.name!r}: cannot read {path} ({e.strerror}); give the Airflow "
                "worker user read access, or exclude it"
            ) from None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            state.note("changed_during_read", path)  # became a symlink after listing
            return
        try:
            st = os.fstat(
                fd
            )  # the stat of what we actually read, not of what was listed
            if not stat.S_ISREG(st.st_mode):
                state.note("changed_during_read", path)
                return
            entry = _entry(FILE, st)
            state.index[_index_key(arc)] = entry
            if parent_index is not None and parent_index.get(_index_key(arc)) == entry:
                return  # unchanged since the parent: not in this incremental
            reader = _ExactSizeReader(fd, st.st_size)
            tar.addfile(self._tarinfo(arc, tarfile.REGTYPE, st, names), reader)
            after = os.fstat(fd)
            if reader.padded or (after.st_size, after.st_mtime_ns) != (
                st.st_size,
                st.st_mtime_ns,
            ):
                state.note("changed_during_read", path)
            state.stats["files"] += 1
            state.stats["bytes"] += st.st_size
            if parent_index is not None:
                state.stats["changed"] += 1
        finally:
            os.close(fd)

    def _add(
        self,
        tar: tarfile.TarFile,
        arc: str,
        kind: str,
        st: os.stat_result,
        state: _DumpState,
        names: _Names,
        parent_index: dict[str, IndexEntry] | None,
        *,
        target: str = "",
        force: bool = False,
    ) -> None:
        """Index a directory or symlink and write it unless an incremental can skip it.

        Directories are always written (``force``): a header is 512 bytes and it is what
        lets restore put their mode and mtime back after their contents changed.
        """
        if _index_key(arc) in state.index:
            return  # overlapping configured roots: the first one wins
        entry = _entry(kind, st, target)
        state.index[_index_key(arc)] = entry
        changed = parent_index is None or parent_index.get(_index_key(arc)) != entry
        if not changed and not force:
            return
        if parent_index is not None and changed:
            state.stats["changed"] += 1
        ti = self._tarinfo(
            arc, tarfile.DIRTYPE if kind == DIR else tarfile.SYMTYPE, st, names
        )
        ti.linkname = target
        tar.addfile(ti)
        state.stats["dirs" if kind == DIR else "symlinks"] += 1

    @staticmethod
    def _tarinfo(
        arc: str, type_: bytes, st: os.stat_result, names: _Names
    ) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(arc or ".")
        ti.type = type_
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.size = st.st_size if type_ == tarfile.REGTYPE else 0
        ti.mtime = st.st_mtime_ns // 1_000_000_000
        ti.pax_headers = {"mtime": _ns_to_pax(st.st_mtime_ns)}
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname, ti.gname = names.user(st.st_uid), names.group(st.st_gid)
        return ti

    # -- restore -----------------------------------------------------------------------

    def restore(
        self,
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
                f"files source {self.name!r}: point-in-time recovery needs transaction-log "
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


# --- restore helpers ----------------------------------------------------------------------


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


def _safe_name(name: str, where: str) -> str:
    """Normalize an archive or manifest path; refuse anything that could leave ``into``."""
    if "\0" in name or name.startswith("/"):
        raise IntegrityError(f"{where}: refusing unsafe absolute path {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise IntegrityError(
            f"{where}: refusing path {name!r}: '..' would escape the restore directory"
        )
    if not parts:
        raise IntegrityError(
            f"{where}: refusing member {name!r} that names the restore root"
        )
    return "/".join(parts)


def _selected(rel: str, only: list[str] | None) -> bool:
    return only is None or any(rel == p or rel.startswith(p + "/") for p in only)


class _Restorer:
    """Applies archives to a directory without ever following a symlink while writing."""

    def __init__(self, root: Path, only: list[str] | None) -> None:
        self.root = root
        self.only = only
        self.dir_attrs: dict[
            str, tuple[int, int]
        ] = {}  # rel -> (mode, mtime_ns), set last
        self.state: dict[str, tuple[str, int]] = {}  # rel -> (type, size) as restored
        self.deleted = 0
        self.removed: set[str] = set()  # paths the chain's deleted lists removed

    # Path handling: every component below root must be a real directory.
    def _parent_dir(self, rel: str, where: str) -> str:
        """Make the parent directories of ``rel`` and return the absolute target path."""
        cur = str(self.root)
        parts = rel.split("/")
        for part in parts[:-1]:
            cur = os.path.join(cur, part)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                # umask applies, as with tar; archived directories get their mode at the end
                os.mkdir(cur, 0o777)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise IntegrityError(
                    f"{where}: refusing to write {rel!r}: {cur} is a "
                    f"{'symlink' if stat.S_ISLNK(st.st_mode) else 'file'}, and writing "
                    "through it could land outside the restore directory"
                )
        return os.path.join(cur, parts[-1])

    def _forget(self, rel: str, was_dir: bool) -> None:
        """Drop what we recorded for ``rel`` (and, for a directory, everything under it).
        The prefix scan only runs for directories, which keeps extraction linear."""
        for table in (self.dir_attrs, self.state):
            table.pop(rel, None)
            if was_dir:
                prefix = rel + "/"
                for key in [k for k in table if k.startswith(prefix)]:
                    del table[key]

    def _replace(self, path: str, rel: str) -> None:
        """Remove whatever is at ``path`` (never following a symlink) before writing."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir:
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self._forget(rel, is_dir)

    def delete(self, paths: list[str], backup_id: str) -> None:
        where = f"backup {backup_id} deleted list"
        for raw in paths:
            rel = _safe_name(_arc_name(raw), where)
            targets = (
                [rel]
                if _selected(rel, self.only)
                else [p for p in (self.only or []) if p.startswith(rel + "/")]
            )
            for t in targets:
                path = str(self.root / t)
                if self._inside_real_dirs(t) and os.path.lexists(path):
                    self._replace(path, t)
                    self.deleted += 1
                    self.removed.add(t)

    def _inside_real_dirs(self, rel: str) -> bool:
        return _inside_real_dirs(self.root, rel)

    def extract(self, manifest: Manifest, stream: BinaryIO) -> None:
        where = f"backup {manifest.backup_id}"
        counts = {"files": 0, "dirs": 0, "symlinks": 0}
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    kind = self._extract_member(tar, member, where)
                    counts[kind] += 1
        except (tarfile.TarError, EOFError) as e:
            raise IntegrityError(
                f"{where}: the payload is not a readable tar stream ({e}); it is corrupt or "
                "truncated, or was decrypted with the wrong key; try another target's copy"
            ) from e
        # tarfile ends quietly when a stream is cut at a member boundary; the manifest's
        # counts catch that.
        for key, n in counts.items():
            expected = manifest.stats.get(key)
            if isinstance(expected, int) and expected != n:
                raise IntegrityError(
                    f"{where}: the payload holds {n} {key} but the manifest lists {expected}; "
                    "the payload is truncated or does not belong to this manifest"
                )

    def _extract_member(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, where: str
    ) -> str:
        if member.isdir():
            kind = "dirs"
        elif member.issym():
            kind = "symlinks"
        elif member.isreg():
            kind = "files"
        else:
            # Hard links, devices, fifos: this source never writes them, so the archive was
            # not made by it (or was tampered with).
            raise IntegrityError(
                f"{where}: refusing member {member.name!r} of tar type {member.type!r}; the "
                "files source only writes files, directories and symlinks"
            )
        if member.isdir() and member.name.strip("/.") == "":
            return kind  # the root itself (a configured path of "/"): nothing to create
        rel = _safe_name(member.name, where)
        if not _selected(rel, self.only):
            return kind
        path = self._parent_dir(rel, where)
        mtime_ns = _member_mtime_ns(member)
        mode = stat.S_IMODE(member.mode)
        if member.isdir():
            if os.path.islink(path) or not os.path.isdir(path):
                self._replace(path, rel)
                os.mkdir(
                    path, 0o700
                )  # owner-writable until finish() sets the real mode
            self.dir_attrs[rel] = (mode, mtime_ns)
            self.state[rel] = (DIR, 0)
        elif member.issym():
            # The link is created as stored, even if it points outside the restore
            # directory: it is data. Nothing is ever written through it (_parent_dir).
            self._replace(path, rel)
            os.symlink(member.linkname, path)
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            self.state[rel] = (LINK, 0)
        else:
            self._replace(
                path, rel
            )  # never write into an existing file: it may be a hard link
            src = tar.extractfile(member)
            assert src is not None  # regular members always have data
            flags = (
                os.O_WRONLY
                | os.O_CREAT
                | os.O_EXCL
                | os.O_NOFOLLOW
                | getattr(os, "O_CLOEXEC", 0)
            )
            with open(os.open(path, flags, 0o600), "wb") as f:
                shutil.copyfileobj(src, f, COPY_CHUNK)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.utime(f.fileno(), ns=(mtime_ns, mtime_ns))
            self.state[rel] = (FILE, member.size)
        return kind

    def finish(self, root: Path | None = None) -> None:
        """Directory modes and mtimes go last (writing a child changes the parent's mtime;
        a read-only mode would stop the writes), deepest first. ``root``: where the tree
        is now (the destination, once the staged entries were moved there)."""
        base = root or self.root
        for rel in sorted(self.dir_attrs, reverse=True):
            mode, mtime_ns = self.dir_attrs[rel]
            path = str(base / rel)
            if os.path.islink(path) or not os.path.isdir(path):
                continue  # replaced since; its record would have been dropped, but be safe
            os.chmod(path, mode)
            os.utime(path, ns=(mtime_ns, mtime_ns))

    def result(self) -> dict[str, Any]:
        counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
        for kind, size in self.state.values():
            counts[{FILE: "files", DIR: "dirs", LINK: "symlinks"}[kind]] += 1
            counts["bytes"] += size
        counts["deleted"] = self.deleted
        return counts


# --- staged restore: a temporary sibling, moved into place only when all is well ---------

STAGE_MARK = ".restoring-"


def _make_stage(dest: Path) -> Path:
    """A new, empty 0700 directory ``<into>.restoring-<random>`` beside the destination
    (beside its real directory when ``into`` is a symlink to one), on the same file system
    so the final step is a rename. Missing parents of ``into`` are created. When only the
    existing ``into`` itself is writable (a mount point in a root-owned directory), the
    staged tree goes inside it as ``.restoring-<random>``."""
    real = dest.resolve() if dest.exists() else dest.absolute()
    real.parent.mkdir(parents=True, exist_ok=True)
    try:
        return Path(tempfile.mkdtemp(prefix=real.name[:200] + STAGE_MARK, dir=real.parent))
    except PermissionError:
        if not real.is_dir():
            raise
        return Path(tempfile.mkdtemp(prefix=STAGE_MARK, dir=real))


def _remove_tree(path: Path) -> None:
    """Remove a staged tree, even one whose directories were made read-only."""

    def _unlock(func: Any, p: str, _exc: Any) -> None:
        parent = os.path.dirname(p)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
        func(p)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=_unlock)


def _default_dir_mode() -> int:
    """What ``mkdir`` would give a new ``into`` (as before staged restores existed). The
    umask is read from /proc where it can be: setting it to read it back would briefly
    change it for every thread of the worker."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o777 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


def _commit(stage: Path, dest: Path, restorer: _Restorer) -> None:
    """Make the staged restore the result. A new ``into`` is the staged directory renamed;
    into an existing one (empty, or ``overwrite``) each restored entry is moved over what
    is there, after every move was checked to be possible (a symlink or file where the
    backup only implies a directory is refused before anything is moved)."""
    if not os.path.lexists(dest):
        restorer.finish()
        os.chmod(stage, _default_dir_mode())
        try:
            os.rename(stage, dest)
        except OSError as e:
            raise RestoreRefused(
                f"restore destination {dest} appeared while the restore ran ({e}); nothing "
                "was written to it; restore again into an empty or new directory"
            ) from e
        return
    root = dest.resolve()
    moves: list[tuple[str, str]] = []
    _plan_merge(str(stage), str(root), "", set(restorer.dir_attrs), moves)
    stale = _stale_deletions(root, restorer)
    for src, dst in moves:
        _clear(dst)
        try:
            os.rename(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.move(src, dst)  # ``into`` is a mount point: copy across
    for path in stale:
        _clear(path)
    restorer.finish(root)
    _remove_tree(stage)


def _plan_merge(
    src_dir: str, dst_dir: str, rel: str, explicit: set[str], moves: list[tuple[str, str]]
) -> None:
    """Collect (staged path, destination path) moves, merging into directories that exist
    at the destination as real directories."""
    for name in sorted(os.listdir(src_dir)):
        src, dst, r = os.path.join(src_dir, name), os.path.join(dst_dir, name), _join(rel, name)
        try:
            there = os.lstat(dst)
        except FileNotFoundError:
            moves.append((src, dst))
            continue
        src_is_dir = stat.S_ISDIR(os.lstat(src).st_mode)
        if src_is_dir and stat.S_ISDIR(there.st_mode):
            _plan_merge(src, dst, r, explicit, moves)
        elif src_is_dir and r not in explicit:
            # The backup only implies this directory (a parent of what it holds): the
            # symlink or file there is the user's, and writing through it could land
            # outside the restore directory.
            raise IntegrityError(
                f"refusing to restore into {dst_dir}: {dst} is a "
                f"{'symlink' if stat.S_ISLNK(there.st_mode) else 'file'} where the backup "
                "has a directory, and writing through it could land outside the restore "
                "directory; remove it or restore into an empty directory"
            )
        else:
            moves.append((src, dst))


def _stale_deletions(root: Path, restorer: _Restorer) -> list[str]:
    """Paths the chain deleted (and did not bring back) that exist at the destination:
    the restored state says they are gone, as a restore straight into it did."""
    alive: set[str] = set()
    for rel in restorer.state:
        parts = rel.split("/")
        alive.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    out = []
    for rel in sorted(restorer.removed):
        if rel in alive:
            continue
        path = str(root / rel)
        if _inside_real_dirs(root, rel) and os.path.lexists(path):
            out.append(path)
    return out


def _inside_real_dirs(root: Path, rel: str) -> bool:
    """True if no parent of ``rel`` below root is a symlink (or missing): deleting
    through a symlink would remove something outside the restore directory."""
    cur = str(root)
    for part in rel.split("/")[:-1]:
        cur = os.path.join(cur, part)
        try:
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


def _clear(path: str) -> None:
    """Remove whatever is at ``path``, never following a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        _remove_tree(Path(path))
    else:
        os.unlink(path)


# --- small helpers ------------------------------------------------------------------------


# File names are bytes; Python hands undecodable ones over as lone surrogates, which JSON
# (and so the manifest) cannot carry. Such names are indexed as NUL + hex of their bytes:
# NUL never occurs in a file name, so the form cannot collide with a real one.
_BYTES_KEY = "\0"


def _index_key(arc: str) -> str:
    try:
        arc.encode("utf-8")
        return arc
    except UnicodeEncodeError:
        return _BYTES_KEY + os.fsencode(arc).hex()


def _arc_name(key: str) -> str:
    if key.startswith(_BYTES_KEY):
        return os.fsdecode(bytes.fromhex(key[len(_BYTES_KEY) :]))
    return key


def _printable(path: str) -> str:
    """A path for stats and messages: undecodable bytes shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a and b else a or b


def _topmost(paths: Iterable[str]) -> list[str]:
    """Drop paths under another listed path: deleting a directory deletes its contents."""
    kept: list[str] = []
    for p in sorted(paths):
        if kept and p.startswith(kept[-1] + "/"):
            continue
        kept.append(p)
    return kept


def _tree_counts(index: dict[str, IndexEntry]) -> dict[str, int]:
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
    for kind, size, *_ in index.values():
        counts[{FILE: "files", DIR: "dirs", LINK: "symlinks"}[kind]] += 1
        counts["bytes"] += size
    return counts


def _special_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


# --- tree comparison (demo and tests prove a restore with these) ---------------------------


def _walk_tree(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative posix path, absolute path, lstat) for everything under root, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            yield Path(path).relative_to(root).as_posix(), path, os.lstat(path)


def tree_digest(root: Path, exclude: Iterable[str] = ()) -> dict[str, tuple[str, int, int, str]]:
    """{relative path: (type, mode, size, sha256 or link target)} for everything under root.

    Types are "f", "d", "l" ("?" for anything else); sizes are 0 for directories and links.
    Mtimes are left out on purpose (see :func:`tree_mtimes`): they are compared only where
    the caller knows they should match. ``exclude`` takes the source's exclude patterns, so
    an original tree can be compared with its restore.
    """
    patterns = _parse_patterns(exclude)
    out: dict[str, tuple[str, int, int, str]] = {}
    skipped: list[str] = []
    for rel, path, st in _walk_tree(Path(root)):
        if patterns:
            if any(rel.startswith(d + "/") for d in skipped):
                continue
            if _excluded(patterns, path, rel, stat.S_ISDIR(st.st_mode)):
                skipped.append(rel)
                continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = (LINK, mode, 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = (DIR, mode, 0, "")
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(COPY_CHUNK):
                    h.update(chunk)
            out[rel] = (FILE, mode, st.st_size, h.hexdigest())
        else:
            out[rel] = ("?", mode, 0, "")
    return out


def tree_mtimes(root: Path, *, dirs: bool = True) -> dict[str, int]:
    """{relative path: mtime_ns} (of the link itself for symlinks)."""
    return {
        rel: st.st_mtime_ns
        for rel, _, st in _walk_tree(Path(root))
        if dirs or not stat.S_ISDIR(st.st_mode)
    }


def compare_trees(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`tree_digest` (or tree_mtimes) results;
    an empty list means the trees match."""
    diffs = []
    for rel in sorted(a.keys() | b.keys()):
        if rel not in b:
            diffs.append(f"only in first: {rel} {a[rel]}")
        elif rel not in a:
            diffs.append(f"only in second: {rel} {b[rel]}")
        elif a[rel] != b[rel]:
            diffs.append(f"differs: {rel}: {a[rel]} != {b[rel]}")
    return diffs
