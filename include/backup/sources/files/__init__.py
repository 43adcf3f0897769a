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

Modules: :mod:`.index` (file index, exclude patterns, tree digest and comparison),
:mod:`.dump` (FULL/INCREMENTAL tar writing), :mod:`.headers` (tar header helpers for it),
:mod:`.changes` (paths that vanished or changed while read: fail, or warn and mark the
backup incomplete, per ``on_changed``),
:mod:`.extract` (applying a tar stream),
:mod:`.stage` (the ``<into>.restoring-*`` sibling and publishing it), :mod:`.restore`
(checking and restoring a chain), :mod:`.source` (the :class:`FilesSource` class).
"""

from __future__ import annotations

from include.backup.sources.files.index import (
    PAYLOAD_FORMAT,
    SOURCE_TYPE,
    compare_trees,
    tree_digest,
    tree_mtimes,
)
from include.backup.sources.files.restore import CHAIN_RULES
from include.backup.sources.files.source import FilesSource
from include.backup.sources.files.stage import STAGE_MARK

__all__ = [
    "CHAIN_RULES",
    "PAYLOAD_FORMAT",
    "SOURCE_TYPE",
    "STAGE_MARK",
    "FilesSource",
    "compare_trees",
    "tree_digest",
    "tree_mtimes",
]
