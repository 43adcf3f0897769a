"""Params of the dr_test and failover DAGs: checked before anything is touched."""

from __future__ import annotations

import pytest

from include.backup.config.schema import BackupConfig
from include.backup.dr.drtest import compare_with_manifest, parse_dr_test_params
from include.backup.dr.failover import parse_failover_params, switch
from include.backup.errors import BackupError, RestoreRefused


def make_config(**dr) -> BackupConfig:
    return BackupConfig.model_validate(
        {
            "dr": dr,
            "targets": {
                "local": {"type": "local", "path": "/b/local"},
                "nas": {"type": "local", "path": "/b/nas"},
            },
            "sources": {
                "events_pg": {"type": "postgres", "conn_id": "events_pg"},
                "uploads": {"type": "files", "paths": ["/data/uploads"]},
                "orphan": {"type": "files", "paths": ["/data/orphan"]},
            },
            "schedules": [
                {"name": "pg", "source": "events_pg", "cron": "@daily", "targets": ["local", "nas"]},
                {"name": "up", "source": "uploads", "cron": "@daily", "targets": ["nas"]},
            ],
        }
    )


CONFIG = make_config()


def test_restore_test_ok():
    req = parse_dr_test_params(
        {
            "test_type": "RESTORE_TEST",
            "source": "events_pg",
            "target_environment": "conn:staging_pg",
            "participants": "a@example.com, b@example.com",
            "notes": " q3 ",
            "smoke_queries": ["SELECT 1"],
        },
        CONFIG,
    )
    assert req.test_type == "RESTORE_TEST" and req.target_environment == "conn:staging_pg"
    assert req.participants == ["a@example.com", "b@example.com"]
    assert req.notes == "q3" and req.smoke_queries == ["SELECT 1"]
    assert req.notify_on_completion is True and req.overwrite is False
    assert type(req).from_xcom(req.to_xcom()) == req


@pytest.mark.parametrize(
    "alias,expected",
    [
        ("failover", "FAILOVER_TEST"),
        ("restore", "RESTORE_TEST"),
        ("recovery-time-test", "RECOVERY_TIME_TEST"),
    ],
)
def test_test_type_aliases(alias, expected):
    req = parse_dr_test_params(
        {"test_type": alias, "source": "uploads", "target_environment": "/srv/t"}, CONFIG
    )
    assert req.test_type == expected


@pytest.mark.parametrize(
    "params,match",
    [
        ({"test_type": "CHAOS"}, "test_type"),
        ({}, "test_type"),
        ({"test_type": "RESTORE_TEST", "target_environment": "x"}, "'source' is required"),
        ({"test_type": "RESTORE_TEST", "source": "nope", "target_environment": "x"}, "no source named"),
        ({"test_type": "RESTORE_TEST", "source": "events_pg"}, "target_environment"),
        (
            {"test_type": "RESTORE_TEST", "source": "events_pg", "target_environment": "conn:events_pg"},
            "production",
        ),
        (
            {"test_type": "RESTORE_TEST", "source": "events_pg", "target_environment": "events_pg"},
            "production",
        ),
        ({"test_type": "RESTORE_TEST", "source": "uploads", "target_environment": "relative"}, "absolute"),
        (
            {"test_type": "RESTORE_TEST", "source": "uploads", "target_environment": "/data/uploads/x"},
            "overlaps",
        ),
        ({"test_type": "RESTORE_TEST", "source": "uploads", "target_environment": "/data"}, "overlaps"),
        (
            {
                "test_type": "RESTORE_TEST",
                "source": "uploads",
                "target_environment": "/srv/t",
                "smoke_queries": ["SELECT 1"],
            },
            "postgres",
        ),
        ({"test_type": "BACKUP_VERIFICATION", "smoke_queries": ["SELECT 1"]}, "RESTORE_TEST"),
        ({"test_type": "RESTORE_TEST", "source": "orphan", "target_environment": "/srv/t"}, "no schedule"),
        (
            {
                "test_type": "RESTORE_TEST",
                "source": "uploads",
                "target_environment": "/srv/t",
                "notify_on_completion": "yes",
            },
            "true or false",
        ),
        (
            {"test_type": "RESTORE_TEST", "source": "uploads", "target_environment": "/srv/t", "target": "x"},
            "no target",
        ),
        (
            {
                "test_type": "RESTORE_TEST",
                "source": "uploads",
                "target_environment": "/srv/t",
                "participants": 3,
            },
            "list",
        ),
    ],
)
def test_bad_params_are_refused(params, match):
    with pytest.raises(RestoreRefused, match=match):
        parse_dr_test_params(params, CONFIG)


def test_backup_verification_defaults_to_every_source():
    req = parse_dr_test_params({"test_type": "BACKUP_VERIFICATION"}, CONFIG)
    assert req.source is None and req.target_environment is None


def test_failover_test_environment_from_config():
    config = make_config(failover={"uploads": {"secondary": "/srv/dr", "test_environment": "/srv/staging"}})
    req = parse_dr_test_params({"test_type": "FAILOVER_TEST", "source": "uploads"}, config)
    assert req.target_environment == "/srv/staging"


def test_failover_params():
    with pytest.raises(RestoreRefused, match="confirm"):
        parse_failover_params({"source": "events_pg", "secondary": "conn:standby"}, CONFIG)
    with pytest.raises(RestoreRefused, match="confirm"):
        parse_failover_params(
            {"source": "events_pg", "secondary": "conn:standby", "confirm": "uploads"}, CONFIG
        )
    with pytest.raises(RestoreRefused, match="secondary"):
        parse_failover_params({"source": "events_pg", "confirm": "events_pg"}, CONFIG)
    with pytest.raises(RestoreRefused, match="production"):
        parse_failover_params(
            {"source": "events_pg", "confirm": "events_pg", "secondary": "conn:events_pg"}, CONFIG
        )
    with pytest.raises(RestoreRefused, match="'source' is required"):
        parse_failover_params({"confirm": "x"}, CONFIG)
    req = parse_failover_params(
        {"source": "events_pg", "confirm": "events_pg", "secondary": "conn:standby", "dry_run": True}, CONFIG
    )
    assert req.dry_run is True and req.secondary == "conn:standby"


def test_auto_failover_needs_no_confirm_and_secondary_from_config():
    config = make_config(auto_failover=True, failover={"events_pg": {"secondary": "conn:standby"}})
    req = parse_failover_params({"source": "events_pg"}, config)
    assert req.secondary == "conn:standby"


def test_switch_config_is_validated():
    with pytest.raises(ValueError, match="command"):
        make_config(failover={"events_pg": {"switch": {"kind": "command"}}})
    with pytest.raises(ValueError, match="variable"):
        make_config(failover={"events_pg": {"switch": {"kind": "airflow_variable"}}})
    with pytest.raises(ValueError, match="conn_id"):
        make_config(failover={"events_pg": {"switch": {"kind": "airflow_connection"}}})


def test_switch_command_runs_without_shell(tmp_path):
    out = tmp_path / "switched"
    config = make_config(
        failover={
            "uploads": {
                "switch": {
                    "kind": "command",
                    "command": ["/bin/sh", "-c", f'echo "$BACKUP_FAILOVER_SECONDARY" > {out}'],
                }
            }
        }
    )
    dry = switch(config, "uploads", "/srv/dr", dry_run=True)
    assert dry["done"] is False and "would run" in dry["detail"] and not out.exists()
    done = switch(config, "uploads", "/srv/dr", backup_id="b1")
    assert done["done"] is True and out.read_text().strip() == "/srv/dr"
    failing = make_config(failover={"uploads": {"switch": {"kind": "command", "command": ["/bin/false"]}}})
    with pytest.raises(BackupError, match="exited with 1"):
        switch(failing, "uploads", "/srv/dr")
    assert switch(CONFIG, "uploads", "/srv/dr")["action"] == "none"


def test_compare_with_manifest():
    recorded = {"tables": {"users": 10, "events": 5}, "row_count_method": "exact"}
    assert compare_with_manifest("postgres", recorded, {"tables": {"users": 10, "events": 5}}) == ([], [])
    issues, _ = compare_with_manifest("postgres", recorded, {"tables": {"users": 9}})
    assert issues == [
        "table events missing after restore (the backup recorded 5 rows)",
        "table users: 9 rows restored, the backup recorded 10",
    ]
    issues, notes = compare_with_manifest(
        "postgres", {**recorded, "row_count_method": "estimate"}, {"tables": {"users": 1, "events": 1}}
    )
    assert issues == [] and "estimate" in notes[0]
    issues, _ = compare_with_manifest("files", {"tree_files": 3, "tree_dirs": 2}, {"files": 2, "dirs": 2})
    assert issues == ["files: 2 restored, the backup recorded 3"]
    issues, _ = compare_with_manifest("mongo", {"collections": {"a": 2}}, {"collections": {"a": 2}})
    assert issues == []


# --- smoke queries: one read-only statement, checked before anything is restored ----------

SMOKE_BASE = {"test_type": "RESTORE_TEST", "source": "events_pg", "target_environment": "conn:staging_pg"}


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1 FROM users LIMIT 1",
        "select count(*) from events having count(*) > 0;",
        "WITH recent AS (SELECT * FROM events WHERE id > 10) SELECT 1 FROM recent",
        "VALUES (1)",
        "TABLE users",
        "(SELECT 1)",
        "EXPLAIN SELECT * FROM users",
        "SHOW server_version",
        "SELECT 'insert into; copy ... to program' AS text_is_data",
        "SELECT $$ DROP TABLE users; $$, $tag$ delete $tag$",
        "SELECT 1 -- update users set x = 1\n",
        "SELECT /* nested /* delete */ comment */ 1",
        'SELECT "update" FROM "into"',
        "SELECT E'it\\'s ; COPY'",
        "SELECT pg_sleep(0.1)",
        "SELECT last_update, created_at FROM users",
    ],
)
def test_read_only_smoke_queries_pass(query):
    req = parse_dr_test_params({**SMOKE_BASE, "smoke_queries": [query]}, CONFIG)
    assert req.smoke_queries == [query.strip().rstrip(";")]


@pytest.mark.parametrize(
    "query,why",
    [
        ("COPY (select 1) TO PROGRAM 'touch /tmp/x'", "starts with 'COPY'"),
        ("copy users to '/tmp/users.csv'", "starts with 'COPY'"),
        ("UPDATE users SET name = 'x'", "starts with 'UPDATE'"),
        ("CREATE TABLE pwned (id int)", "starts with 'CREATE'"),
        ("DELETE FROM users", "starts with 'DELETE'"),
        ("DO $$ BEGIN PERFORM 1; END $$", "starts with 'DO'"),
        ("CALL refresh_everything()", "starts with 'CALL'"),
        ("SET ROLE postgres", "starts with 'SET'"),
        ("SELECT 1; DROP TABLE users", "more than one statement"),
        ("SELECT 1 /* ; */ ; COPY (select 1) TO PROGRAM 'id'", "more than one statement"),
        ("SELECT E'\\''; COPY (select 1) TO PROGRAM 'id' --'", "more than one statement"),
        ("WITH gone AS (DELETE FROM users RETURNING 1) SELECT 1 FROM gone", "DELETE is not allowed"),
        ("WITH x AS (INSERT INTO users DEFAULT VALUES RETURNING 1) SELECT 1", "INSERT is not allowed"),
        ("SELECT * INTO pwned FROM users", "INTO is not allowed"),
        ("SELECT 1 FROM users FOR UPDATE", "UPDATE is not allowed"),
        ("SELECT 1 FROM users FOR SHARE", "row locks"),
        ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "CREATE is not allowed"),
        ("EXPLAIN ANALYZE EXECUTE p", "EXECUTE is not allowed"),
        ("SELECT set_config('role', 'postgres', false)", "set_config"),
        ("SELECT pg_catalog.set_config('default_transaction_read_only', 'off', false)", "set_config"),
        ("SELECT \"set_config\"('role', 'none', true)", "set_config"),
        ("SELECT lo_export(16384, '/tmp/x')", "lo_export"),
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        ("SELECT * FROM pg_ls_dir('/')", "pg_ls_dir"),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "pg_terminate_backend"),
        ("SELECT * FROM dblink('host=prod', 'delete from users') AS t(x int)", "dblink"),
        ("SELECT query_to_xml('select 1', true, true, '')", "query_to_xml"),
        ("SELECT U&\"\\0073et_config\"('role', 'none', true)", "U& escape"),
        ("SELECT 'unterminated", "unterminated"),
        ("SELECT 1 /* never closed", "unterminated"),
    ],
)
def test_smoke_queries_that_are_not_read_only_are_refused(query, why):
    with pytest.raises(RestoreRefused, match="smoke_queries") as err:
        parse_dr_test_params({**SMOKE_BASE, "smoke_queries": ["SELECT 1", query]}, CONFIG)
    assert why in str(err.value) and "query 2" in str(err.value)


def test_smoke_queries_never_run_on_the_sources_server():
    # A bare name is a new database on the source's server, reached with its credentials.
    with pytest.raises(RestoreRefused, match="staging connection .*source's server"):
        parse_dr_test_params(
            {**SMOKE_BASE, "target_environment": "dr_check", "smoke_queries": ["SELECT 1"]}, CONFIG
        )
    # For a logical source an absolute path is a database name too, on the same server.
    with pytest.raises(RestoreRefused, match="source's server"):
        parse_dr_test_params(
            {**SMOKE_BASE, "target_environment": "/srv/pg-copy", "smoke_queries": ["SELECT 1"]}, CONFIG
        )
    # Without smoke queries the same restore is fine.
    assert parse_dr_test_params({**SMOKE_BASE, "target_environment": "dr_check"}, CONFIG)
    # A failover rehearsal runs no smoke queries: saying so instead of ignoring them.
    with pytest.raises(RestoreRefused, match="RESTORE_TEST and RECOVERY_TIME_TEST"):
        parse_dr_test_params(
            {**SMOKE_BASE, "test_type": "FAILOVER_TEST", "smoke_queries": ["SELECT 1"]}, CONFIG
        )
    with pytest.raises(RestoreRefused, match="list of SQL strings"):
        parse_dr_test_params({**SMOKE_BASE, "smoke_queries": ["SELECT 1", 2]}, CONFIG)


def test_the_production_database_is_recognised_however_its_host_is_spelled(monkeypatch):
    from include.backup.dr.drtest import check_not_same_database

    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_PG", "postgres://app@127.0.0.1:5432/events")
    monkeypatch.setenv("AIRFLOW_CONN_SNEAKY_PG", "postgres://other@localhost/events")
    monkeypatch.setenv("AIRFLOW_CONN_STAGING_PG", "postgres://app@staging.internal:5432/events")
    with pytest.raises(RestoreRefused, match="production database"):
        check_not_same_database(CONFIG, "events_pg", "conn:sneaky_pg")
    check_not_same_database(CONFIG, "events_pg", "conn:staging_pg")  # another server: fine
    check_not_same_database(CONFIG, "events_pg", "events_copy")  # another database: fine
