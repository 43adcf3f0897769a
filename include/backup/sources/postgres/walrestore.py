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

Exit status (what PostgreSQL expects): 0 copied; 1 not there (or a FILE that is not a WAL,
timeline history or backup history file name: refused, never looked up); 2 a copy error.
Never above 125: PostgreSQL would take that as "command not found" and abort recovery.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

# A segment (24 hex), a partial segment, a timeline history or a backup history file.
_NAME = re.compile(r"\A(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)\Z")


def wal_file_name_ok(name: str) -> bool:
    """True for the file names PostgreSQL asks a restore_command for (and only those)."""
    return bool(_NAME.match(name))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: walrestore.py WAL_DIR FILE DEST\n")
        return 2
    wal_dir, name, dest = argv
    if not wal_file_name_ok(name):
        sys.stderr.write(f"walrestore: refusing {name!r}: not a WAL file name\n")
        return 1
    src = os.path.join(wal_dir, name)
    if not os.path.isfile(src):
        return 1  # not in the chain: the normal end of archive recovery
    try:
        shutil.copyfile(src, dest)
    except OSError as exc:
        sys.stderr.write(f"walrestore: copying {src} to {dest} failed: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
