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
