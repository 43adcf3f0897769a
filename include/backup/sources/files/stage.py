"""Staged restore: a temporary sibling ``<into>.restoring-*``, moved into place only when
all is well.

A new ``into`` is the staged directory renamed; an existing one gets the restored entries
moved in once every move was checked to be possible. On failure the caller removes the
stage and a pre-existing ``into`` is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from include.backup.errors import IntegrityError, RestoreRefused
from include.backup.sources.files.extract import _inside_real_dirs, _Restorer
from include.backup.sources.files.index import _join

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
