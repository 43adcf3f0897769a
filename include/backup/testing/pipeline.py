"""One backup run outside Airflow, for tests: the DAG's steps in the DAG's order.

The backup DAG runs dump → encrypt → checksum → upload (every target) → verify (every
target) → cleanup; ``run_backup`` calls the same step functions of ``include.backup.tasks``
in that order, in this process, so a test exercises what a DAG run would without a
scheduler. The config and key ring come from the environment, as in a task.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from include.backup import tasks
from include.backup.runtime import load_config


def run_backup(
    schedule: str,
    *,
    run_id: str | None = None,
    logical_date: datetime | None = None,
    cleanup: bool = True,
    deep: bool = False,
) -> dict[str, Any]:
    """Back up ``schedule`` to every one of its targets and verify each; returns the step
    metadata (``meta["backup_id"]`` names the backup).

    ``run_id`` defaults to a fresh one, ``logical_date`` to now; ``cleanup=False`` skips the
    last step (staging removal and retention), ``deep=True`` verifies by decrypting."""
    run_id = run_id or f"run-{uuid.uuid4().hex[:8]}"
    meta = tasks.run_dump(schedule, run_id, logical_date or datetime.now(UTC))
    meta = tasks.run_checksum(tasks.run_encrypt(meta))
    targets = load_config().schedule(schedule).targets
    for target in targets:
        tasks.run_upload(meta, target)
    for target in targets:
        tasks.run_verify(meta, target, deep=deep)
    if cleanup:
        tasks.run_cleanup(meta, schedule)
    return meta
