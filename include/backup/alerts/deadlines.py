"""The deadline alerts of the backup and DR DAGs, light enough for DAG parsing.

A DagBag builds these for every schedule's DAG, so this imports only the config schema,
croniter and notify; the callback that runs when a deadline is missed lives in
:mod:`include.backup.alerts.callbacks` (by its path), which also explains the choice of
deadlines (docs/alerts.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]

from include.backup.alerts.notify import AlertKind
from include.backup.config.schema import CRON_PRESETS

DEADLINE_CALLBACK_PATH = "include.backup.alerts.callbacks.deadline_missed"


def cron_interval(cron: str, now: datetime) -> timedelta:
    """The gap between the schedule's last two fire times before ``now``."""
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)  # naive means UTC
    it = croniter(CRON_PRESETS.get(cron, cron), now)
    last = it.get_prev(datetime)
    before = it.get_prev(datetime)
    return last - before


@lru_cache(maxsize=4096)
def _interval_at(cron: str, minute: datetime) -> timedelta:
    return cron_interval(cron, minute)


def _interval(schedule: Any, now: datetime | None = None) -> timedelta:
    # Cron fires on whole minutes, so the interval before ``now`` is the one before its
    # minute; one DAG parse builds every schedule within seconds and schedules share crons:
    # croniter once per cron and minute, not once per schedule (bench/bench_parse.py).
    now = now or datetime.now(UTC)
    return _interval_at(schedule.cron, now.replace(second=0, microsecond=0))


def _alert(kind: AlertKind, interval: timedelta, kwargs: dict[str, Any]) -> Any:
    # Exported by airflow.sdk at run time but missing from its __init__.pyi (task-sdk 1.3.2).
    from airflow.sdk import (  # type: ignore[attr-defined]  # lazy: Airflow: not loaded by the CLI and config checks
        AsyncCallback,
        DeadlineAlert,
        DeadlineReference,
    )

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=interval,
        callback=AsyncCallback(
            DEADLINE_CALLBACK_PATH,
            kwargs={"kind": kind.value, "interval_seconds": interval.total_seconds(), **kwargs},
        ),
        name=f"{kind.value.lower()}",
    )


def deadlines_for(config: Any, schedule: Any) -> list[Any]:
    """The deadline alerts of a backup DAG: BACKUP_LATE at one cron interval after the run
    was queued when that is shorter than the RPO, and RPO_MISSED at the RPO."""
    rpo = timedelta(hours=config.dr.rpo_hours)
    interval = _interval(schedule)
    common = {
        "schedule": schedule.name,
        "source": schedule.source,
        "rpo_hours": float(config.dr.rpo_hours),
    }
    alerts = []
    if interval < rpo:
        alerts.append(_alert(AlertKind.BACKUP_LATE, interval, common))
    alerts.append(_alert(AlertKind.RPO_MISSED, rpo, common))
    return alerts


def deadline_for(config: Any, schedule: Any) -> Any:
    """The DeadlineAlert to pass as ``DAG(deadline=...)`` for a backup schedule: queued-at
    + min(RPO, cron interval); the kind is BACKUP_LATE when the cron interval is the
    smaller, else RPO_MISSED. None for an inactive schedule."""
    if not getattr(schedule, "active", True):
        return None
    return deadlines_for(config, schedule)[0]


def rto_deadline_for(config: Any, operation: str = "restore") -> Any:
    """The DeadlineAlert for a ``restore`` / ``failover`` DAG: queued-at + RTO -> RTO_MISSED."""
    rto = timedelta(hours=config.dr.rto_hours)
    return _alert(
        AlertKind.RTO_MISSED, rto, {"operation": operation, "rto_hours": float(config.dr.rto_hours)}
    )

