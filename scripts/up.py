"""`make up` / `make down`: a real Airflow with the UI on this machine, no Docker.

    python scripts/up.py up [--executor local|celery] [--workers N] [--port 8080] [--run-dir .run]
    python scripts/up.py status | down

The logic is in include/backup/devstack.py.
"""

import sys

from include.backup.devstack import main

if __name__ == "__main__":
    sys.exit(main())
