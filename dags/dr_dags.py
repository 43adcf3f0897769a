"""Airflow DAGs for disaster recovery: ``restore``, ``dr_test`` and ``failover``, triggered by
hand (UI or REST API), and ``dr_monitor``, every 15 minutes (docs/dr.md)."""

from include.backup.dr.dags import register_dr_dags

register_dr_dags(globals())
