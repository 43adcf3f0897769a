"""Airflow import-error reporter for the backup config (no DAG is defined here).

When a schedule, target or source in the config is broken, importing this file fails with
one message naming the config file, each key path and the fix, so the Airflow UI shows it
under import errors, while backup_dags.py keeps loading every valid schedule's DAG.
"""

from include.backup.factory import raise_config_errors

raise_config_errors()
