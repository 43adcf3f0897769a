"""Test-wide settings: an Airflow home of our own, so tests never touch ~/airflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="backup-tests-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

# One SMTP catcher per test session (per xdist worker), shared by tests/integration and
# tests/e2e. Registered here, once: a second registration (one per directory) started a
# second server whose AIRFLOW_CONN_SMTP_DEFAULT stayed set over the first, so on a worker
# that ran an e2e file between two integration files, mails went to the other server.
from tests.integration.smtp_service import smtp_server  # noqa: E402, F401
