"""Fixtures for integration tests: real services, started here and stopped at the end."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.backup.testing import PgCluster, load_sample_data

PG_CONN_ID = "events_pg"
PG_SAMPLE_DB = "events"
PG_SAMPLE_ROWS = 2000


def pytest_configure(config: pytest.Config) -> None:
    # Registered here until the project's pytest.ini declares them; registering twice is harmless.
    config.addinivalue_line("markers", "integration: needs real local services (PostgreSQL, ...)")
    config.addinivalue_line("markers", "e2e: end-to-end through Airflow")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL with the sample "event manager" data in database ``events``,
    reachable as the Airflow connection ``events_pg`` (AIRFLOW_CONN_EVENTS_PG)."""
    with PgCluster() as cluster, pytest.MonkeyPatch.context() as mp:
        load_sample_data(cluster, PG_SAMPLE_DB, rows=PG_SAMPLE_ROWS)
        mp.setenv(f"AIRFLOW_CONN_{PG_CONN_ID.upper()}", cluster.uri(PG_SAMPLE_DB))
        yield cluster


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system (tmpfs), mounted for the test and unmounted after."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


# The real storage servers and SecantusDB (session fixtures): registered in tests/conftest.py.

# The ``harness`` and ``target`` fixtures: every target kind on a fresh root (conformance, catalog).
from tests.integration.target_harness import harness, target  # noqa: E402, F401
