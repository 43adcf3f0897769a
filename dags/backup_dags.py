"""Airflow DAGs ``backup__<schedule>``: one per active schedule of the backup config
($BACKUP_CONFIG, default include/backup_config.yaml)."""

from include.backup.factory import register_backup_dags

register_backup_dags(globals())
