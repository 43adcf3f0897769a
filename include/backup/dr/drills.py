"""Scheduled DR drills: ``dr_monitor`` decides when a source is due for one and triggers
``dr_test`` into the scratch destination of ``dr.drills.<source>`` (docs/dr.md).

A drill is due when the source has an active schedule and

- its newest *successful* DR test finished more than ``dr.test_frequency_days`` ago, or
  there is none (the rule DR_TEST_OVERDUE alerts on), or
- ``dr.drill_cron`` is set and fired since the newest DR test of the source (any outcome)
  started.

A due source without a ``dr.drills`` entry, or whose entry names a production destination
(:func:`include.backup.dr.params.check_not_production`), gets no drill but a warning (a
monitor issue); ``dr_test`` applies every guard of a manual test again when it runs.

The drill's ``dr_test`` run id names the source and the day (or the cron fire time), and
the monitor triggers it with ``skip_when_already_exists``: a drill that failed is not
retried every 15 minutes but the next day, and its DR_TEST_RESULT mail says why.

:func:`objective_findings` scores a measured RTO and RPO against ``dr.rto_hours`` and
``dr.rpo_hours``: RECOVERY_TIME_TEST (the drills' default) fails on a missed objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]

from include.backup.catalog.catalog import as_utc
from include.backup.config.schema import CRON_PRESETS, BackupConfig
from include.backup.dr.params import check_not_production
from include.backup.errors import RestoreRefused

DR_TEST_DAG = "dr_test"
RUN_ID_PREFIX = "drill__"


@dataclass(frozen=True)
class DrillDecision:
    """What the monitor does about one source's drill: ``conf`` is the ``dr_test`` conf
    when it triggers one; ``warning`` says why a due drill cannot run."""

    source: str
    due: bool
    reason: str
    run_id: str | None = None
    conf: dict[str, Any] | None = None
    warning: str | None = None

    def trigger(self) -> dict[str, Any] | None:
        """The TriggerDagRunOperator kwargs of this drill, or None."""
        if self.conf is None:
            return None
        return {"trigger_dag_id": DR_TEST_DAG, "trigger_run_id": self.run_id, "conf": self.conf}


@dataclass
class Objectives:
    issues: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def last_cron_fire(cron: str, now: datetime) -> datetime:
    """The newest fire time of ``cron`` at or before ``now`` (UTC)."""
    expr = CRON_PRESETS.get(cron, cron)
    return as_utc(croniter(expr, as_utc(now) + timedelta(seconds=1)).get_prev(datetime))


def _why_due(
    config: BackupConfig, last_success_at: datetime | None, last_any_at: datetime | None, now: datetime
) -> tuple[str | None, str]:
    """(why the drill is due, the run id's time part), or (None, "") when it is not."""
    freq = config.dr.test_frequency_days
    if last_success_at is None:
        return f"no successful DR test on record (due every {freq} days)", f"{now:%Y%m%d}"
    if now - as_utc(last_success_at) > timedelta(days=freq):
        return f"last successful DR test {as_utc(last_success_at):%Y-%m-%d}, older than {freq} days", (
            f"{now:%Y%m%d}"
        )
    if config.dr.drill_cron:
        fired = last_cron_fire(config.dr.drill_cron, now)
        if last_any_at is None or as_utc(last_any_at) < fired:
            return f"dr.drill_cron {config.dr.drill_cron!r} fired at {fired:%Y-%m-%d %H:%M} UTC", (
                f"{fired:%Y%m%dT%H%M}"
            )
    return None, ""


def drill_decision(
    config: BackupConfig,
    source: str,
    *,
    last_success_at: datetime | None,
    last_any_at: datetime | None,
    now: datetime,
) -> DrillDecision:
    """Whether ``source`` is due for a drill and, if so, the ``dr_test`` conf."""
    if not any(s.source == source and s.active for s in config.schedules):
        return DrillDecision(source, False, "no active schedule: not monitored")
    reason, stamp = _why_due(config, last_success_at, last_any_at, as_utc(now))
    if reason is None:
        return DrillDecision(source, False, "not due")
    drill = config.dr.drills.get(source)
    if drill is None:
        return DrillDecision(source, True, reason, warning=(
            f"DR drill of {source} is due ({reason}) but has no scratch destination: set "
            f"dr.drills.{source}.into (conn:<staging_conn_id>, a new database name or a directory)"
        ))  # fmt: skip
    try:
        check_not_production(config, source, drill.into, f"dr.drills.{source}.into")
    except RestoreRefused as exc:
        return DrillDecision(source, True, reason, warning=f"DR drill of {source} not run: {exc}")
    conf = {
        "test_type": drill.test_type,
        "source": source,
        "target_environment": drill.into,
        "smoke_queries": list(drill.smoke_queries),
        "target": drill.target,
        "overwrite": drill.overwrite,
        "notify_on_completion": True,
        "participants": ["dr_monitor"],
        "notes": f"scheduled drill: {reason}",
    }
    return DrillDecision(source, True, reason, run_id=f"{RUN_ID_PREFIX}{source}__{stamp}", conf=conf)


def plan_drills(config: BackupConfig, sources: dict[str, Any], now: datetime) -> list[DrillDecision]:
    """A decision per source of the monitor report's ``sources`` (its JSON form)."""
    decisions = []
    for source, st in sources.items():
        last = st.get("last_dr_test") or {}
        decisions.append(
            drill_decision(
                config,
                source,
                last_success_at=_time(st.get("last_successful_dr_test_at")),
                last_any_at=_time(last.get("started_at")),
                now=now,
            )
        )
    return decisions


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def objective_findings(
    config: BackupConfig, rto_seconds: float | None, rpo_seconds: float | None
) -> Objectives:
    """A measured RTO / RPO against ``dr.rto_hours`` / ``dr.rpo_hours``: an issue per
    objective missed, a note per objective met (nothing for what was not measured)."""
    found = Objectives()
    for name, seconds, hours_ in (
        ("RTO", rto_seconds, config.dr.rto_hours),
        ("RPO", rpo_seconds, config.dr.rpo_hours),
    ):
        if seconds is None:
            continue
        key = f"dr.{name.lower()}_hours"
        if seconds > hours_ * 3600:
            found.issues.append(
                f"measured {name} {seconds / 3600:.2f} h exceeds the objective {key} {hours_:g} h"
            )
        else:
            found.notes.append(f"measured {name} {seconds:.1f} s within {key} {hours_:g} h")
    return found
