"""Applying files-source tar streams to a directory: the restorer of one chain.

Every archive and manifest path is checked before it is used; nothing is ever written
through a symlink; directory modes and mtimes are set last.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

from include.backup.catalog.manifest import Manifest
from include.backup.errors import IntegrityError
from include.backup.sources.files.index import COPY_CHUNK, DIR, FILE, LINK, _arc_name


def _member_mtime_ns(member: tarfile.TarInfo) -> int:
    raw = member.pax_headers.get("mtime")
    if raw is not None:
        try:
            return int(Decimal(raw) * 1_000_000_000)
        except (InvalidOperation, ValueError):
            pass
    return int(member.mtime * 1_000_000_000)


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
