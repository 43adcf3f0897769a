"""Validation of the params of the manual DAGs (restore, ...), before anything is touched.

Airflow checks the JSON-schema of each Param in the UI and the REST API; these functions
check what a schema cannot (names that must exist in the config, exclusive options) and
turn the params into typed requests. Every error names the param and says what to pass.
"""

from __future__ import annotations

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
