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


# How long plaintext (the compressed dump) may sit in staging untouched, with no step at
# work on it, before a sweep removes it. The dump and encrypt steps hold the run's lock
# while they work, so this only has to outlast the wait between the two steps (queueing,
# retry back-off), not a dump: a few hours is plenty.
PLAINTEXT_GRACE_HOURS = 6.0
# Staging of a failed run is kept for retries (its payload is encrypted by then), then
# removed by the cleanup step of any schedule and by dr_monitor (staging.py).
STALE_STAGING_HOURS = 24.0


def stale_staging_s() -> float:
    """STALE_STAGING_HOURS in seconds."""
    return STALE_STAGING_HOURS * 3600
# Objects at a target with no manifest, from a run no longer in flight, are removed by
# cleanup once their backup id's time is this old (docs/concurrency.md, orphans).
ORPHAN_GRACE_HOURS = 48.0


def plaintext_grace_s() -> float:
    """PLAINTEXT_GRACE_HOURS, or $BACKUP_PLAINTEXT_GRACE_HOURS when set (> 0)."""
    env = os.environ.get("BACKUP_PLAINTEXT_GRACE_HOURS")
    hours = PLAINTEXT_GRACE_HOURS
    if env:
        try:
            hours = float(env)
        except ValueError:
            raise ValueError(
                f"BACKUP_PLAINTEXT_GRACE_HOURS={env!r} is not a number of hours; set e.g. 6"
            ) from None
        if hours <= 0:
            raise ValueError(f"BACKUP_PLAINTEXT_GRACE_HOURS={env!r} must be more than 0")
    return hours * 3600


def key_file_override() -> Path | None:
    """A JSON key file used instead of the Airflow connection (CLI and demo)."""
    env = os.environ.get("BACKUP_KEY_FILE")
    return Path(env) if env else None
