"""Params of the manual DR DAGs (restore, dr_test, failover) and the guards every
destination passes, before anything is touched.

Airflow checks the JSON-schema of each Param in the UI and the REST API; these functions
check what a schema cannot (names that must exist in the config, exclusive options, a
destination that is not the source itself) and turn the params into typed requests.
Every error names the param and says what to pass. :mod:`include.backup.dr.drtest` and
:mod:`include.backup.dr.failover` parse their own requests with the helpers here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from include.backup.config.schema import BackupConfig
from include.backup.dr.destinations import (
    CONN_PREFIX,
    PATH_REFUSED,
    SHAPES,
    check_destination,
    check_files_directory,
    check_path,
)
from include.backup.dr.smoke import server_key
from include.backup.errors import RestoreRefused
from include.backup.sources.postgres import params_from_connection

__all__ = [
    "CONN_PREFIX",
    "PATH_REFUSED",
    "SHAPES",
    "RestoreRequest",
    "bool_param",
    "check_destination",
    "check_files_directory",
    "check_not_production",
    "check_not_same_database",
    "check_path",
    "list_param",
    "own_connection",
    "parse_restore_params",
    "resolve_environment",
    "scheduled_sources",
    "source_targets",
    "text_param",
]


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


def text_param(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise RestoreRefused(f"param {name!r} must be a string, got {type(value).__name__}")
    return value.strip()


def bool_param(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RestoreRefused(f"param {name!r} must be true or false, got {value!r}")
    return value


def list_param(params: Mapping[str, Any], name: str, *, split: str | None = ",") -> list[str]:
    value = params.get(name)
    if value in (None, "", []):
        return []
    items = value if not isinstance(value, str) else (value.split(split) if split else [value])
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise RestoreRefused(f"param {name!r} must be a list of strings")
    return [i.strip() for i in items if i.strip()]


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
    if source is not None and config.sources[source].type == "files":
        check_files_directory(into, source)  # by backup_id: restore_backup checks it
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


# --- sources and their targets --------------------------------------------------------


def scheduled_sources(config: BackupConfig) -> list[str]:
    """Sources with an active schedule, in config order."""
    seen: list[str] = []
    for s in config.schedules:
        if s.active and s.source not in seen:
            seen.append(s.source)
    return seen


def source_targets(config: BackupConfig, source: str) -> list[str]:
    """Every target of the source's schedules (active or not), in schedule order."""
    names: list[str] = []
    for s in config.schedules:
        if s.source == source:
            names += [t for t in s.targets if t not in names and t in config.targets]
    return names


def own_connection(config: BackupConfig, source: str) -> str | None:
    return getattr(config.sources[source], "conn_id", None)


# --- guards: never into the source itself ---------------------------------------------


def check_not_production(config: BackupConfig, source: str, where: str, param: str) -> None:
    """Refuse to restore into the source itself (its own connection, its own paths), and a
    destination that is not a plain path, database name or conn:<id> (check_destination)."""
    check_destination(where.strip(), param)
    cfg = config.sources[source]
    conn_id = getattr(cfg, "conn_id", None)
    value = where.strip()
    if conn_id and value in (f"{CONN_PREFIX}{conn_id}", conn_id):
        raise RestoreRefused(
            f"param {param!r} {where!r} is the production connection of source {source!r}; "
            "name a staging connection (conn:<conn_id>) or a new database"
        )
    if cfg.type == "files":
        if not value.startswith("/"):
            raise RestoreRefused(f"param {param!r} must be an absolute directory for files source {source!r}")
        norm = value.rstrip("/") or "/"
        for p in cfg.paths:
            p = p.rstrip("/") or "/"
            if norm == p or norm.startswith(p + "/") or p.startswith(norm + "/") or norm == "/":
                raise RestoreRefused(
                    f"param {param!r} {where!r} overlaps the backed-up path {p!r} of source "
                    f"{source!r}; restore into a separate directory"
                )


def check_not_same_database(config: BackupConfig, source: str, into: str) -> None:
    """PostgreSQL: refuse ``into`` when it resolves to the source's own database (same
    host, port and database name), whatever it is called."""
    cfg = config.sources[source]
    if cfg.type != "postgres":
        return
    prod = params_from_connection(cfg.conn_id, cfg.database)
    if into.startswith(CONN_PREFIX):
        dest = params_from_connection(into[len(CONN_PREFIX) :])
    else:
        dest = prod.with_db(into)
    # localhost, 127.0.0.1, ::1 and a socket directory are one server, however spelled.
    if (server_key(dest.host, dest.port), dest.dbname) == (server_key(prod.host, prod.port), prod.dbname):
        raise RestoreRefused(
            f"{into!r} is the production database of source {source!r} "
            f"({prod.describe()}); restore into a staging database"
        )


def resolve_environment(config: BackupConfig, source: str, env: str) -> str:
    """``into`` for restore_backup: ``conn:<id>`` as is; for a database source, a bare
    name that is an Airflow connection becomes ``conn:<name>``, else it is a database on
    the source's server; a directory as is."""
    value = env.strip()
    cfg = config.sources[source]
    if value.startswith(CONN_PREFIX) or cfg.type == "files" or value.startswith("/"):
        return value
    try:
        from airflow.sdk import (
            BaseHook,  # lazy: Airflow's Task SDK: heavy, and only needed here
        )

        BaseHook.get_connection(value)
    except Exception:  # noqa: BLE001 - no such connection: a database name
        return value
    return f"{CONN_PREFIX}{value}"
