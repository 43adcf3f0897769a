"""Helpers for tests and ``make demo``: throwaway servers and sample data.

Nothing here is used by the DAGs at run time; it exists so that the tests and the demo
exercise real services instead of mocks.
"""

from include.backup.testing.pipeline import run_backup
from include.backup.testing.postgres import (
    PgCluster,
    PgClusterError,
    db_fingerprint,
    load_sample_data,
)

__all__ = ["PgCluster", "PgClusterError", "db_fingerprint", "load_sample_data", "run_backup"]
