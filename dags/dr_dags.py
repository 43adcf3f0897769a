"""Airflow DAGs for disaster recovery, triggered by hand (UI or REST API): ``restore``."""

import sys
from pathlib import Path

# The project root (for ``include.backup``): Airflow puts dags/ on sys.path, not its parent.
sys.path.count(_root := str(Path(__file__).resolve().parents[1])) or sys.path.append(_root)

from include.backup.dr.dags import register_dr_dags  # noqa: E402

register_dr_dags(globals())
