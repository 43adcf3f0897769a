"""When dr_monitor triggers a DR drill (include/backup/dr/drills.py), and how a measured RTO
and RPO are scored against the objectives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from include.backup.config.schema import BackupConfig
from include.backup.dr.drills import drill_decision, objective_findings, plan_drills

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def make_config(drills: dict[str, Any] | None = None, **dr: Any) -> BackupConfig:
    return BackupConfig.model_validate(
        {
            "dr": {"test_frequency_days": 30, "rto_hours": 1, "rpo_hours": 1,
                   "drills": drills if drills is not None else {"events_pg": {"into": "conn:staging_pg"}},
                   **dr},  # fmt: skip
            "targets": {"local": {"type": "local", "path": "/srv/backups"}},
            "sources": {"events_pg": {"type": "postgres", "conn_id": "events_pg"}},
            "schedules": [
                {"name": "hourly", "source": "events_pg", "cron": "0 * * * *", "targets": ["local"]}
            ],
        }
    )


def test_due_when_the_last_successful_test_is_older_than_the_frequency():
    d = drill_decision(make_config(), "events_pg", last_success_at=NOW - timedelta(days=31),
                       last_any_at=NOW - timedelta(days=31), now=NOW)  # fmt: skip
    assert d.due and d.warning is None
    trig = d.trigger()
    assert trig is not None and trig["trigger_dag_id"] == "dr_test"
    assert trig["trigger_run_id"] == "drill__events_pg__20261207"  # once a day at most
    conf = trig["conf"]
    assert conf["test_type"] == "RECOVERY_TIME_TEST" and conf["target_environment"] == "conn:staging_pg"
    assert conf["source"] == "events_pg" and conf["notify_on_completion"] is True
    assert "older than 30 days" in conf["notes"]


def test_due_when_never_tested():
    d = drill_decision(make_config(), "events_pg", last_success_at=None, last_any_at=None, now=NOW)
    assert d.due and d.conf is not None and "no successful DR test" in d.reason


def test_not_due_within_the_frequency():
    d = drill_decision(make_config(), "events_pg", last_success_at=NOW - timedelta(days=29),
                       last_any_at=NOW - timedelta(days=29), now=NOW)  # fmt: skip
    assert not d.due and d.trigger() is None and d.warning is None


def test_drill_cron_fires_since_the_last_test():
    config = make_config(drill_cron="0 2 * * 1")  # Mondays 02:00; NOW is Monday 10:00
    tested = NOW - timedelta(days=3)
    d = drill_decision(config, "events_pg", last_success_at=tested, last_any_at=tested, now=NOW)
    assert d.due and d.run_id == "drill__events_pg__20261207T0200"
    after = drill_decision(config, "events_pg", last_success_at=tested,
                           last_any_at=NOW - timedelta(hours=1), now=NOW)  # fmt: skip
    assert not after.due  # a test started after the cron fired: that was the drill


def test_due_without_a_scratch_destination_warns_and_triggers_nothing():
    d = drill_decision(make_config(drills={}), "events_pg", last_success_at=None, last_any_at=None, now=NOW)
    assert d.due and d.trigger() is None
    assert d.warning is not None and "dr.drills.events_pg.into" in d.warning


def test_a_production_destination_is_refused():
    config = make_config(drills={"events_pg": {"into": "conn:events_pg"}})
    d = drill_decision(config, "events_pg", last_success_at=None, last_any_at=None, now=NOW)
    assert d.trigger() is None
    assert d.warning is not None and "production connection" in d.warning


def test_plan_reads_the_monitor_report_json():
    then = (NOW - timedelta(days=40)).isoformat()
    sources = {"events_pg": {"last_successful_dr_test_at": then, "last_dr_test": {"started_at": then}}}
    (d,) = plan_drills(make_config(), sources, NOW)
    assert d.due and d.conf is not None


def test_config_refuses_a_bad_drill_cron_and_a_bad_destination():
    with pytest.raises(ValidationError, match="drill_cron"):
        make_config(drill_cron="every monday")
    with pytest.raises(ValidationError, match=r"drills\.events_pg\.into"):
        make_config(drills={"events_pg": {"into": "db; rm -rf /"}})


def test_objectives_scored():
    config = make_config()
    met = objective_findings(config, 120.0, 600.0)
    assert met.issues == [] and len(met.notes) == 2
    missed = objective_findings(config, 2 * 3600.0, 3 * 3600.0)
    assert [i.split(" ")[1] for i in missed.issues] == ["RTO", "RPO"]
    assert "exceeds the objective dr.rpo_hours 1 h" in missed.issues[1]
