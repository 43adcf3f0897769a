"""Airflow DAGs ``backup__<schedule>``: one per active schedule of the backup config
($BACKUP_CONFIG, default include/backup_config.yaml)."""

import sys
from pathlib import Path

# The project root (for ``include.backup``): Airflow puts dags/ on sys.path, not its parent.
sys.path.count(_root := str(Path(__file__).resolve().parents[1])) or sys.path.append(_root)

from include.backup.factory import register_backup_dags  # noqa: E402

register_backup_dags(globals())
