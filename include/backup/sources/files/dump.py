"""FULL and INCREMENTAL dumps of the files source: the tar stream and the file index.

Payload: one uncompressed POSIX.1-2001 (PAX) tar stream, written with tarfile's streaming
mode so nothing is held in memory, each directory's header before its contents. An
incremental writes what changed since the parent's index (directories always: their
headers carry mode and mtime) and lists the paths deleted since.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from include.backup import faults
from include.backup.catalog.manifest import Manifest
from include.backup.config import schema
from include.backup.errors import SourceError
from include.backup.sources.base import DumpResult
from include.backup.sources.files.changes import check_changes
from include.backup.sources.files.headers import _ExactSizeReader, _Names, _ns_to_pax
from include.backup.sources.files.index import (
    DIR,
    FILE,
    LINK,
    MAX_LISTED,
    PAYLOAD_FORMAT,
    SOURCE_TYPE,
    IndexEntry,
    _arc_name,
    _entry,
    _excluded,
    _index_key,
    _join,
    _parse_patterns,
    _printable,
    _special_kind,
    _topmost,
    _tree_counts,
)

log = logging.getLogger(__package__)  # "include.backup.sources.files", as before the split


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


class Dumper:
    """Writes the configured absolute paths (files or directories) of one source as a tar
    stream."""

    def __init__(self, name: str, cfg: schema.FilesSource) -> None:
        self.name = name
        self.cfg = cfg
        self._patterns = _parse_patterns(cfg.exclude)

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
        # Fails here (on_changed: fail) before the payload is ever published.
        incomplete = check_changes(self.name, self.cfg, state.stats)

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
            incomplete=incomplete,
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
            faults.hit("dump.mid-read")  # a test hook: one file read, the rest not yet
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
