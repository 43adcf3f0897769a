"""Prepare the docker compose development stack for the backup config in $BACKUP_CONFIG.

Run once by the ``dev-init`` service (after ``airflow-init``), with the Airflow containers'
environment, so it reaches every store through the same Airflow connections the backups use:

- every ``s3`` / ``gcs`` bucket and ``azure_blob`` container of the config is created when
  missing (the targets never create them: in production a missing bucket is a mistake to
  report, not to paper over);
- every ``local`` target directory and ``sftp`` target path is created when missing;
- every ``mongo`` source database gets sample documents when it has no collections (the
  PostgreSQL source loads its own from deploy/compose/pg-source/ at first start);
- the key ring connection is loaded once, so a broken dev key fails here, not in a backup.

Idempotent: a second run changes nothing. Development only: it writes to the stores.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from include.backup.config.loader import load_valid_config
from include.backup.config.schema import BackupConfig, MongoSource
from include.backup.keys import KeyRing

log = logging.getLogger("init_dev")


def _s3_bucket(conn_id: str, bucket: str) -> bool:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=conn_id)
    if hook.check_for_bucket(bucket):
        return False
    hook.create_bucket(bucket_name=bucket)
    return True


def _azure_container(conn_id: str, container: str) -> bool:
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    client = WasbHook(wasb_conn_id=conn_id).get_conn().get_container_client(container)
    if client.exists():
        return False
    client.create_container()
    return True


def _gcs_bucket(conn_id: str, bucket: str) -> bool:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    client = GCSHook(gcp_conn_id=conn_id).get_conn()
    if client.lookup_bucket(bucket) is not None:
        return False
    client.create_bucket(bucket)
    return True


def _sftp_path(conn_id: str, path: str) -> bool:
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    sftp = SFTPHook(ssh_conn_id=conn_id).get_conn()
    try:
        sftp.stat(path)
        return False
    except OSError:
        sftp.mkdir(path)
        return True


def _local_path(path: str) -> bool:
    target = Path(path)
    existed = target.is_dir()
    target.mkdir(parents=True, exist_ok=True)
    return not existed


def prepare_target(name: str, target: Any) -> None:
    """Create what ``target`` writes into, when missing."""
    steps: dict[str, Callable[[], bool]] = {
        "local": lambda: _local_path(target.path),
        "s3": lambda: _s3_bucket(target.conn_id, target.bucket),
        "azure_blob": lambda: _azure_container(target.conn_id, target.container),
        "gcs": lambda: _gcs_bucket(target.conn_id, target.bucket),
        "sftp": lambda: _sftp_path(target.conn_id, target.path),
    }
    step = steps.get(target.type)
    if step is None:
        log.info("target %s (%s): nothing to prepare", name, target.type)
        return
    created = step()
    log.info("target %s (%s): %s", name, target.type, "created" if created else "already there")


def _sample_documents(n_users: int = 200, n_events: int = 5000) -> dict[str, list[dict[str, Any]]]:
    users = [
        {"_id": i, "email": f"user{i}@example.com", "plan": ("free", "pro")[i % 2]}
        for i in range(1, n_users + 1)
    ]
    kinds = ("signup", "login", "purchase", "logout")
    events = [{"user_id": 1 + i % n_users, "kind": kinds[i % 4], "n": i} for i in range(n_events)]
    return {"users": users, "events": events}


def seed_mongo(name: str, source: MongoSource) -> None:
    """Sample documents and an index in the source's database, if it has no collections."""
    from airflow.providers.mongo.hooks.mongo import MongoHook

    hook = MongoHook(mongo_conn_id=source.conn_id)
    database = source.database or hook.connection.schema
    if not database:
        raise ValueError(
            f"source {name}: no database to seed; set database: in the config or the schema "
            f"(Default DB) of connection {source.conn_id!r}"
        )
    db = hook.get_conn()[database]
    if db.list_collection_names():
        log.info("source %s: database %s already has data", name, db.name)
        return
    for collection, docs in _sample_documents().items():
        db[collection].insert_many(docs)
    db["events"].create_index([("user_id", 1), ("kind", 1)])
    log.info("source %s: sample documents written to database %s", name, db.name)


def prepare(config: BackupConfig) -> None:
    KeyRing.from_connection(config.encryption.key_conn_id)  # fails with a message naming the fix
    log.info("key ring %s: loads", config.encryption.key_conn_id)
    for name, target in config.targets.items():
        prepare_target(name, target)
    for name, source in config.sources.items():
        if isinstance(source, MongoSource):
            seed_mongo(name, source)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    prepare(load_valid_config())
    return 0


if __name__ == "__main__":
    sys.exit(main())
