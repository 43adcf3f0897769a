"""What the project's DAGs share: the backup DAGs (factory.py) and the DR DAGs (dr/dags.py).

:func:`dag_defaults` gives the DAG keyword arguments they have in common (start date, no
catch-up, runs at a time, tags) and their ``default_args`` (owner, retries, retry delays,
the failure callback that mails on-call); each DAG says only how it differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

OWNER = "backup"
START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
# A backup step failing on a passing fault (a target, the network) is retried, backing off.
BACKOFF: dict[str, Any] = {
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}


def on_backup_failure(
    context: Mapping[str, Any],
    *,
    config: Any = None,
    state_path: str | os.PathLike[str] | None = None,
) -> None:
    """The ``on_failure_callback`` of the project's DAGs: runs
    :func:`include.backup.alerts.callbacks.on_backup_failure` (mail, metrics, staging) when
    a task or run fails, so that parsing a DAG does not import what it needs. Never raises."""
    from include.backup.alerts import callbacks  # lazy: DAG parse time (callbacks pulls in tasks, targets)

    callbacks.on_backup_failure(context, config=config, state_path=state_path)


def dag_defaults(
    *tags: str,
    retries: int,
    backoff: bool = False,
    alert_on_failure: bool = True,
    max_active_runs: int | None = 1,
) -> dict[str, Any]:
    """The keyword arguments for ``DAG(...)`` that every DAG of the project shares.

    ``tags`` follow the common "backup" tag; ``backoff`` adds the retry delays above;
    ``alert_on_failure`` makes every task's failure call on_backup_failure;
    ``max_active_runs=None`` leaves Airflow's own default."""
    default_args: dict[str, Any] = {"owner": OWNER, "retries": retries}
    if backoff:
        default_args.update(BACKOFF)
    if alert_on_failure:
        default_args["on_failure_callback"] = on_backup_failure
    kwargs: dict[str, Any] = {
        "start_date": START_DATE,
        "catchup": False,
        "default_args": default_args,
        "tags": ["backup", *tags],
    }
    if max_active_runs is not None:
        kwargs["max_active_runs"] = max_active_runs
    return kwargs
