"""DR without a human, against a real PostgreSQL 15 primary and its hot standby: dr_monitor's
``dr_actions`` step (include/backup/dr/dags.py run_dr_actions) triggers a scheduled drill
into the scratch destination, and fails the primary over after three failed checks (or
recommends it). The runs it triggers are executed here through the functions their DAGs'
tasks call, with the conf the monitor produced (no scheduler)."""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest

from include.backup.alerts.notify import send
from include.backup.config.loader import load_config
from include.backup.dr import failover
from include.backup.dr.dags import run_dr_actions
from include.backup.dr.monitor import run_monitor
from include.backup.testing import PgCluster, load_sample_data, run_backup
from tests.integration.test_dr_test import _dr_test, _setup

pytestmark = pytest.mark.integration

DB = "events"
SCRATCH = "events_drill"


@pytest.fixture(scope="module")
def primary() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        load_sample_data(cluster, DB, rows=200)
        yield cluster


def _configure(tmp_path, monkeypatch, primary: PgCluster, *, auto: bool, standby: PgCluster | None = None):
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_PG", primary.uri(DB))
    if standby is not None:
        monkeypatch.setenv("AIRFLOW_CONN_EVENTS_PG_STANDBY", standby.uri(DB))
    _setup(
        tmp_path,
        monkeypatch,
        f"""
        staging_dir: {tmp_path}/staging
        dr:
          notification_emails: [oncall@example.com]
          auto_failover: {str(auto).lower()}
          rpo_hours: 1
          rto_hours: 1
          drills:
            events_pg: {{into: {SCRATCH}, test_type: RECOVERY_TIME_TEST}}
          failover:
            events_pg:
              switch: {{kind: promote_standby, conn_id: events_pg_standby, timeout_seconds: 60}}
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
        sources:
          events_pg: {{type: postgres, conn_id: events_pg}}
        schedules:
          - {{name: pg_full, source: events_pg, type: FULL, cron: "@daily", targets: [disk1]}}
    """,
    )


def _monitor_round(tmp_path) -> list[dict]:
    """One dr_monitor run: the report, then dr_actions on it."""
    report = run_monitor(load_config().config).to_json()
    return run_dr_actions(report, state_path=tmp_path / "monitor-state")


def _failovers(tmp_path) -> list[dict]:
    """One round's failover checks (dr_actions without the report's sources: no drills)."""
    return run_dr_actions({"sources": {}}, state_path=tmp_path / "monitor-state")


def test_scheduled_drill_restores_into_the_scratch_database_and_is_scored(primary, tmp_path, monkeypatch):
    _configure(tmp_path, monkeypatch, primary, auto=False)
    (tmp_path / "monitor-state").mkdir()
    backup = run_backup("pg_full", run_id="run1")

    (drill,) = _monitor_round(tmp_path)  # never tested: due; the primary is up: no failover
    assert drill["trigger_dag_id"] == "dr_test" and drill["trigger_run_id"].startswith("drill__events_pg__")
    assert drill["conf"]["target_environment"] == SCRATCH
    result = _dr_test(drill["conf"])  # what the triggered dr_test run does with that conf
    (report,) = result["reports"]
    assert result["success"] is True, report["issues"]
    assert report["test_type"] == "RECOVERY_TIME_TEST" and report["backup_id"] == backup["backup_id"]
    assert report["target_environment"] == SCRATCH and report["participants"] == ["dr_monitor"]
    assert report["measured_rto_seconds"] > 0 and report["measured_rpo_seconds"] is not None
    # Scored against the objectives, in the report's notes.
    assert "measured RTO" in report["notes"] and "within dr.rto_hours 1 h" in report["notes"]
    assert "within dr.rpo_hours 1 h" in report["notes"]
    assert "scheduled drill: no successful DR test on record" in report["notes"]
    assert primary.psql("SELECT count(*) > 0 FROM users", db=SCRATCH) == "t"

    # The drill's report is at the target: the next round finds nothing due.
    assert _monitor_round(tmp_path) == []


def test_down_primary_is_failed_over_by_the_monitor_alone(primary, tmp_path, monkeypatch, smtp_server):
    standby = primary.start_standby()
    try:
        _configure(tmp_path, monkeypatch, primary, auto=False, standby=standby)
        monkeypatch.setenv("BACKUP_ALERTS_STATE_DIR", str(tmp_path / "monitor-state"))
        (tmp_path / "monitor-state").mkdir()
        run_backup("pg_full", run_id="run1")
        primary.wait_for_standby(standby)
        smtp_server.clear()

        # A flapping primary (down for one check) triggers nothing.
        primary.crash()
        assert _failovers(tmp_path) == []
        primary.resume()
        assert _failovers(tmp_path) == []
        primary.crash()
        assert [_failovers(tmp_path) for _ in range(2)] == [[], []]
        assert smtp_server.messages() == []

        # auto_failover false: the third failed check mails FAILOVER_RECOMMENDED, once.
        assert _failovers(tmp_path) == []
        assert _failovers(tmp_path) == []  # mailed, and again next round: one mail (dedupe key)
        (recommended,) = smtp_server.wait_for(1)
        part = recommended.get_body(preferencelist=("html", "plain"))
        body = html.unescape(part.get_content()) if part is not None else ""
        assert "Failover recommended" in recommended["Subject"]
        assert "airflow dags trigger failover --conf" in body and '"confirm": "events_pg"' in body

        # auto_failover true, a new outage: the monitor triggers the failover DAG itself.
        config_file = tmp_path / "backup_config.yaml"
        config_file.write_text(config_file.read_text().replace("auto_failover: false", "auto_failover: true"))
        (tmp_path / "monitor-state" / "backup-failover-checks.json").unlink()
        rounds = [_failovers(tmp_path) for _ in range(3)]
        assert rounds[:2] == [[], []]
        (trigger,) = rounds[2]
        assert trigger["trigger_dag_id"] == "failover"
        assert trigger["trigger_run_id"].startswith("autofailover__events_pg__")
        (again,) = _failovers(tmp_path)  # the same run id: started once (skip_when_already_exists)
        assert again["trigger_run_id"] == trigger["trigger_run_id"]

        # The failover run with that conf: the same guards and steps as a manual one.
        config = load_config().config
        req = failover.parse_failover_params(trigger["conf"], config)
        assessed = failover.assess(config, req.source, req.target)
        switched = failover.switch(config, req.source, req.secondary,
                                   backup_id=assessed["backup_id"], dry_run=req.dry_run)  # fmt: skip
        restored = failover.restore_secondary(
            config, req.source, req.secondary, backup_id=assessed["backup_id"],
            target=assessed["target"], overwrite=req.overwrite, switched=switched,
        )  # fmt: skip
        verified = failover.verify_secondary(config, restored)
        assert switched["promoted"] is True and verified["ok"] is True
        assert standby.psql("SELECT pg_is_in_recovery()") == "f"
        steps = {"assess": assessed, "switch": switched, "restore": restored, "verify": verified}
        alert = failover.activated_alert(req, steps, dag_id="failover", run_id=trigger["trigger_run_id"])
        send([alert], config.dr.notification_emails, config.dr.smtp_conn_id)  # as its notify task does
        mails = smtp_server.wait_for(2)
        assert len(mails) == 2 and "DR activated" in mails[1]["Subject"]  # one per outage
    finally:
        standby.stop()
