"""The Airflow assets the project's DAGs update (no Airflow import: tasks.py and the DAG
factory both name them)."""

from __future__ import annotations


def backup_asset_uri(source: str) -> str:
    """The asset of a source's verified backups: the cleanup task of each of its backup DAGs
    declares it as an outlet and gives its event the backup's id, sizes and targets
    (tasks.backup_event). Declared, not emitted through an alias: an alias creates the
    asset at the first event, and two schedules of one source finishing at once then both
    created it, the second failing its cleanup on Airflow's unique index (seen on Celery)."""
    return f"backup://{source}"
