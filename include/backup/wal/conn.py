"""Airflow connections read from ``AIRFLOW_CONN_<ID>`` without importing Airflow.

``archive_command`` runs once per WAL segment as the database server's OS user, where
neither Airflow nor its metadata database need exist. The connections it needs (the key
ring, an S3 target's credentials) come from the same environment variables Airflow reads
(``AIRFLOW_CONN_<ID>``, the JSON form or the URI form), parsed here as Airflow parses them.
A secrets backend needs Airflow: use a key file (``--key-file`` / ``$BACKUP_KEY_FILE``) there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from include.backup.errors import BackupError


@dataclass
class EnvConnection:
    """The fields of an Airflow connection that our code reads."""

    conn_id: str
    conn_type: str = ""
    host: str | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    port: int | None = None
    extra_dejson: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never the password nor the extra (they hold secrets)
        return f"EnvConnection({self.conn_id!r}, type={self.conn_type!r})"


def env_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def get_connection(conn_id: str, purpose: str) -> EnvConnection:
    """The connection ``conn_id`` from its environment variable, or a BackupError saying
    how to provide it (the message never quotes the variable's value)."""
    var = env_name(conn_id)
    value = os.environ.get(var)
    if not value:
        raise BackupError(
            f"{purpose}: connection {conn_id!r} is not in the environment: wal-push and wal-fetch "
            f"run without Airflow, so set {var} (the JSON or URI form Airflow reads) in the "
            "environment of the PostgreSQL server (archive_command / restore_command), or use "
            "a key file for the keys (--key-file or BACKUP_KEY_FILE)"
        )
    try:
        return _from_json(conn_id, value) if value.lstrip().startswith("{") else _from_uri(conn_id, value)
    except (ValueError, TypeError):
        raise BackupError(
            f"{purpose}: {var} is neither a JSON connection ({{\"conn_type\": ..., \"extra\": {{...}}}}) "
            "nor a connection URI (type://login:password@host:port/schema?key=value); fix its value"
        ) from None


def _from_json(conn_id: str, value: str) -> EnvConnection:
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    extra = data.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    if not isinstance(extra, dict):
        raise ValueError("extra is not an object")
    port = data.get("port")
    return EnvConnection(
        conn_id=conn_id,
        conn_type=str(data.get("conn_type") or ""),
        host=data.get("host"),
        login=data.get("login"),
        password=data.get("password"),
        schema=data.get("schema"),
        port=int(port) if port not in (None, "") else None,
        extra_dejson=extra,
    )


def _from_uri(conn_id: str, value: str) -> EnvConnection:
    """As Airflow's ``Connection._parse_from_uri``: ``__extra__`` holds JSON, other query
    parameters are extra fields; login and password are percent-decoded."""
    parts = urlsplit(value)
    if not parts.scheme:
        raise ValueError("no scheme")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    extra: dict[str, Any] = json.loads(query.pop("__extra__")) if "__extra__" in query else dict(query)
    host = unquote(parts.hostname) if parts.hostname else None
    return EnvConnection(
        conn_id=conn_id,
        conn_type=parts.scheme.replace("-", "_"),
        host=host,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        schema=unquote(parts.path.lstrip("/")) or None,
        port=parts.port,
        extra_dejson=extra,
    )
