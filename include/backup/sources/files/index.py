"""The file index and tree comparison of the files source.

The index maps each archived path (``data/uploads/a.txt``, undecodable names as NUL + hex)
to an entry [type, size, mtime_ns, mode, link target]; incrementals compare it with the
parent's. Here too: the exclude patterns, the small path helpers the dump and the restore
share, and :func:`tree_digest` / :func:`compare_trees`, which prove a restore.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _entry(kind: str, st: os.stat_result, target: str = "") -> IndexEntry:
    size = st.st_size if kind == FILE else 0
    return [kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), target]


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
