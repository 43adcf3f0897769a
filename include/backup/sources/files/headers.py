"""Tar header helpers for writing the files source's stream: exact PAX mtimes, cached
owner names, and a reader that serves exactly the size announced in a header."""

from __future__ import annotations

import grp
import os
import pwd

from include.backup.sources.files.index import COPY_CHUNK


def _ns_to_pax(ns: int) -> str:
    """Exact decimal seconds for the PAX "mtime" record (tarfile would go through a float
    and lose the last digits of a nanosecond timestamp)."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


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
