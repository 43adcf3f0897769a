"""Airflow-native backup and disaster-recovery orchestrator (library part).

Everything Airflow runs lives here; the files in ``dags/`` only hand the config to
:mod:`include.backup.factory`. Heavy imports (Airflow, provider hooks, cryptography) are
kept inside functions so that ``python -m include.backup validate`` works without Airflow.
"""

__version__ = "0.1.0"
