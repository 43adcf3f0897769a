"""Validation of the params of the manual DAGs (restore, ...), before anything is touched.

Airflow checks the JSON-schema of each Param in the UI and the REST API; these functions
check what a schema cannot (names that must exist in the config, exclusive options) and
turn the params into typed requests. Every error names the param and says what to pass.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from include.backup.config.schema import BackupConfig
from include.backup.errors import RestoreRefused


@dataclass(frozen=True)
class RestoreRequest:
    source: str | None
    backup_id: str | None
    point_in_time: datetime | None
    into: str
    target: str | None
    only: list[str] | None
    overwrite: bool

    def to_xcom(self) -> dict[str, Any]:
        data = asdict(self)
        data["point_in_time"] = self.point_in_time.isoformat() if self.point_in_time else None
        return data

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> RestoreRequest:
        pit = data.get("point_in_time")
        return cls(**{**data, "point_in_time": datetime.fromisoformat(pit) if pit else None})


# --- destinations ------------------------------------------------------------------------
#
# A destination (restore ``into``, dr_test ``target_environment``, failover ``secondary``)
# becomes a directory name, a database name or a connection id. Nothing builds a shell
# command from it any more (see sources/walrestore.py), but it is still checked strictly
# here, before anything is touched: one of three shapes, and nothing a shell, a
# postgresql.conf string or a terminal would read as more than text.

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


def text_param(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise RestoreRefused(f"param {name!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _names(params: Mapping[str, Any], *keys: str) -> list[str] | None:
    """tables / collections / paths: a list, or a comma-separated string from a form."""
    for key in keys:
        value = params.get(key)
        if value in (None, "", []):
            continue
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise RestoreRefused(f"param {key!r} must be a list of names (or 'a,b,c')")
        names = [i.strip() for i in items if i.strip()]
        return names or None
    return None


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RestoreRefused(
            f"param 'point_in_time' {text!r} is not an ISO-8601 time; pass e.g. 2026-11-22T14:05:00Z"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_restore_params(params: Mapping[str, Any], config: BackupConfig) -> RestoreRequest:
    source = text_param(params, "source")
    backup_id = text_param(params, "backup_id")
    into = text_param(params, "into")
    target = text_param(params, "target")
    point_in_time = _when(text_param(params, "point_in_time"))
    if into is None:
        raise RestoreRefused(
            "param 'into' is required: a database name or conn:<conn_id> for databases, "
            "an absolute directory for files, a new data directory for point-in-time recovery"
        )
    check_destination(into, "into")
    if source is not None and source not in config.sources:
        raise RestoreRefused(
            f"param 'source': no source named {source!r}; known: {', '.join(config.sources)}"
        )
    if target is not None and target not in config.targets:
        raise RestoreRefused(
            f"param 'target': no target named {target!r}; known: {', '.join(config.targets)}"
        )
    if backup_id is None and source is None:
        raise RestoreRefused(
            "pass 'backup_id' (a backup to restore) or 'source' (its newest backup, or with "
            "'point_in_time' the state at that time)"
        )
    if point_in_time is not None and point_in_time > datetime.now(UTC):
        raise RestoreRefused(f"param 'point_in_time' {point_in_time.isoformat()} is in the future")
    overwrite = params.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise RestoreRefused("param 'overwrite' must be true or false")
    return RestoreRequest(
        source=source,
        backup_id=backup_id,
        point_in_time=point_in_time,
        into=into,
        target=target,
        only=_names(params, "tables", "collections", "paths"),
        overwrite=overwrite,
    )
