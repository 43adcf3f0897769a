"""Test-wide settings: an Airflow home of our own, so tests never touch ~/airflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="backup-tests-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

# One SMTP catcher per test session (per xdist worker), shared by tests/integration and
# tests/e2e. Registered here, once: a second registration (one per directory) started a
# second server whose AIRFLOW_CONN_SMTP_DEFAULT stayed set over the first, so on a worker
# that ran an e2e file between two integration files, mails went to the other server.
# Likewise the real storage servers (moto, Azurite, a GCS emulator, OpenSSH sshd, pyftpdlib)
# and SecantusDB, started on 127.0.0.1 by session fixtures: registered once, here, for
# tests/integration and tests/e2e. A test module that imported one of them registered a
# second session server of that kind whose AIRFLOW_CONN_* stayed set for the rest of the
# worker's session: the S3 and MongoDB tests after it wrote through one server and read
# through the other.
from tests.integration.mongo_service import mongo_server  # noqa: E402, F401
from tests.integration.services import *  # noqa: E402, F403
from tests.integration.smtp_service import smtp_server  # noqa: E402, F401

# --- how `make test` spreads the files over xdist workers (--dist loadfile) ---------------

SHARED_DEPLOYMENT = "tests/e2e[airflow_deployment]"
"""One scope for every file that uses the session fixture ``airflow_deployment``
(tests/e2e/conftest.py): they run on one worker, so the suite starts one deployment, not
one per worker."""
DEPLOYMENT_FILES = {
    "tests/e2e/test_deadline_alert.py",
    "tests/e2e/test_dr_cockpit_browser.py",
    "tests/e2e/test_dr_drill_live.py",
    "tests/e2e/test_key_masking.py",
    "tests/e2e/test_rest_api.py",
    "tests/e2e/test_rest_client.py",
}
LONGEST_FIRST = [
    "tests/e2e/test_celery.py",
    SHARED_DEPLOYMENT,
    "tests/integration/test_demo_airflow.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_concurrency.py",
    "tests/e2e/test_access_control.py",
    "tests/e2e/test_autofailover_live.py",
    "tests/e2e/test_archive_thaw.py",
]
"""The files that take minutes (each starts Airflow, or many backups), handed out first:
xdist's default order (most tests first) left them to the end, where one worker ran them
alone while the other sat idle."""


def scope_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SHARED_DEPLOYMENT if path in DEPLOYMENT_FILES else path


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order set below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    users = {i.nodeid.split("::", 1)[0] for i in items if "airflow_deployment" in i.fixturenames}
    unlisted = sorted(users - DEPLOYMENT_FILES)
    if unlisted:  # else it would run apart, after tests/e2e/conftest.py stopped the deployment
        raise pytest.UsageError(f"add {', '.join(unlisted)} to DEPLOYMENT_FILES in tests/conftest.py")
    rank = {scope: i for i, scope in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(scope_of(item.nodeid), len(rank)))  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedDeploymentScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return SharedDeploymentScheduling(config, log)
