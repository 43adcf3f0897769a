"""The ``restore_command`` of a physical PostgreSQL restore: copy one archived WAL file.

    python3 -I walrestore.py WAL_DIR FILE DEST        (PostgreSQL passes FILE = %f, DEST = %p)

PostgreSQL runs ``restore_command`` through ``/bin/sh`` as its own OS user. Building that
command from a path (``cp "<dir>/%f" "%p"``) lets a path such as ``/tmp/x$(reboot)`` run
commands; so the command is this fixed program with every argument quoted by
``shlex.quote`` (see ``recovery._restore_command``), and this program itself
never hands anything to a shell.

Standalone on purpose: stdlib only, no import of the ``include`` package, runs on any
Python 3.7+ — the restore copies it into its own WAL directory, so the server's OS user can
run it even when it cannot read the worker's code or virtualenv.

    python3 -I walrestore.py --wait WAL_DIR FILE DEST

``--wait`` (a restore replaying pushed WAL, see include/backup/wal/archive.py): the
restore fetches the files in the background into WAL_DIR, listed in ``.expected``; a
listed file not there yet is waited for until it appears, ``FILE.refused`` appears (it
failed authentication: replay ends at the last good file) or ``.done`` says the fetching
is over.

Exit status (what PostgreSQL expects): 0 copied; 1 not there (or a FILE that is not a WAL,
timeline history or backup history file name: refused, never looked up); 2 a copy error.
Never above 125: PostgreSQL would take that as "command not found" and abort recovery.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time

# A segment (24 hex), a partial segment, a timeline history or a backup history file.
_NAME = re.compile(r"\A(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)\Z")


def wal_file_name_ok(name: str) -> bool:
    """True for the file names PostgreSQL asks a restore_command for (and only those)."""
    return bool(_NAME.match(name))


def _arrived(wal_dir: str, name: str, src: str) -> bool:
    """Wait for a file the restore is still fetching (``--wait``); False: it never comes."""
    try:
        with open(os.path.join(wal_dir, ".expected"), encoding="ascii") as f:
            expected = set(f.read().split())
    except OSError:
        return False
    while name in expected:
        if os.path.isfile(src):
            return True
        if os.path.exists(src + ".refused"):
            return False
        if os.path.exists(os.path.join(wal_dir, ".done")):
            return os.path.isfile(src)
        time.sleep(0.02)
    return False


def main(argv: list[str]) -> int:
    wait = bool(argv) and argv[0] == "--wait"
    if wait:
        argv = argv[1:]
    if len(argv) != 3:
        sys.stderr.write("usage: walrestore.py [--wait] WAL_DIR FILE DEST\n")
        return 2
    wal_dir, name, dest = argv
    if not wal_file_name_ok(name):
        sys.stderr.write(f"walrestore: refusing {name!r}: not a WAL file name\n")
        return 1
    src = os.path.join(wal_dir, name)
    if not os.path.isfile(src) and not (wait and _arrived(wal_dir, name, src)):
        return 1  # not in the chain (or refused): the normal end of archive recovery
    try:
        shutil.copyfile(src, dest)
    except OSError as exc:
        sys.stderr.write(f"walrestore: copying {src} to {dest} failed: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
