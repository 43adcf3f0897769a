"""Make the project root importable (``include.backup``) however Airflow was started.

Airflow puts dags/ and plugins/ on sys.path but not their parent; Astro-style projects
rely on the working directory instead, which the dag processor does not guarantee.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
