"""The restore DAG's params are checked before anything is touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.backup.config.schema import BackupConfig
from include.backup.dr.params import RestoreRequest, check_destination, parse_restore_params
from include.backup.errors import RestoreRefused

CONFIG = BackupConfig.model_validate(
    {
        "targets": {"local": {"type": "local", "path": "/tmp/b"}},
        "sources": {"events_pg": {"type": "postgres", "conn_id": "events_pg"}},
    }
)


def parse(**params):
    return parse_restore_params(params, CONFIG)


def test_latest_of_a_source():
    req = parse(source="events_pg", into="events_copy")
    assert req == RestoreRequest("events_pg", None, None, "events_copy", None, None, False)


def test_point_in_time_is_utc_and_round_trips_through_xcom():
    req = parse(source="events_pg", into="/restore/pg", point_in_time="2026-01-02T03:04:05+01:00")
    assert req.point_in_time == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert RestoreRequest.from_xcom(req.to_xcom()) == req


def test_tables_from_a_form_string_or_a_list():
    assert parse(backup_id="b1", into="x", tables="users, events").only == ["users", "events"]
    assert parse(backup_id="b1", into="x", collections=["users"]).only == ["users"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"source": "events_pg"}, "'into' is required"),
        ({"into": "x"}, "pass 'backup_id'"),
        ({"source": "nope", "into": "x"}, "no source named 'nope'; known: events_pg"),
        ({"backup_id": "b", "into": "x", "target": "s3"}, "no target named 's3'; known: local"),
        ({"source": "events_pg", "into": "x", "point_in_time": "yesterday"}, "not an ISO-8601 time"),
        ({"backup_id": "b", "into": "x", "overwrite": "yes"}, "'overwrite' must be true or false"),
    ],
)
def test_bad_params_are_refused_with_the_param_named(params, message):
    with pytest.raises(RestoreRefused, match=message.replace("(", r"\(")):
        parse(**params)


def test_future_point_in_time_is_refused():
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with pytest.raises(RestoreRefused, match="in the future"):
        parse(source="events_pg", into="x", point_in_time=later)


# --- destinations are checked strictly, before anything is touched ---------------------------


@pytest.mark.parametrize(
    "into",
    [
        "/tmp/x$(touch /tmp/pwned)",
        "/tmp/x`touch /tmp/pwned`",
        "/tmp/x; rm -rf /",
        '/srv/a" -c archive_command="x',
        "/srv/a|b",
        "/srv/a\\b",
        "/srv/a\nb",
        "/srv/a\x00b",
        "/srv/a\u202eb",
        "/srv/../etc",
        "events copy",
        "events;drop",
        "conn:a b",
        "conn:x/$(id)",
        "-d",
    ],
)
def test_a_destination_with_shell_or_control_characters_is_refused_naming_the_param(into):
    with pytest.raises(RestoreRefused, match="param 'into'"):
        parse(source="events_pg", into=into)


@pytest.mark.parametrize(
    "into",
    [
        "/srv/pg-restored:5440",
        "/srv/restore dir/it's 100%",
        "/srv/2026-01-02T03:04",
        "events_copy",
        "events-copy.v2",
        "conn:staging_pg",
        "conn:mongo.standby/events",
    ],
)
def test_plain_destinations_pass(into):
    assert parse(source="events_pg", into=into).into == into


def test_check_destination_names_the_param_it_checks():
    with pytest.raises(RestoreRefused, match=r"param 'target_environment' .* shell metacharacters"):
        check_destination("/srv/$(id)", "target_environment")
    assert check_destination("/srv/dr", "secondary") == "/srv/dr"


DR_CONFIG = BackupConfig.model_validate(
    {
        "targets": {"local": {"type": "local", "path": "/tmp/b"}},
        "sources": {"events_pg": {"type": "postgres", "conn_id": "events_pg"}},
        "schedules": [
            {"name": "daily", "source": "events_pg", "type": "FULL", "cron": "@daily", "targets": ["local"]}
        ],
    }
)


@pytest.mark.parametrize("where", ["/srv/x$(touch /tmp/pwned)", "staging;drop", "conn:x y"])
def test_dr_test_and_failover_destinations_are_checked_the_same_way(where):
    from include.backup.dr.drtest import parse_dr_test_params
    from include.backup.dr.failover import parse_failover_params

    with pytest.raises(RestoreRefused, match="param 'target_environment'"):
        parse_dr_test_params(
            {"test_type": "RESTORE_TEST", "source": "events_pg", "target_environment": where}, DR_CONFIG
        )
    with pytest.raises(RestoreRefused, match="param 'secondary'"):
        parse_failover_params({"source": "events_pg", "confirm": "events_pg", "secondary": where}, DR_CONFIG)
