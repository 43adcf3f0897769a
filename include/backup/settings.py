"""Package settings in one place. Paths are resolved at run time, never at parse time."""

from __future__ import annotations

import os
from pathlib import Path

from include.backup.config.schema import BackupConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))


def staging_root(config: BackupConfig) -> Path:
    """Where dumps are staged before upload. With a distributed executor this must be a
    volume shared by every worker (docker-compose mounts one)."""
    if config.staging_dir:
        return Path(config.staging_dir)
    env = os.environ.get("BACKUP_STAGING_DIR")
    if env:
        return Path(env)
    return airflow_home() / "backup-staging"


def key_file_override() -> Path | None:
    """A JSON key file used instead of the Airflow connection (CLI and demo)."""
    env = os.environ.get("BACKUP_KEY_FILE")
    return Path(env) if env else None
