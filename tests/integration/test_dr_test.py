"""DR tests and failover end to end without Airflow's scheduler: real backups (the same
step functions the backup DAGs call), real restores into the session's PostgreSQL cluster
and into directories, reports written at real (local) targets."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from datetime import UTC, datetime

import pytest

from include.backup.catalog.manifest import PAYLOAD_NAME
from include.backup.config.loader import load_config
from include.backup.dr import failover
from include.backup.dr.dags import check_dr_test_result, publish_dr_test, run_dr_test_task
from include.backup.dr.drtest import parse_dr_test_params
from include.backup.dr.reports import list_reports
from include.backup.errors import BackupError, RestoreRefused
from include.backup.keys import KeyRing
from include.backup.targets import build_target
from include.backup.testing import PgCluster, run_backup

pytestmark = pytest.mark.integration


def _setup(tmp_path, monkeypatch, body: str) -> None:
    config = tmp_path / "backup_config.yaml"
    config.write_text(textwrap.dedent(body))
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("BACKUP_ALERTS_STATE_DIR", str(tmp_path / "alert-state"))


@pytest.fixture
def pg_env(pg_cluster, tmp_path, monkeypatch):
    _setup(
        tmp_path,
        monkeypatch,
        f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
        sources:
          events_pg: {{type: postgres, conn_id: events_pg}}
        schedules:
          - {{name: pg_full, source: events_pg, type: FULL, cron: "@daily", targets: [disk1]}}
    """,
    )
    return tmp_path, pg_cluster


@pytest.fixture(scope="module")
def staging_cluster():
    """A second PostgreSQL server: the staging environment DR tests restore into (smoke
    queries never run on the source's server)."""
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def staging(staging_cluster, monkeypatch):
    """``staging(db)`` -> ``conn:staging_pg``, a connection to database ``db`` on the
    staging server (dropped again at the end)."""
    made: list[str] = []

    def conn(dbname: str) -> str:
        monkeypatch.setenv("AIRFLOW_CONN_STAGING_PG", staging_cluster.uri(dbname))
        made.append(dbname)
        return "conn:staging_pg"

    yield conn
    for db in made:
        staging_cluster.drop_database(db)


@pytest.fixture
def files_env(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "docs/sub").mkdir(parents=True)
    (data / "docs/a.txt").write_text("alpha\n" * 1000)
    (data / "docs/sub/b.bin").write_bytes(os.urandom(200_000))
    _setup(
        tmp_path,
        monkeypatch,
        f"""
        staging_dir: {tmp_path}/staging
        dr:
          failover:
            docs:
              secondary: {tmp_path}/secondary
              switch: {{kind: airflow_variable, variable: docs_location, value: secondary}}
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
          disk2: {{type: local, path: {tmp_path}/t2, offsite: true}}
        sources:
          docs: {{type: files, paths: [{data}/docs]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk1, disk2]}}
    """,
    )
    return tmp_path


def _dr_test(params: dict) -> dict:
    request = parse_dr_test_params(params, load_config().config)
    return run_dr_test_task(request.to_xcom(), "manual__test")


def test_restore_test_against_postgres_records_rto_and_report(pg_env, staging):
    tmp, cluster = pg_env
    meta = run_backup("pg_full", run_id="run1")
    result = _dr_test(
        {
            "test_type": "RESTORE_TEST",
            "source": "events_pg",
            "target_environment": staging("dr_restore_check"),
            "smoke_queries": [
                "SELECT 1 FROM users LIMIT 1",
                "SELECT count(*) FROM events HAVING count(*) > 0",
            ],
            "participants": ["alice@example.com"],
            "notes": "quarterly",
            "notify_on_completion": False,
        }
    )
    (report,) = result["reports"]
    assert result["success"] is True, report["issues"]
    assert report["backup_id"] == meta["backup_id"]
    assert report["measured_rto_seconds"] > 0
    assert report["measured_rpo_seconds"] >= 0
    assert report["participants"] == ["alice@example.com"] and "quarterly" in report["notes"]
    assert report["target_environment"] == "conn:staging_pg"
    config = load_config().config
    stored = list_reports(build_target("disk1", config.targets["disk1"]), "events_pg")
    assert [r.test_id for r in stored] == [report["test_id"]]
    assert stored[0].success and stored[0].measured_rto_seconds == report["measured_rto_seconds"]
    assert list((tmp / "t1" / "_dr_tests" / "events_pg").glob("*.json"))
    assert check_dr_test_result(publish_dr_test(result))["success"] is True

    # A smoke query that finds nothing fails the test (into a second new database).
    bad = _dr_test(
        {
            "test_type": "RECOVERY_TIME_TEST",
            "source": "events_pg",
            "target_environment": staging("dr_restore_check2"),
            "smoke_queries": ["SELECT 1 FROM users WHERE false"],
            "notify_on_completion": False,
        }
    )
    assert bad["success"] is False
    assert any("returned no row" in i for i in bad["reports"][0]["issues"])
    # The restored database is not overwritten by a second test unless asked.
    again = _dr_test(
        {
            "test_type": "RESTORE_TEST",
            "source": "events_pg",
            "target_environment": staging("dr_restore_check"),
            "notify_on_completion": False,
        }
    )
    assert again["success"] is False and "restore failed" in again["reports"][0]["issues"][0]


def test_restore_test_refuses_the_production_database(pg_env):
    run_backup("pg_full", run_id="run1")
    result = _dr_test(
        {
            "test_type": "RESTORE_TEST",
            "source": "events_pg",
            "target_environment": "events",
            "overwrite": True,
            "notify_on_completion": False,
        }
    )
    assert result["success"] is False
    assert "production database" in result["reports"][0]["issues"][0]


def test_corrupt_backup_fails_the_restore_test(pg_env):
    tmp, _ = pg_env
    meta = run_backup("pg_full", run_id="run1")
    payload = next((tmp / "t1").rglob(PAYLOAD_NAME))
    raw = bytearray(payload.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    payload.write_bytes(bytes(raw))
    result = _dr_test(
        {
            "test_type": "RESTORE_TEST",
            "source": "events_pg",
            "target_environment": "dr_restore_corrupt",
            "notify_on_completion": False,
        }
    )
    (report,) = result["reports"]
    assert result["success"] is False and report["success"] is False
    assert any(meta["backup_id"] in i and "does not match its manifest" in i for i in report["issues"])
    stored = json.loads(next((tmp / "t1" / "_dr_tests" / "events_pg").glob("*.json")).read_text())
    assert stored["success"] is False and stored["issues"] == report["issues"]
    with pytest.raises(BackupError, match="does not match"):
        check_dr_test_result(publish_dr_test(result))


def test_backup_verification_of_files_at_every_target(files_env):
    tmp = files_env
    meta = run_backup("docs_full", run_id="run1")
    ok = _dr_test({"test_type": "BACKUP_VERIFICATION", "source": "docs", "notify_on_completion": False})
    (report,) = ok["reports"]
    assert ok["success"] is True, report["issues"]
    assert report["backup_id"] == meta["backup_id"] and report["measured_rpo_seconds"] >= 0
    assert "disk1=" in report["notes"] and "disk2=" in report["notes"]
    assert set(ok["written"]) == {"disk1", "disk2"}

    payload = next((tmp / "t2").rglob(PAYLOAD_NAME))
    raw = bytearray(payload.read_bytes())
    raw[-40] ^= 0x01
    payload.write_bytes(bytes(raw))
    bad = _dr_test({"test_type": "BACKUP_VERIFICATION", "notify_on_completion": False})
    (report,) = bad["reports"]
    assert bad["success"] is False
    assert len(report["issues"]) == 1 and report["issues"][0].startswith("target disk2:")
    assert len(list((tmp / "t1" / "_dr_tests" / "docs").glob("*.json"))) == 2


def test_failover_refuses_without_confirmation(files_env):
    run_backup("docs_full", run_id="run1")
    config = load_config().config
    with pytest.raises(RestoreRefused, match="confirm"):
        failover.parse_failover_params({"source": "docs"}, config)
    with pytest.raises(RestoreRefused, match="confirm"):
        failover.parse_failover_params({"source": "docs", "confirm": "yes"}, config)
    assert not (files_env / "secondary").exists()


def test_failover_dry_run_restores_but_does_not_switch(files_env, monkeypatch):
    tmp = files_env
    meta = run_backup("docs_full", run_id="run1")
    config = load_config().config
    request = failover.parse_failover_params(
        {"source": "docs", "confirm": "docs", "dry_run": True, "secondary": str(tmp / "staging_env")}, config
    )
    assessed = failover.assess(config, request.source, request.target)
    assert assessed["backup_id"] == meta["backup_id"] and assessed["rpo_ok"]

    def no_variables(*a, **k):  # the dry run must not reach Airflow's Variables
        raise AssertionError("Variable.set called in a dry run")

    monkeypatch.setattr("airflow.sdk.Variable.set", no_variables)
    switched = failover.switch(
        config, request.source, request.secondary, backup_id=assessed["backup_id"], dry_run=request.dry_run
    )
    assert switched["done"] is False and "would set Variable 'docs_location'" in switched["detail"]
    restored = failover.restore_secondary(
        config, request.source, request.secondary, backup_id=assessed["backup_id"], target=assessed["target"]
    )
    assert restored["stats"]["files"] == 2
    assert (tmp / "staging_env" / str(tmp / "data/docs/a.txt").lstrip("/")).read_text() == "alpha\n" * 1000
    verified = failover.verify_secondary(config, restored)
    assert verified["ok"]
    alert = failover.activated_alert(
        request,
        {"assess": assessed, "switch": switched, "restore": restored, "verify": verified},
        run_id="r1",
    )
    assert alert.kind == "DR_ACTIVATED" and "dry-run" in alert.summary and "completed" in alert.summary
    assert not (tmp / "secondary").exists()  # the configured (production) secondary untouched

    # FAILOVER_TEST: the same steps through a DR test, switch in dry run.
    result = _dr_test(
        {
            "test_type": "FAILOVER_TEST",
            "source": "docs",
            "target_environment": str(tmp / "rehearsal"),
            "notify_on_completion": False,
        }
    )
    (report,) = result["reports"]
    assert result["success"] is True, report["issues"]
    assert "dry run: would set Variable" in report["notes"] and report["measured_rto_seconds"] > 0
    assert (tmp / "rehearsal").exists()


# --- smoke queries: only in the restored copy, read-only, timed out ------------------------

SMOKE_SRC_DB = "smoke_src"


@pytest.fixture
def smoke_env(pg_cluster, tmp_path, monkeypatch):
    """Source ``smoke_pg``: database smoke_src on the source server (three rows in ``t``,
    a function that writes and one that runs COPY ... TO PROGRAM), backed up once to a
    local target. Yields (source cluster, marker path COPY TO PROGRAM would create)."""
    marker = f"/tmp/dr-smoke-{os.getpid()}-{tmp_path.name}"
    pg_cluster.drop_database(SMOKE_SRC_DB)
    pg_cluster.create_database(SMOKE_SRC_DB)
    pg_cluster.psql(
        """
        CREATE TABLE t (id serial PRIMARY KEY, v text);
        INSERT INTO t (v) VALUES ('a'), ('b'), ('c');
        CREATE FUNCTION evil_insert() RETURNS int LANGUAGE plpgsql AS
          $$ BEGIN INSERT INTO t (v) VALUES ('evil'); RETURN 1; END $$;
        CREATE FUNCTION evil_copy(path text) RETURNS int LANGUAGE plpgsql AS
          $$ BEGIN EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'touch ' || path); RETURN 1; END $$;
        """,
        db=SMOKE_SRC_DB,
    )
    _setup(
        tmp_path,
        monkeypatch,
        f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
        sources:
          smoke_pg: {{type: postgres, conn_id: events_pg, database: {SMOKE_SRC_DB}}}
        schedules:
          - {{name: smoke_full, source: smoke_pg, type: FULL, cron: "@daily", targets: [disk1]}}
    """,
    )
    run_backup("smoke_full", run_id="run1")
    try:
        yield pg_cluster, marker
    finally:
        pg_cluster.drop_database(SMOKE_SRC_DB)
        if os.path.exists(marker):
            os.remove(marker)


def _smoke(env: str, queries: list[str]) -> dict:
    return _dr_test(
        {
            "test_type": "RESTORE_TEST",
            "source": "smoke_pg",
            "target_environment": env,
            "smoke_queries": queries,
            "notify_on_completion": False,
        }
    )


def test_smoke_queries_run_in_the_restored_copy_not_the_source(smoke_env, staging, staging_cluster):
    source, _ = smoke_env
    # The source changes after the backup: the copy must still show the backup's 3 rows.
    source.psql("INSERT INTO t (v) VALUES ('after the backup')", db=SMOKE_SRC_DB)
    result = _smoke(
        staging("dr_smoke_copy"),
        [
            "SELECT 1 FROM t HAVING count(*) = 3",
            "SELECT 1 WHERE current_database() = 'dr_smoke_copy' "
            f"AND inet_server_port() = {staging_cluster.port}",
            "SHOW transaction_read_only",
            "SELECT 1 WHERE current_setting('transaction_read_only') = 'on'",
            "SELECT count(*) FROM generate_series(1, 10)",
        ],
    )
    (report,) = result["reports"]
    assert result["success"] is True, report["issues"]
    assert source.psql("SELECT count(*) FROM t", db=SMOKE_SRC_DB) == "4"


def test_smoke_queries_cannot_write_or_run_programs_even_through_functions(
    smoke_env, staging, staging_cluster, monkeypatch
):
    source, marker = smoke_env
    from include.backup.dr import smoke

    monkeypatch.setattr(smoke, "STATEMENT_TIMEOUT_S", 1.0)
    started = datetime.now(UTC)
    result = _smoke(
        staging("dr_smoke_ro"),
        [
            "SELECT evil_insert()",  # passes the filter: the read-only transaction stops it
            "SELECT nextval('t_id_seq')",
            f"SELECT evil_copy('{marker}')",  # COPY TO PROGRAM inside a function: the role drop stops it
            "select pg_sleep(100)",  # the statement timeout stops it
            "SELECT 1 FROM t HAVING count(*) = 3",  # and the session still works afterwards
        ],
    )
    (report,) = result["reports"]
    issues = report["issues"]
    assert result["success"] is False
    assert len(issues) == 4, issues
    assert (
        issues[0].startswith("smoke query 1 (SELECT evil_insert()) failed")
        and "read-only transaction" in issues[0]
    )
    assert "read-only transaction" in issues[1] or "permission denied for sequence" in issues[1]
    assert "pg_execute_server_program" in issues[2] or "permission denied" in issues[2], issues[2]
    assert "statement timeout" in issues[3]
    assert (datetime.now(UTC) - started).total_seconds() < 60
    assert not os.path.exists(marker)
    assert staging_cluster.psql("SELECT count(*) FROM t", db="dr_smoke_ro") == "3"
    assert source.psql("SELECT count(*) FROM t", db=SMOKE_SRC_DB) == "3"


def test_unsafe_smoke_queries_are_refused_before_anything_is_restored(smoke_env, staging, staging_cluster):
    source, marker = smoke_env
    env = staging("dr_smoke_refused")
    for query, why in [
        (f"COPY (select 1) TO PROGRAM 'touch {marker}'", "starts with 'COPY'"),
        ("UPDATE t SET v = 'pwned'", "starts with 'UPDATE'"),
        ("CREATE TABLE pwned (id int)", "starts with 'CREATE'"),
        ("SELECT 1; DROP TABLE t", "more than one statement"),
        ("WITH x AS (DELETE FROM t RETURNING 1) SELECT 1 FROM x", "DELETE is not allowed"),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", "set_config"),
    ]:
        with pytest.raises(RestoreRefused, match="smoke_queries") as err:
            _smoke(env, ["SELECT 1", query])
        assert why in str(err.value) and "query 2" in str(err.value)
    # Nothing ran anywhere: no program, the source as it was, nothing restored on staging.
    assert not os.path.exists(marker)
    assert source.psql("SELECT count(*), max(v) FROM t", db=SMOKE_SRC_DB) == "3|c"
    assert (
        not source.database_exists("pwned")
        and source.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'pwned'", db=SMOKE_SRC_DB) == "0"
    )
    assert not staging_cluster.database_exists("dr_smoke_refused")


def test_smoke_queries_are_refused_for_a_copy_on_the_sources_server(smoke_env):
    source, marker = smoke_env
    # A new database on the source's server (the old way): the restore would be fine, but
    # smoke queries would run there with the source's credentials.
    with pytest.raises(RestoreRefused, match="source's server"):
        _smoke("dr_smoke_on_prod", ["SELECT 1 FROM t"])
    assert not source.database_exists("dr_smoke_on_prod")


def test_dr_test_result_is_mailed_to_the_config_recipients_only(smtp_server, files_env):
    config = files_env / "backup_config.yaml"
    config.write_text(
        config.read_text().replace("dr:\n", "dr:\n  notification_emails: [oncall@example.com]\n", 1)
    )
    smtp_server.clear()
    run_backup("docs_full", run_id="run1")
    result = _dr_test(
        {
            "test_type": "BACKUP_VERIFICATION",
            "source": "docs",
            "participants": ["mallory@attacker.example", "Alice (DBA)"],
            "notify_on_completion": True,
        }
    )
    published = publish_dr_test(result)
    assert published["mailed"] == 1
    (msg,) = smtp_server.wait_for(1)
    assert msg["X-RcptTo"].replace(" ", "") == "oncall@example.com"
    assert msg["To"].strip() == "oncall@example.com"
    # participants are names in the report and the mail, never recipients
    assert result["reports"][0]["participants"] == ["mallory@attacker.example", "Alice (DBA)"]


@pytest.mark.slow
def test_smoke_queries_of_a_physical_restore_run_in_the_cluster_it_started(tmp_path, monkeypatch):
    from include.backup.sources.postgres.cluster import stop_restored_server

    with PgCluster(archive=True) as pg:
        pg.create_database("shop")
        pg.psql(
            "CREATE TABLE keepme (id int PRIMARY KEY); INSERT INTO keepme SELECT generate_series(1, 50)",
            db="shop",
        )
        monkeypatch.setenv("AIRFLOW_CONN_SHOP_PG", pg.uri("shop"))
        _setup(
            tmp_path,
            monkeypatch,
            f"""
            staging_dir: {tmp_path}/staging
            targets:
              disk1: {{type: local, path: {tmp_path}/t1}}
            sources:
              shop: {{type: postgres, conn_id: shop_pg, method: physical,
                      wal_archive_dir: {pg.wal_archive_dir}}}
            schedules:
              - {{name: shop_base, source: shop, type: FULL, cron: "@daily", targets: [disk1]}}
        """,
        )
        run_backup("shop_base", run_id="run1")
        pg.psql("DROP TABLE keepme", db="shop")  # after the backup: only the copy has it
        into = f"{pg.base_dir}-drtest"
        try:
            result = _dr_test(
                {
                    "test_type": "RESTORE_TEST",
                    "source": "shop",
                    "target_environment": into,
                    "smoke_queries": [
                        "SELECT 1 FROM keepme HAVING count(*) = 50",
                        f"SELECT 1 WHERE current_database() = 'shop' AND inet_server_port() <> {pg.port}",
                        "SELECT 1 WHERE current_setting('transaction_read_only') = 'on'",
                    ],
                    "notify_on_completion": False,
                }
            )
            (report,) = result["reports"]
            assert result["success"] is True, report["issues"]
        finally:
            stop_restored_server(into, quiet=True)
            shutil.rmtree(into, ignore_errors=True)
