"""The S3 target with its client built from ``AIRFLOW_CONN_<ID>`` by boto3 directly.

Everything but the client is :class:`~include.backup.targets.s3.S3Target` (same keys,
checksums, errors); the Amazon provider's hook, which imports Airflow, is not used. The
connection fields read are the hook's: login / password (or extra ``aws_access_key_id`` /
``aws_secret_access_key``, ``aws_session_token``), extra ``region_name``, ``endpoint_url``
(or ``service_config.s3.endpoint_url``) and ``config_kwargs``. A connection without keys
is refused rather than falling back to ambient credentials, as the target does.
"""

from __future__ import annotations

from typing import Any

from include.backup.errors import TargetError
from include.backup.targets._remote import connection_secrets
from include.backup.targets.s3 import S3Target
from include.backup.wal.conn import EnvConnection, get_connection


class EnvS3Target(S3Target):
    """An S3 target for processes without Airflow (wal-push, wal-fetch)."""

    _conn: EnvConnection | None = None

    def _load_connection(self) -> Any:
        try:
            conn = get_connection(self.conn_id, f"target '{self.name}'")
        except Exception as exc:  # noqa: BLE001 - one TargetError for the caller
            raise TargetError(str(exc)) from None
        self._secrets = connection_secrets(conn, self.secret_fields)
        self._conn = conn
        return conn

    def _build_client(self) -> Any:
        import boto3  # lazy: boto3 is heavy: loaded when S3 is used
        from botocore.config import Config  # lazy: as above

        conn = self._conn
        assert conn is not None
        extra = conn.extra_dejson
        key_id = conn.login or extra.get("aws_access_key_id")
        secret = conn.password or extra.get("aws_secret_access_key")
        if not key_id or not secret:
            raise TargetError(
                f"target '{self.name}': connection {self.conn_id!r} holds no access key (login / "
                "password); wal-push does not use ambient credentials: set them in "
                f"AIRFLOW_CONN_{self.conn_id.upper()}"
            )
        endpoint = extra.get("endpoint_url") or (
            ((extra.get("service_config") or {}).get("s3") or {}).get("endpoint_url")
        )
        config = Config(
            connect_timeout=10, read_timeout=120,
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=max(10, self.concurrency + 2),
        ).merge(Config(**(extra.get("config_kwargs") or {})))  # fmt: skip
        return boto3.session.Session().client(
            "s3",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=extra.get("aws_session_token"),
            region_name=extra.get("region_name"),
            endpoint_url=endpoint,
            config=config,
        )
