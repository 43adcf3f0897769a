"""The shape of a DR destination (restore ``into``, dr_test ``target_environment``,
failover ``secondary``), checked before anything is touched.

A destination becomes a directory name, a database name or a connection id. Nothing
builds a shell command from it (see sources/postgres/walrestore.py), but it is still checked
strictly: one of three shapes, and nothing a shell, a postgresql.conf string or a
terminal would read as more than text. A leaf module (errors only), so that sources
(the physical PostgreSQL restore checks its data directory with :func:`check_path`)
can use it without depending on the DR layer.
"""

from __future__ import annotations

import re
import unicodedata

from include.backup.errors import RestoreRefused

CONN_PREFIX = "conn:"
# Characters a shell expands or acts on, inside or outside double quotes (pg_ctl starts the
# server through /bin/sh with the data directory in double quotes: a '"' in it would end
# them). Spaces and single quotes are allowed: every command string we build quotes them.
PATH_REFUSED = frozenset('$`\\";|&<>*?!')
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}")  # a database name or a connection id
_CONN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}(?:/[A-Za-z0-9_][A-Za-z0-9_-]{0,62})?")
SHAPES = (
    "an absolute directory (/srv/restore, optionally /srv/pg-restored:5440 for a physical "
    "PostgreSQL restore), a database name (letters, digits, _ . -), or conn:<conn_id>[/<db>]"
)


def _control_chars(value: str) -> list[str]:
    """Control, format and line/paragraph separator characters (newlines, NUL, bidi...)."""
    return [f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def check_path(value: str, param: str) -> str:
    """``value`` as an absolute path with no control characters, no shell metacharacters
    and no ``..`` component; a RestoreRefused naming ``param`` and the fix otherwise."""
    bad = _control_chars(value)
    if bad:
        raise RestoreRefused(
            f"param {param!r} {value!r} contains control characters ({', '.join(bad)}); "
            "give a plain absolute path"
        )
    if not value.startswith("/"):
        raise RestoreRefused(f"param {param!r} {value!r} is not an absolute path; give e.g. /srv/restore")
    shell = sorted(set(value) & PATH_REFUSED)
    if shell:
        raise RestoreRefused(
            f"param {param!r} {value!r} contains {' '.join(shell)}: shell metacharacters are "
            "not allowed in a destination path; rename the directory (letters, digits, "
            "spaces, single quotes, - _ . , + = @ % : are fine)"
        )
    if ".." in value.split("/"):
        raise RestoreRefused(f"param {param!r} {value!r} has a '..' component; give the path without it")
    return value


def check_destination(value: str, param: str = "into") -> str:
    """Refuse a destination that is not one of the three shapes (see ``SHAPES``); return it
    unchanged otherwise. Called on every restore, dr_test and failover destination before
    anything is touched."""
    bad = _control_chars(value)
    if bad:
        raise RestoreRefused(
            f"param {param!r} {value!r} contains control characters ({', '.join(bad)}); give {SHAPES}"
        )
    if value.startswith("/"):
        return check_path(value, param)  # a :PORT suffix is digits: nothing to refuse there
    if value.startswith(CONN_PREFIX):
        if not _CONN.fullmatch(value[len(CONN_PREFIX) :]):
            raise RestoreRefused(
                f"param {param!r} {value!r} is not conn:<conn_id>[/<db>] (a connection id of "
                "letters, digits, _ . -, and a database name of letters, digits, _ -)"
            )
        return value
    if not _NAME.fullmatch(value):
        raise RestoreRefused(f"param {param!r} {value!r} is not a destination: give {SHAPES}")
    return value


def check_files_directory(value: str, source: str, param: str = "into") -> str:
    """A files backup is restored into an absolute directory: a relative one would be
    resolved against the working directory of whichever worker runs the task, which no
    one chose. RestoreRefused naming ``param`` and the fix otherwise."""
    if not value.startswith("/"):
        raise RestoreRefused(
            f"param {param!r} {value!r} is a relative path: files source {source!r} is restored "
            f"into an absolute directory (a relative one would land in the worker's working "
            f"directory); give e.g. /srv/restore/{source}"
        )
    return value
