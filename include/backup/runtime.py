"""What every task loads at run time: the valid part of the config, and the key ring.

The backup steps, the DR tasks and the monitor all start here, so that none of them has
to import another's module for it."""

from __future__ import annotations

from include.backup.config import loader
from include.backup.config.schema import BackupConfig
from include.backup.keys import KeyRing
from include.backup.settings import key_file_override


def load_config() -> BackupConfig:
    """The valid part of the config: a run of a valid schedule must not fail because a
    different schedule in the same file is broken."""
    return loader.load_config().config


def load_keys(config: BackupConfig) -> KeyRing:
    """The key ring: from $BACKUP_KEY_FILE when set (CLI, demo), else the Airflow
    connection named by encryption.key_conn_id."""
    path = key_file_override()
    if path is not None:
        return KeyRing.from_file(path)
    return KeyRing.from_connection(config.encryption.key_conn_id)
