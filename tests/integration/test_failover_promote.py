"""Failover with the ``promote_standby`` switch against a real PostgreSQL 15 primary and a
hot standby streaming from it (``pg_basebackup -R``), through the same functions the
``failover`` DAG's tasks call, without Airflow's scheduler. Connections reach the
PostgresHook as AIRFLOW_CONN_<ID> URIs; the standby's carries a password that must never
show up in a result, an error or the log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from include.backup.config.loader import load_config
from include.backup.dr import failover
from include.backup.dr.standby import lsn_bytes
from include.backup.errors import BackupError
from include.backup.testing import PgCluster, db_fingerprint, load_sample_data, run_backup
from tests.integration.test_dr_test import _dr_test, _setup

pytestmark = pytest.mark.integration

DB = "events"
DR_USER = "dr_admin"
SECRET = "Pr0mote-Me-s3cret"


@pytest.fixture(scope="module")
def primary() -> Iterator[PgCluster]:
    """A primary of our own (the session's cluster is shared with other tests), with the
    sample data and a password login that the standby inherits (roles and pg_hba.conf
    are copied by pg_basebackup)."""
    with PgCluster() as cluster:
        load_sample_data(cluster, DB, rows=300)
        cluster.create_user(DR_USER, SECRET)
        yield cluster


@pytest.fixture
def standby(primary: PgCluster) -> Iterator[PgCluster]:
    """A fresh hot standby per test: a test promotes it."""
    cluster = primary.start_standby()
    try:
        yield cluster
    finally:
        cluster.stop()


def _configure(tmp_path, monkeypatch, primary: PgCluster, switch_conn: str, switch_uri: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_PG", primary.uri(DB))
    monkeypatch.setenv(f"AIRFLOW_CONN_{switch_conn.upper()}", switch_uri)
    _setup(
        tmp_path,
        monkeypatch,
        f"""
        staging_dir: {tmp_path}/staging
        dr:
          failover:
            events_pg:
              switch: {{kind: promote_standby, conn_id: {switch_conn}, timeout_seconds: 60}}
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
        sources:
          events_pg: {{type: postgres, conn_id: events_pg}}
        schedules:
          - {{name: pg_full, source: events_pg, type: FULL, cron: "@daily", targets: [disk1]}}
    """,
    )


def _password_uri(cluster: PgCluster) -> str:
    return f"postgres://{DR_USER}:{SECRET}@{cluster.host}:{cluster.port}/{DB}"


def _failover(dry_run: bool) -> dict:
    """The failover DAG's steps in order, as its tasks call them."""
    config = load_config().config
    request = failover.parse_failover_params(
        {"source": "events_pg", "confirm": "events_pg", "dry_run": dry_run}, config
    )
    assessed = failover.assess(config, request.source, request.target)
    switched = failover.switch(
        config, request.source, request.secondary, backup_id=assessed["backup_id"], dry_run=request.dry_run
    )
    restored = failover.restore_secondary(
        config, request.source, request.secondary, backup_id=assessed["backup_id"],
        target=assessed["target"], overwrite=request.overwrite, switched=switched,
    )
    verified = failover.verify_secondary(config, restored)
    steps = {"assess": assessed, "switch": switched, "restore": restored, "verify": verified}
    alert = failover.activated_alert(request, steps, run_id="manual__test")
    return {"request": request, **steps, "alert": alert}


def test_promote_standby_failover(primary, standby, tmp_path, monkeypatch, caplog):
    caplog.set_level("DEBUG")
    _configure(tmp_path, monkeypatch, primary, "events_pg_standby", _password_uri(standby))
    backup = run_backup("pg_full", run_id="run1")
    # Written after the backup: only the standby has it.
    primary.psql(
        "CREATE TABLE after_backup (id int PRIMARY KEY, written_at timestamptz NOT NULL);"
        "INSERT INTO after_backup SELECT g, clock_timestamp() FROM generate_series(1, 100) g",
        db=DB,
    )
    last_write = datetime.fromisoformat(primary.psql("SELECT max(written_at) FROM after_backup", db=DB))
    caught_up_at = primary.wait_for_standby(standby)

    # Dry run (and the FAILOVER_TEST rehearsal): described, checked read-only, not promoted.
    dry = _failover(dry_run=True)
    assert dry["request"].secondary == "conn:events_pg_standby"
    assert dry["switch"]["done"] is False and "would promote the standby" in dry["switch"]["detail"]
    assert dry["restore"]["skipped"] is True and "dry run" in dry["restore"]["detail"]
    assert any("tables of backup" in n for n in dry["verify"]["notes"])
    rehearsal = _dr_test({"test_type": "FAILOVER_TEST", "source": "events_pg",
                          "target_environment": "conn:events_pg_standby", "notify_on_completion": False})
    (report,) = rehearsal["reports"]
    assert rehearsal["success"] is True, report["issues"]
    assert "would promote the standby" in report["notes"] and "skipped: dry run" in report["notes"]
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"

    # The failover.
    live = _failover(dry_run=False)
    done_at = datetime.now(UTC)
    switched = live["switch"]
    assert switched["done"] is True and switched["promoted"] is True and switched["timeline"] == 2
    assert switched["server"] == f"127.0.0.1:{standby.port}"
    # The data-loss window: the last transaction it replayed is our last write (or later),
    # and the lag it reports cannot exceed the time since that write.
    replayed_at = datetime.fromisoformat(switched["last_replayed_at"])
    # (wait_for_standby waits for the insert position: with synchronous_commit off, the
    # write position can precede our commit, and the standby then lacks it.)
    assert last_write <= replayed_at <= done_at
    assert 0 <= switched["replay_lag_seconds"] <= (done_at - last_write).total_seconds()
    assert lsn_bytes(switched["replay_lsn"]) >= lsn_bytes(caught_up_at)

    # Nothing restored over it: the rows written after the backup are still there.
    assert live["restore"]["skipped"] is True and live["restore"]["backup_id"] == backup["backup_id"]
    assert "was promoted, it holds the data" in live["restore"]["detail"]
    assert standby.psql("SELECT count(*) FROM after_backup", db=DB) == "100"
    assert live["verify"]["ok"] is True and live["verify"]["standby"]["in_recovery"] is False
    assert any("bytes of WAL past the start of backup" in n for n in live["verify"]["notes"])
    assert live["alert"].summary.endswith("completed")
    assert live["alert"].facts["restore"].startswith(
        "skipped: the standby conn:events_pg_standby was promoted"
    )

    # It is a primary now: out of recovery, takes writes.
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"
    standby.psql("INSERT INTO after_backup VALUES (101, now())", db=DB)

    # A retry of the switch task after the promote succeeds and changes nothing.
    again = failover.switch(load_config().config, "events_pg", "conn:events_pg_standby", backup_id="x")
    assert again["done"] is True and again["already_promoted"] is True and again["promoted"] is False
    assert "already out of recovery on timeline 2" in again["detail"]
    assert standby.psql("SELECT count(*) FROM after_backup", db=DB) == "101"
    # A rehearsal now says the standby is gone: nothing is left to promote.
    late = _dr_test({"test_type": "FAILOVER_TEST", "source": "events_pg",
                     "target_environment": "conn:events_pg_standby", "notify_on_completion": False})
    assert late["success"] is False and "already out of recovery" in late["reports"][0]["issues"][0]

    everything = repr([dry, rehearsal, live, again, late]) + caplog.text
    assert SECRET not in everything


def test_switch_pointed_at_the_primary_is_refused_and_changes_nothing(primary, tmp_path, monkeypatch, caplog):
    _configure(tmp_path, monkeypatch, primary, "events_pg_by_mistake", _password_uri(primary))
    run_backup("pg_full", run_id="run1")
    before = db_fingerprint(primary, DB)
    with pytest.raises(BackupError) as caught:
        _failover(dry_run=False)
    message = str(caught.value)
    assert f"127.0.0.1:{primary.port} (Airflow connection 'events_pg_by_mistake') is not a standby" in message
    assert "nothing was changed" in message and "switch.conn_id" in message
    assert SECRET not in message + caplog.text
    assert primary.psql("SELECT pg_is_in_recovery()") == "f"
    assert db_fingerprint(primary, DB) == before
    # The rehearsal finds it too, before anyone needs the failover.
    rehearsal = _dr_test({"test_type": "FAILOVER_TEST", "source": "events_pg",
                          "target_environment": "conn:events_pg_by_mistake", "notify_on_completion": False})
    assert rehearsal["success"] is False
    assert "not a standby" in rehearsal["reports"][0]["issues"][0]
