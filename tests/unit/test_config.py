"""Config loading and validation: ranges, unknown keys, cross-references, per-schedule
isolation, warnings, the example config and the ``validate`` CLI verb."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from include.backup.config.loader import (
    DEFAULT_PATH,
    LoadedConfig,
    config_path,
    load_config,
    load_valid_config,
    validate_command,
)
from include.backup.config.schema import BackupType
from include.backup.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "dr": {
        "rto_hours": 4,
        "rpo_hours": 1,
        "notification_emails": ["oncall@example.com"],
    },
    "targets": {
        "local": {"type": "local", "path": "/var/backups/a"},
        "nas": {"type": "local", "path": "/mnt/nas/backups", "offsite": True},
    },
    "sources": {
        "events_pg": {"type": "postgres", "conn_id": "events_pg"},
        "uploads": {"type": "files", "paths": ["/data/uploads"]},
    },
    "schedules": [
        {
            "name": "daily_full",
            "source": "events_pg",
            "type": "FULL",
            "cron": "0 2 * * *",
            "targets": ["local", "nas"],
        },
        {
            "name": "weekly_schema",
            "source": "events_pg",
            "type": "SCHEMA",
            "cron": "0 3 * * 0",
            "targets": ["nas", "local"],
        },
        {
            "name": "uploads_6h",
            "source": "uploads",
            "type": "INCREMENTAL",
            "cron": "0 */6 * * *",
            "targets": ["local", "nas"],
        },
    ],
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def write(
    tmp_path: Path, data: dict[str, Any] | str, name: str = "backup_config.yaml"
) -> Path:
    path = tmp_path / name
    path.write_text(
        data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    )
    return path


def load(tmp_path: Path, data: dict[str, Any] | str) -> LoadedConfig:
    return load_config(write(tmp_path, data))


def fatal_issues(tmp_path: Path, data: dict[str, Any] | str) -> list[str]:
    """Issues of a config that cannot be loaded at all."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, data)
    return caught.value.issues


def schedule_names(loaded: LoadedConfig) -> list[str]:
    return [s.name for s in loaded.config.schedules]


# --- the base config itself ------------------------------------------------------------


def test_base_config_is_clean(tmp_path: Path) -> None:
    loaded = load(tmp_path, base())
    assert loaded.issues == []
    assert loaded.warnings == []
    assert loaded.broken_schedules == {}
    assert schedule_names(loaded) == ["daily_full", "weekly_schema", "uploads_6h"]
    assert loaded.path == tmp_path / "backup_config.yaml"


# --- dr ranges (seed: Configuration Options table) --------------------------------------

DR_RANGES = [
    # key, low, high, just below, just above, range as the message states it
    ("rto_hours", 0.5, 72, 0.49, 72.01, "between 0.5 and 72 hours"),
    ("rpo_hours", 0.25, 24, 0.24, 24.01, "between 0.25 and 24 hours"),
    ("backup_retention_days", 7, 365, 6, 366, "between 7 and 365 days"),
    ("test_frequency_days", 30, 365, 29, 366, "between 30 and 365 days"),
]


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, low) for key, low, *_ in DR_RANGES]
    + [(key, high) for key, _, high, *_ in DR_RANGES],
)
def test_dr_range_boundaries_are_accepted(
    tmp_path: Path, key: str, value: float
) -> None:
    data = base()
    data["dr"][key] = value
    config = load_valid_config(write(tmp_path, data))
    assert getattr(config.dr, key) == value


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [(key, below, allowed) for key, _, _, below, _, allowed in DR_RANGES]
    + [(key, above, allowed) for key, _, _, _, above, allowed in DR_RANGES],
)
def test_dr_range_outside_is_rejected_with_key_path_and_range(
    tmp_path: Path, key: str, value: float, allowed: str
) -> None:
    data = base()
    data["dr"][key] = value
    issues = fatal_issues(tmp_path, data)
    assert issues == [f"dr.{key}: {value} is out of range; must be {allowed}"]


def test_dr_defaults_follow_the_seed(tmp_path: Path) -> None:
    data = base()
    del data["dr"]
    dr = load_valid_config(write(tmp_path, data)).dr
    assert (
        dr.rto_hours,
        dr.rpo_hours,
        dr.backup_retention_days,
        dr.test_frequency_days,
    ) == (4, 1, 30, 90)
    assert dr.auto_failover is False


def test_dr_wrong_value_type_names_the_key(tmp_path: Path) -> None:
    data = base()
    data["dr"]["rto_hours"] = "four"
    data["dr"]["auto_failover"] = "maybe"
    issues = fatal_issues(tmp_path, data)
    assert "dr.rto_hours: expected a number, got 'four'" in issues
    assert "dr.auto_failover: expected true or false, got 'maybe'" in issues


def test_invalid_notification_email_is_rejected(tmp_path: Path) -> None:
    data = base()
    data["dr"]["notification_emails"] = ["oncall@example.com", "not-an-address"]
    (issue,) = fatal_issues(tmp_path, data)
    assert issue.startswith(
        "dr.notification_emails[1]: 'not-an-address' is not a valid email address"
    )


def test_other_settings_ranges_name_key_and_unit(tmp_path: Path) -> None:
    data = base()
    data["encryption"] = {"key_rotation_days": 0}
    data["pipeline"] = {"compression": "lz4"}
    issues = fatal_issues(tmp_path, data)
    assert (
        "encryption.key_rotation_days: 0 is out of range; must be between 1 and 365 days"
        in issues
    )
    assert (
        "pipeline.compression: 'lz4' is not an allowed value; use one of zstd, gzip"
        in issues
    )


def test_relative_staging_dir_is_rejected(tmp_path: Path) -> None:
    data = base()
    data["staging_dir"] = "staging"
    assert fatal_issues(tmp_path, data) == [
        "staging_dir: path 'staging' must be absolute (start with /)"
    ]


def test_empty_settings_section_means_defaults(tmp_path: Path) -> None:
    # Every line of a section commented out leaves `dr:` with a null value.
    config = load_valid_config(
        write(
            tmp_path,
            "dr:\nencryption:\n" + yaml.safe_dump({"targets": BASE["targets"]}),
        )
    )
    assert config.dr.rto_hours == 4
    assert config.encryption.key_rotation_days == 30


# --- unknown keys ----------------------------------------------------------------------


def test_unknown_top_level_key_is_fatal_and_suggests_the_right_one(
    tmp_path: Path,
) -> None:
    data = base()
    data["schedule"] = []
    (issue,) = fatal_issues(tmp_path, data)
    assert issue.startswith(
        "schedule: unknown top-level key; did you mean 'schedules'? allowed keys: dr,"
    )


def test_unknown_key_in_dr_is_fatal(tmp_path: Path) -> None:
    data = base()
    data["dr"]["rto"] = 4
    (issue,) = fatal_issues(tmp_path, data)
    assert issue == (
        "dr.rto: unknown key; did you mean 'rto_hours'? allowed keys: rto_hours, rpo_hours, "
        "backup_retention_days, test_frequency_days, auto_failover, notification_emails, "
        "smtp_conn_id, storage_min_free_gb, audit_retention_days, failover, drill_cron, drills, "
        "failover_after_checks, operator_roles, reader_roles, audit_roles"
    )


def test_unknown_key_never_echoes_its_value(tmp_path: Path) -> None:
    data = base()
    data["targets"]["local"]["password"] = "hunter2"
    loaded = load(tmp_path, data)
    assert (
        "targets.local.password: unknown key; allowed keys: type, path, offsite"
        in loaded.issues
    )
    assert "hunter2" not in "\n".join(loaded.issues)


def test_unknown_key_in_target_drops_the_target_and_its_schedules(
    tmp_path: Path,
) -> None:
    data = base()
    data["targets"]["nas"]["bucket"] = "x"
    loaded = load(tmp_path, data)
    assert (
        "targets.nas.bucket: unknown key; allowed keys: type, path, offsite"
        in loaded.issues
    )
    assert "nas" not in loaded.config.targets
    assert "local" in loaded.config.targets
    assert schedule_names(loaded) == []
    assert set(loaded.broken_schedules) == {"daily_full", "weekly_schema", "uploads_6h"}


def test_unknown_key_in_schedule_breaks_only_that_schedule(tmp_path: Path) -> None:
    data = base()
    data["schedules"][1]["retension"] = {"daily": 3}
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        (
            "schedules[1] (weekly_schema).retension: unknown key; did you mean 'retention'? allowed keys: "
            "name, source, type, cron, active, targets, retention, retention_days, cleanup_rules, "
            "description"
        )
    ]
    assert schedule_names(loaded) == ["daily_full", "uploads_6h"]
    assert list(loaded.broken_schedules) == ["weekly_schema"]


def test_unknown_key_in_gfs_retention(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["retention"] = {"daily": 7, "hourly": 24}
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        (
            "schedules[0] (daily_full).retention.hourly: unknown key; did you mean 'yearly'? "
            "allowed keys: daily, weekly, monthly, yearly"
        )
    ]


# --- targets and sources ---------------------------------------------------------------


def test_missing_required_target_key(tmp_path: Path) -> None:
    data = base()
    data["targets"]["s3"] = {"type": "s3", "conn_id": "aws_backup"}
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        "targets.s3: missing required key 'bucket'; add it (required here: type, conn_id, bucket)"
    ]


def test_unknown_target_type(tmp_path: Path) -> None:
    data = base()
    data["targets"]["x"] = {"type": "dropbox"}
    data["targets"]["y"] = {"path": "/a"}
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        "targets.x.type: 'dropbox' is not a target type; use one of local, s3, azure_blob, gcs, sftp, ftp",
        "targets.y: missing required key 'type'; add type: one of local, s3, azure_blob, gcs, sftp, ftp",
    ]


def test_unknown_source_type(tmp_path: Path) -> None:
    data = base()
    data["sources"]["redis"] = {"type": "redis", "conn_id": "r"}
    assert load(tmp_path, data).issues == [
        "sources.redis.type: 'redis' is not a source type; use one of postgres, mongo, files"
    ]


def test_unimplemented_target_type_is_an_issue_on_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every target kind is implemented now; the mechanism stays for the next kind added.
    monkeypatch.setattr("include.backup.config.loader.IMPLEMENTED_TARGETS", {"local"})
    data = base()
    data["targets"]["s3"] = {"type": "s3", "conn_id": "aws_backup", "bucket": "b"}
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        "targets.s3.type: 's3' targets are not implemented in this version; implemented: local"
    ]
    assert "s3" not in loaded.config.targets


def test_source_model_errors_name_the_source(tmp_path: Path) -> None:
    data = base()
    data["sources"]["pg2"] = {"type": "postgres", "conn_id": "pg2", "jobs": 4}
    data["sources"]["files2"] = {"type": "files", "paths": ["relative/dir"]}
    data["sources"]["files3"] = {"type": "files", "paths": []}
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        "sources.pg2: jobs > 1 needs format: directory (pg_dump -j only works with -Fd)",
        "sources.files2.paths: path 'relative/dir' must be absolute (start with /)",
        "sources.files3.paths: must list at least 1 item; add one",
    ]


def test_relative_local_target_path_is_rejected(tmp_path: Path) -> None:
    data = base()
    data["targets"]["rel"] = {"type": "local", "path": "backups"}
    assert load(tmp_path, data).issues == [
        "targets.rel.path: path 'backups' must be absolute (start with /)"
    ]


def test_invalid_target_name(tmp_path: Path) -> None:
    data = base()
    data["targets"]["my target"] = {"type": "local", "path": "/x"}
    (issue,) = load(tmp_path, data).issues
    assert issue.startswith(
        "targets.my target: 'my target' is not a valid name; use letters, digits"
    )


def test_section_of_the_wrong_shape_is_fatal(tmp_path: Path) -> None:
    data = base()
    data["targets"] = ["local"]
    data["schedules"] = {"daily_full": {}}
    issues = fatal_issues(tmp_path, data)
    assert (
        "targets: expected a mapping of target name to its settings, got a list"
        in issues
    )
    assert any(i.startswith("schedules: expected a list of schedules") for i in issues)


# --- schedules: cross-references -------------------------------------------------------


def test_schedule_naming_a_missing_target_lists_the_known_ones(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["targets"] = ["local", "s3"]
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        (
            "schedules[0] (daily_full).targets[1]: unknown target 's3'; known targets: local, nas "
            "— define it under targets: or fix the name"
        )
    ]
    assert loaded.broken_schedules == {"daily_full": loaded.issues}


def test_schedule_naming_a_missing_source_lists_the_known_ones(tmp_path: Path) -> None:
    data = base()
    data["schedules"][2]["source"] = "upload"
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        (
            "schedules[2] (uploads_6h).source: unknown source 'upload'; known sources: events_pg, uploads "
            "— define it under sources: or fix the name"
        )
    ]


def test_target_listed_twice_in_a_schedule(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["targets"] = ["local", "nas", "local"]
    assert load(tmp_path, data).issues == [
        "schedules[0] (daily_full).targets[2]: target 'local' is listed twice; list each target once"
    ]


@pytest.mark.parametrize(
    ("source", "backup_type", "fix"),
    [
        ("events_pg", "INCREMENTAL", "use FULL or SCHEMA"),
        ("events_pg", "TRANSACTION_LOG", "use FULL or SCHEMA"),
        ("uploads", "SCHEMA", "use FULL or INCREMENTAL"),
        ("uploads", "TRANSACTION_LOG", "use FULL or INCREMENTAL"),
    ],
)
def test_unsupported_type_for_source(
    tmp_path: Path, source: str, backup_type: str, fix: str
) -> None:
    data = base()
    data["schedules"][0].update(source=source, type=backup_type)
    kind = data["sources"][source]["type"]
    assert load(tmp_path, data).issues == [
        (
            f"schedules[0] (daily_full).type: {backup_type} backups of {kind} sources are not "
            f"implemented in this version; {fix}"
        )
    ]


def test_source_kind_without_the_schedule_type_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A source kind that implements none of the types (as mongo did before it existed).
    monkeypatch.setitem(
        __import__("include.backup.config.schema", fromlist=["x"]).SUPPORTED_TYPES, "mongo", set()
    )
    data = base()
    data["sources"]["events_mongo"] = {
        "type": "mongo",
        "conn_id": "m",
        "collections": ["users"],
    }
    data["schedules"].append(
        {
            "name": "nightly_mongo",
            "source": "events_mongo",
            "cron": "0 4 * * *",
            "targets": ["local", "nas"],
        }
    )
    loaded = load(tmp_path, data)
    (issue,) = loaded.issues
    assert issue.startswith(
        "schedules[3] (nightly_mongo).type: FULL backups of mongo sources are not implemented in this version"
    )
    assert "events_mongo" in loaded.config.sources  # the source itself is fine
    assert list(loaded.broken_schedules) == ["nightly_mongo"]


def test_schedule_type_defaults_to_full(tmp_path: Path) -> None:
    data = base()
    del data["schedules"][0]["type"]
    assert load_valid_config(write(tmp_path, data)).schedules[0].type is BackupType.FULL


def test_unknown_backup_type(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["type"] = "DAILY"
    assert load(tmp_path, data).issues == [
        (
            "schedules[0] (daily_full).type: 'DAILY' is not a backup type; use one of FULL, INCREMENTAL, "
            "TRANSACTION_LOG, SCHEMA"
        )
    ]


def test_every_problem_of_a_schedule_is_reported_at_once(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0].update(
        cron="61 * * * *", targets=["local", "ghost"], source="nope"
    )
    issues = load(tmp_path, data).broken_schedules["daily_full"]
    assert [i.split(":")[0] for i in issues] == [
        "schedules[0] (daily_full).cron",
        "schedules[0] (daily_full).source",
        "schedules[0] (daily_full).targets[1]",
    ]


# --- schedules: fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("61 * * * *", "minute field '61' is invalid; the minute field takes 0-59"),
        ("0 24 * * *", "hour field '24' is invalid"),
        ("0 0 1-40 * *", "day-of-month field '1-40' is invalid"),
        ("0 0 * * FOO", "day-of-week field 'FOO' is invalid"),
        ("0 0 * * * *", "it has 6 fields; use 5 fields"),
        ("every day", "it has 2 fields"),
        ("@reboot", "it has 1 fields"),
        ("R * * * *", "random (R) minute fields are not supported"),
    ],
)
def test_invalid_cron(tmp_path: Path, cron: str, says: str) -> None:
    data = base()
    data["schedules"][0]["cron"] = cron
    loaded = load(tmp_path, data)
    (issue,) = loaded.issues
    assert issue.startswith(
        f"schedules[0] (daily_full).cron: {cron!r} is not a valid cron expression"
    )
    assert says in issue
    assert "daily_full" in loaded.broken_schedules


def test_cron_that_never_fires(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["cron"] = "0 0 31 2 *"
    (issue,) = load(tmp_path, data).issues
    assert issue.startswith("schedules[0] (daily_full).cron: '0 0 31 2 *' never fires")


@pytest.mark.parametrize(
    "cron",
    [
        "@daily",
        "@hourly",
        "@quarterly",
        "*/15 * * * *",
        "0 0 * * MON-FRI",
        "0 0 L * *",
        "0 0 29 2 *",
    ],
)
def test_valid_cron(tmp_path: Path, cron: str) -> None:
    data = base()
    data["schedules"][0]["cron"] = cron
    assert load(tmp_path, data).issues == []


def test_invalid_schedule_name(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["name"] = "daily full"
    loaded = load(tmp_path, data)
    (issue,) = loaded.issues
    assert issue.startswith(
        "schedules[0] (daily full).name: 'daily full' is not a valid name; use letters, digits"
    )
    # Not a usable DAG name, so it is filed under its position.
    assert list(loaded.broken_schedules) == ["schedules[0]"]


def test_schedule_missing_required_keys(tmp_path: Path) -> None:
    data = base()
    data["schedules"].append({"name": "half_done", "source": "uploads"})
    (a, b) = load(tmp_path, data).issues
    assert a.startswith(
        "schedules[3] (half_done): missing required key 'cron'; add it (required here: name, source"
    )
    assert b.startswith("schedules[3] (half_done): missing required key 'targets'")


def test_schedule_that_is_not_a_mapping(tmp_path: Path) -> None:
    data = base()
    data["schedules"].append("daily_full")
    loaded = load(tmp_path, data)
    assert loaded.issues == [
        "schedules[3]: expected a mapping (name, source, type, cron, targets, …), got a string"
    ]
    assert list(loaded.broken_schedules) == ["schedules[3]"]


def test_schedule_with_no_targets(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["targets"] = []
    assert load(tmp_path, data).issues == [
        "schedules[0] (daily_full).targets: must list at least 1 item; add one"
    ]


def test_retention_and_retention_days_are_exclusive(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0].update(retention={"daily": 7}, retention_days=30)
    assert load(tmp_path, data).issues == [
        "schedules[0] (daily_full): give either retention (GFS tiers) or retention_days, not both"
    ]


def test_retention_ranges(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["retention"] = {"daily": -1}
    data["schedules"][1]["retention_days"] = 0
    assert load(tmp_path, data).issues == [
        "schedules[0] (daily_full).retention.daily: -1 is out of range; must be between 0 and 3650",
        "schedules[1] (weekly_schema).retention_days: 0 is out of range; must be between 1 and 3650 days",
    ]


def test_wrong_value_type_in_schedule(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["active"] = "sometimes"
    data["schedules"][0]["source"] = 5
    issues = load(tmp_path, data).issues
    assert (
        "schedules[0] (daily_full).active: expected true or false, got 'sometimes'"
        in issues
    )
    assert any(
        i.startswith("schedules[0] (daily_full).source: expected a string")
        for i in issues
    )


# --- isolation -------------------------------------------------------------------------


def test_one_broken_schedule_among_good_ones(tmp_path: Path) -> None:
    data = base()
    data["schedules"][1]["cron"] = "not a cron at all"
    loaded = load(tmp_path, data)
    assert schedule_names(loaded) == ["daily_full", "uploads_6h"]
    assert list(loaded.broken_schedules) == ["weekly_schema"]
    (issue,) = loaded.broken_schedules["weekly_schema"]
    assert issue.startswith("schedules[1] (weekly_schema).cron:")
    assert loaded.issues == [issue]
    with pytest.raises(ConfigError) as caught:
        load_valid_config(loaded.path)
    assert caught.value.issues == [issue]
    assert str(loaded.path) in str(caught.value)


def test_broken_target_breaks_only_the_schedules_that_use_it(tmp_path: Path) -> None:
    data = base()
    data["targets"]["s3"] = {"type": "s3", "conn_id": "aws_backup"}  # no bucket
    data["schedules"][0]["targets"] = ["local", "s3"]
    loaded = load(tmp_path, data)
    assert schedule_names(loaded) == ["weekly_schema", "uploads_6h"]
    target_issue = "targets.s3: missing required key 'bucket'; add it (required here: type, conn_id, bucket)"
    reference = (
        "schedules[0] (daily_full).targets[1]: target 's3' is invalid, so this schedule cannot run; "
        "fix targets.s3 (see its error) or remove it from this schedule"
    )
    # The schedule's own entry repeats the target's issue so it reads on its own;
    # the flat list has each line once.
    assert loaded.broken_schedules == {"daily_full": [reference, target_issue]}
    assert loaded.issues == [target_issue, reference]


def test_broken_source_breaks_only_the_schedules_that_use_it(tmp_path: Path) -> None:
    data = base()
    data["sources"]["uploads"]["paths"] = ["uploads"]
    loaded = load(tmp_path, data)
    assert schedule_names(loaded) == ["daily_full", "weekly_schema"]
    assert list(loaded.broken_schedules) == ["uploads_6h"]
    assert "uploads" not in loaded.config.sources
    reference, inherited = loaded.broken_schedules["uploads_6h"]
    assert reference.startswith(
        "schedules[2] (uploads_6h).source: source 'uploads' is invalid"
    )
    assert (
        inherited
        == "sources.uploads.paths: path 'uploads' must be absolute (start with /)"
    )


def test_broken_unused_target_breaks_no_schedule(tmp_path: Path) -> None:
    data = base()
    data["targets"]["spare"] = {"type": "gcs", "conn_id": "gcp"}
    loaded = load(tmp_path, data)
    assert loaded.broken_schedules == {}
    assert len(loaded.config.schedules) == 3
    assert loaded.issues  # still reported, so the file does not pass validate


def test_inactive_schedules_are_still_validated_and_kept(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["active"] = False
    data["schedules"][1].update(active=False, cron="99 * * * *")
    loaded = load(tmp_path, data)
    assert loaded.config.schedule("daily_full").active is False
    assert "weekly_schema" in loaded.broken_schedules


# --- duplicates ------------------------------------------------------------------------


def test_duplicate_schedule_names(tmp_path: Path) -> None:
    data = base()
    data["schedules"].append(copy.deepcopy(data["schedules"][0]))
    loaded = load(tmp_path, data)
    # The first keeps its name and keeps running; the copy is broken, filed by position.
    assert schedule_names(loaded) == ["daily_full", "weekly_schema", "uploads_6h"]
    assert loaded.broken_schedules == {
        "schedules[3]": [
            (
                "schedules[3] (daily_full).name: duplicate schedule name 'daily_full' (also schedules[0]); "
                "give each schedule a unique name"
            )
        ]
    }


def test_duplicate_yaml_key_names_both_lines(tmp_path: Path) -> None:
    text = (
        "targets:\n  local: {type: local, path: /a}\n  local: {type: local, path: /b}\n"
    )
    (issue,) = fatal_issues(tmp_path, text)
    assert issue.startswith("line 3, column 3: duplicate key 'local' (first on line 2)")


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = (
        "targets:\n"
        "  local: &t {type: local, path: /a}\n"
        "  other:\n"
        "    <<: *t\n"
        "    path: /b\n"
    )
    assert load(tmp_path, text).config.targets["other"].path == "/b"


# --- whole-file problems ---------------------------------------------------------------


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = "dr:\n  rto_hours: 4\n   rpo_hours: 1\n"
    (issue,) = fatal_issues(tmp_path, text)
    # libyaml and the pure-Python parser word the problem differently; position and kind match
    assert issue.startswith("line 3, column 13: YAML syntax error: mapping values are not allowed")
    assert "fix the YAML syntax" in issue


def test_unquoted_cron_starting_with_star_names_the_line(tmp_path: Path) -> None:
    text = "schedules:\n  - name: a\n    cron: */15 * * * *\n"
    (issue,) = fatal_issues(tmp_path, text)
    assert issue.startswith("line 3, column 12: YAML syntax error")
    assert 'cron: "*/15 * * * *"' in issue


@pytest.mark.parametrize(
    ("text", "got"),
    [("", "an empty document"), ("- a\n", "a list"), ("just text\n", "a string")],
)
def test_document_that_is_not_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    (issue,) = fatal_issues(tmp_path, text)
    assert issue == (
        "the top level must be a mapping with keys dr, encryption, pipeline, staging_dir, targets, "
        f"sources, schedules; got {got}"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues == [
        f"config file {path} not found; set BACKUP_CONFIG or pass a path"
    ]


def test_config_error_message_names_the_file(tmp_path: Path) -> None:
    data = base()
    data["dr"]["rto_hours"] = 100
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert str(caught.value) == (
        f"invalid backup config {path}:\n"
        "  - dr.rto_hours: 100 is out of range; must be between 0.5 and 72 hours"
    )


# --- warnings --------------------------------------------------------------------------


def test_single_target_warns_about_3_2_1(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0]["targets"] = ["nas"]
    loaded = load(tmp_path, data)
    assert loaded.issues == []
    assert loaded.warnings == [
        (
            "schedules[0] (daily_full).targets: only one target (nas); the 3-2-1 rule wants copies on at "
            "least two targets — add a second target"
        )
    ]


def test_no_offsite_target_warns_about_3_2_1(tmp_path: Path) -> None:
    data = base()
    data["targets"]["local2"] = {"type": "local", "path": "/srv/backups"}
    data["schedules"][2]["targets"] = ["local", "local2"]
    loaded = load(tmp_path, data)
    assert loaded.issues == []
    warning, one_kind, one_store = loaded.warnings
    assert warning.startswith(
        "schedules[2] (uploads_6h).targets: no off-site target (local, local2 on-site)"
    )
    assert "every copy (local, local2) is on one kind of storage (disk)" in one_kind
    assert "every copy (local, local2) is in one store" in one_store


def test_copies_on_one_kind_or_in_one_store_warn_about_3_2_1(tmp_path: Path) -> None:
    """Two S3 targets in one bucket: one kind and one store; in two accounts' buckets: one
    kind only; S3 next to an SFTP server: neither."""
    data = base()
    data["targets"] |= {
        "s3a": {"type": "s3", "conn_id": "aws", "bucket": "b", "prefix": "one/"},
        "s3b": {"type": "s3", "conn_id": "aws", "bucket": "b", "prefix": "two/"},
        "s3c": {"type": "s3", "conn_id": "aws_dr", "bucket": "c"},
        "sftp": {"type": "sftp", "conn_id": "sftp", "path": "/backups"},
    }
    for targets, expected in (
        (["s3a", "s3b"], ["one kind of storage (object store)", "in one store"]),
        (["s3a", "s3c"], ["one kind of storage (object store)"]),
        (["s3a", "sftp"], []),
    ):
        data["schedules"][0]["targets"] = targets
        loaded = load(tmp_path, data)
        assert loaded.issues == []
        assert len(loaded.warnings) == len(expected), loaded.warnings
        for warning, words in zip(loaded.warnings, expected, strict=True):
            assert words in warning, warning


def test_single_onsite_target_gets_both_warnings(tmp_path: Path) -> None:
    data = base()
    data["schedules"][1]["targets"] = ["local"]
    warnings = load(tmp_path, data).warnings
    assert [w.split(";")[0] for w in warnings] == [
        "schedules[1] (weekly_schema).targets: only one target (local)",
        "schedules[1] (weekly_schema).targets: no off-site target (local on-site)",
    ]


def test_no_notification_email_warns(tmp_path: Path) -> None:
    data = base()
    data["dr"]["notification_emails"] = []
    loaded = load(tmp_path, data)
    assert loaded.issues == []
    assert loaded.warnings == [
        (
            "dr.notification_emails: empty; backup failures and RPO/RTO misses will not be emailed — "
            "add at least one address"
        )
    ]


def test_failover_entry_for_unknown_source_warns(tmp_path: Path) -> None:
    data = base()
    data["dr"]["failover"] = {"event_pg": {"secondary": "events_standby"}}
    loaded = load(tmp_path, data)
    assert loaded.issues == []
    assert loaded.warnings == [
        "dr.failover.event_pg: no source named 'event_pg'; known sources: events_pg, uploads "
        "— fix the name or remove the entry"
    ]


def test_promote_standby_for_a_files_source_warns(tmp_path: Path) -> None:
    data = base()
    data["dr"]["failover"] = {
        "uploads": {"switch": {"kind": "promote_standby", "conn_id": "uploads_standby"}}
    }
    (warning,) = load(tmp_path, data).warnings
    assert warning.startswith(
        "dr.failover.uploads.switch: kind promote_standby promotes a PostgreSQL standby, "
        "but source 'uploads' is a files source"
    )


def _physical(spool: str, prune: bool = False) -> dict[str, Any]:
    return {
        "type": "postgres",
        "conn_id": "events_pg",
        "method": "physical",
        "wal_archive_dir": spool,
        "prune_wal_archive": prune,
    }


def test_pruning_spool_under_an_incremental_schedule_warns(tmp_path: Path) -> None:
    data = base()
    data["sources"]["events_pg"] = _physical("/srv/wal", prune=True)
    data["schedules"][1].update(type="INCREMENTAL", cron="0 */6 * * *")
    data["schedules"].append(
        {"name": "wal_15m", "source": "events_pg", "type": "TRANSACTION_LOG",
         "cron": "*/15 * * * *", "targets": ["local", "nas"]}
    )
    loaded = load(tmp_path, data)
    assert loaded.issues == []
    (warning,) = loaded.warnings
    assert warning.startswith("sources.events_pg.prune_wal_archive: its TRANSACTION_LOG schedule")
    # without pruning, the two schedule types share the spool safely
    data["sources"]["events_pg"]["prune_wal_archive"] = False
    assert load(tmp_path, data).warnings == []


def test_two_physical_sources_on_one_spool_warn(tmp_path: Path) -> None:
    data = base()
    data["sources"]["events_pg"] = _physical("/srv/wal")
    data["sources"]["orders_pg"] = _physical("/srv/wal")
    (warning,) = load(tmp_path, data).warnings
    assert warning.startswith(
        "sources.orders_pg.wal_archive_dir: /srv/wal is also the spool of events_pg"
    )


def test_broken_schedules_get_no_warnings(tmp_path: Path) -> None:
    data = base()
    data["schedules"][0].update(targets=["local"], cron="bad")
    assert load(tmp_path, data).warnings == []


# --- where the config comes from -------------------------------------------------------


def test_default_path_is_the_example_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKUP_CONFIG", raising=False)
    assert config_path() == REPO / "include" / "backup_config.yaml"
    assert config_path() == DEFAULT_PATH


def test_backup_config_env_var_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = base()
    data["schedules"] = data["schedules"][:1]
    path = write(tmp_path, data, name="elsewhere.yaml")
    monkeypatch.setenv("BACKUP_CONFIG", str(path))
    assert config_path() == path
    loaded = load_config()
    assert loaded.path == path
    assert schedule_names(loaded) == ["daily_full"]
    assert [s.name for s in load_valid_config().schedules] == ["daily_full"]


def test_explicit_path_wins_over_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUP_CONFIG", str(tmp_path / "missing.yaml"))
    path = write(tmp_path, base())
    assert load_config(path).path == path


# --- the example config ----------------------------------------------------------------


def test_example_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKUP_CONFIG", raising=False)
    loaded = load_config()
    assert loaded.issues == []
    assert loaded.broken_schedules == {}
    config = loaded.config
    assert schedule_names(loaded) == [
        "daily_full",
        "events_pg_schema",
        "uploads_daily",
        "uploads_6h",
    ]
    assert set(config.targets) == {"local"}
    assert config.targets["local"].path == "/tmp/airflow-backups/local"  # type: ignore[union-attr]
    assert set(config.sources) == {"events_pg", "uploads", "app_config"}
    assert config.sources["uploads"].exclude == ["*.tmp", "*.log", "node_modules/"]  # type: ignore[union-attr]
    types = {s.name: (s.source, s.type, s.cron) for s in config.schedules}
    assert types["daily_full"] == ("events_pg", BackupType.FULL, "0 2 * * *")
    assert types["events_pg_schema"][:2] == ("events_pg", BackupType.SCHEMA)
    assert types["uploads_daily"] == ("uploads", BackupType.FULL, "0 1 * * *")
    assert types["uploads_6h"] == ("uploads", BackupType.INCREMENTAL, "0 */6 * * *")
    assert all(
        s.retention is not None or s.retention_days is not None
        for s in config.schedules
    )


# --- the validate verb -----------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BACKUP_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "include.backup", "validate", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_validates_the_example_config() -> None:
    result = run_cli(str(DEFAULT_PATH))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"OK: {DEFAULT_PATH}: 4 schedules (daily_full, events_pg_schema, uploads_daily, uploads_6h), "
        "1 targets, 3 sources"
    )
    assert result.stderr == ""


def test_cli_default_path_is_the_example_config() -> None:
    result = run_cli()
    assert result.returncode == 0, result.stderr
    assert f"OK: {DEFAULT_PATH}:" in result.stdout


def test_cli_rejects_a_bad_config_with_the_key_path(tmp_path: Path) -> None:
    data = base()
    data["schedules"][1]["cron"] = "61 * * * *"
    path = write(tmp_path, data)
    result = run_cli(str(path))
    assert result.returncode == 1
    assert (
        f"{path}: schedules[1] (weekly_schema).cron: '61 * * * *' is not a valid cron expression"
        in result.stderr
    )
    assert "broken schedules: weekly_schema" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_a_fatal_config(tmp_path: Path) -> None:
    data = base()
    data["dr"]["rto_hours"] = 100
    path = write(tmp_path, data)
    result = run_cli(str(path))
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"{path}: dr.rto_hours: 100 is out of range; must be between 0.5 and 72 hours"
    )


def test_cli_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    result = run_cli(str(path))
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: config file {path} not found; set BACKUP_CONFIG or pass a path"
    )


def test_validate_command_prints_warnings_on_success(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base()
    data["schedules"][0]["targets"] = ["nas"]
    path = write(tmp_path, data)
    assert validate_command(str(path)) == 0
    out = capsys.readouterr()
    first, warning = out.out.splitlines()
    assert first.startswith(
        f"OK: {path}: 3 schedules (daily_full, weekly_schema, uploads_6h), 2 targets, 2 sources"
    )
    assert warning.startswith(
        f"{path}: warning: schedules[0] (daily_full).targets: only one target (nas)"
    )
    assert out.err == ""


def test_yaml_scalars_that_should_be_text_get_a_quoting_hint(tmp_path: Path) -> None:
    text = "sources:\n  pg:\n    type: postgres\n    conn_id: 2024-01-01\n"
    (issue,) = load(tmp_path, text).issues
    assert issue == (
        "sources.pg.conn_id: expected a string, got 2024-01-01; "
        "put the value in quotes so YAML reads it as text"
    )


def test_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    (issue,) = caught.value.issues
    assert issue.startswith(f"{tmp_path} is not a file; point BACKUP_CONFIG")


# --- hostile or self-defeating configs ----------------------------------------------------


def _alias_bomb() -> str:
    """The classic "billion laughs" (about 570 bytes): nine anchors, each a list of nine
    aliases of the one before, in a schedule's description. Fully expanded it is 387
    million strings."""
    lines = [
        "targets:",
        "  disk: {type: local, path: /var/backups/a}",
        "sources:",
        "  docs: {type: files, paths: [/data/docs]}",
        "schedules:",
        "  - name: s",
        "    source: docs",
        "    cron: '@daily'",
        "    targets: [disk]",
        "    description:",
        "      - &a [" + ",".join(['"lol"'] * 9) + "]",
    ]
    names = "abcdefghi"
    for a, b in zip(names, names[1:], strict=False):
        lines.append(f"      - &{b} [" + ",".join([f"*{a}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _load_in_a_box(path: Path, memory_mb: int = 1024, seconds: int = 60) -> subprocess.CompletedProcess[str]:
    """load_config in a child with a memory and CPU rlimit: a regression fails the test
    instead of taking the machine down."""
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({memory_mb << 20}, {memory_mb << 20}))\n"
        f"resource.setrlimit(resource.RLIMIT_CPU, ({seconds}, {seconds}))\n"
        "from include.backup.config.loader import load_config\n"
        "from include.backup.errors import ConfigError\n"
        "try:\n"
        "    load_config(sys.argv[1])\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True, text=True, timeout=seconds + 30, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_alias_bomb_is_refused_quickly_naming_file_and_problem(tmp_path: Path) -> None:
    path = write(tmp_path, _alias_bomb())
    assert path.stat().st_size < 600
    done = _load_in_a_box(path)
    assert done.returncode == 3, done.stderr[-2000:]
    assert str(path) in done.stdout
    assert "alias bomb" in done.stdout and "line " in done.stdout


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    text = "targets: &t\n  loop: *t\n"
    (issue,) = fatal_issues(tmp_path, text)
    assert "recursive alias" in issue


def test_anchors_shared_by_many_schedules_are_fine(tmp_path: Path) -> None:
    text = (
        "targets:\n  local: {type: local, path: /var/backups/a}\n"
        "  nas: {type: local, path: /mnt/nas/backups, offsite: true}\n"
        "sources:\n  pg: {type: postgres, conn_id: pg}\n"
        "schedules:\n"
        "  - &s {name: s0, source: pg, cron: '@daily', targets: [local, nas],"
        " retention: &r {daily: 7, weekly: 4}}\n"
    )
    text += "".join(f"  - {{<<: *s, name: s{i}, retention: *r}}\n" for i in range(1, 300))
    loaded = load(tmp_path, text)
    assert loaded.issues == []
    assert len(loaded.config.schedules) == 300


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * 500_000)  # 5 MB of comments
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    (issue,) = caught.value.issues
    assert "larger than 4 MiB" in issue


def test_files_source_covering_the_staging_dir_is_refused(tmp_path: Path) -> None:
    data = base()
    data["staging_dir"] = "/srv/airflow/staging"
    data["sources"]["uploads"]["paths"] = ["/data/uploads", "/srv/airflow"]
    loaded = load(tmp_path, data)
    (issue,) = [i for i in loaded.issues if i.startswith("sources.uploads")]
    assert issue.startswith("sources.uploads.paths[1]: '/srv/airflow' contains the staging directory")
    assert "'/srv/airflow/staging/'" in issue and "exclude" in issue
    assert "uploads" not in loaded.config.sources
    assert "uploads_6h" in loaded.broken_schedules

    # Excluding the staging directory is the documented fix.
    data["sources"]["uploads"]["exclude"] = ["/srv/airflow/staging/"]
    assert load(tmp_path, data).issues == []

    # A path inside staging is refused too: it holds plaintext dumps.
    data["sources"]["uploads"]["paths"] = ["/srv/airflow/staging/x"]
    (issue,) = [i for i in load(tmp_path, data).issues if i.startswith("sources.")]
    assert "inside the staging directory" in issue


def test_files_source_covering_a_local_target_is_refused(tmp_path: Path) -> None:
    data = base()
    data["sources"]["uploads"]["paths"] = ["/var/backups"]
    loaded = load(tmp_path, data)
    (issue,) = [i for i in loaded.issues if i.startswith("sources.")]
    assert "uploads_6h" in loaded.broken_schedules
    assert issue.startswith(
        "sources.uploads.paths[0]: '/var/backups' contains local target 'local' (/var/backups/a)"
    )
    assert "back up itself" in issue


@pytest.mark.parametrize(
    ("first", "second", "key"),
    [
        ({"type": "local", "path": "/var/backups/a"}, {"type": "local", "path": "/var/backups/a/"}, "path"),
        ({"type": "local", "path": "/var/backups"}, {"type": "local", "path": "/var/backups/a/b"}, "path"),
        (
            {"type": "sftp", "conn_id": "c", "path": "/b"},
            {"type": "sftp", "conn_id": "c", "path": "/b"},
            "path",
        ),
        (
            {"type": "s3", "conn_id": "c", "bucket": "bk", "prefix": "em/"},
            {"type": "s3", "conn_id": "c", "bucket": "bk", "prefix": "em"},
            "prefix",
        ),
        (
            {"type": "gcs", "conn_id": "c", "bucket": "bk"},
            {"type": "gcs", "conn_id": "c", "bucket": "bk", "prefix": "x/"},
            "prefix",
        ),
    ],
)
def test_two_targets_on_one_place_are_refused(
    tmp_path: Path, first: dict, second: dict, key: str
) -> None:
    data = base()
    data["targets"] = {"one": first, "two": second}
    for s in data["schedules"]:
        s["targets"] = ["one"]
    loaded = load(tmp_path, data)
    (issue,) = loaded.issues
    assert issue.startswith(f"targets.two.{key}: ")
    assert "target 'one'" in issue and f"give targets.two a {key} of its own" in issue
    assert list(loaded.config.targets) == ["one"]


def test_targets_in_different_places_are_fine(tmp_path: Path) -> None:
    data = base()
    data["targets"] = {
        "a": {"type": "s3", "conn_id": "c", "bucket": "bk", "prefix": "em/"},
        "b": {"type": "s3", "conn_id": "c", "bucket": "bk", "prefix": "em2/"},
        "c": {"type": "s3", "conn_id": "other", "bucket": "bk", "prefix": "em/"},
        "d": {"type": "sftp", "conn_id": "c", "path": "/var/backups/a"},
        "e": {"type": "local", "path": "/var/backups/a"},
        "f": {"type": "local", "path": "/var/backups/ab"},
    }
    for s in data["schedules"]:
        s["targets"] = ["a", "e"]
    assert load(tmp_path, data).issues == []


@pytest.mark.parametrize(
    ("kind", "prefix", "says"),
    [
        ("s3", "em/../other/", "'..' or '.' part"),
        ("s3", "../x", "'..' or '.' part"),
        ("azure_blob", "/abs/", "starts with '/'"),
        ("gcs", "a\\b/", "backslash"),
    ],
)
def test_object_store_prefix_must_be_plain(tmp_path: Path, kind: str, prefix: str, says: str) -> None:
    data = base()
    bucket = {"container": "c"} if kind == "azure_blob" else {"bucket": "b"}
    data["targets"]["remote"] = {"type": kind, "conn_id": "x", "prefix": prefix, **bucket}
    (issue,) = load(tmp_path, data).issues
    assert issue.startswith(f"targets.remote.prefix: prefix {prefix!r} ")
    assert says in issue
    assert "plain folder names" in issue
