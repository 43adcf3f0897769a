"""The ``promote_standby`` failover switch: config, params, the promote decision, and what
the restore and verify steps do after it. The PostgreSQL server is faked here (a scripted
cursor behind a fake PostgresHook); tests/integration/test_failover_promote.py runs the
same code against a real streaming standby."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from typing import Any

import pytest

from include.backup.config.loader import load_config
from include.backup.config.schema import BackupConfig, FailoverSwitch
from include.backup.dr import failover
from include.backup.dr.failover import parse_failover_params, restore_secondary, switch
from include.backup.dr.standby import StandbyState, lsn_bytes, promotion_decision, standby_findings
from include.backup.errors import BackupError, ConfigError, RestoreRefused

SECRET = "s3cr3t-Pa55word"
REPLAYED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_config(failover_settings: dict[str, Any] | None = None) -> BackupConfig:
    return BackupConfig.model_validate(
        {
            "dr": {"failover": failover_settings or {}},
            "targets": {"local": {"type": "local", "path": "/b/local"}},
            "sources": {
                "events_pg": {"type": "postgres", "conn_id": "events_pg"},
                "uploads": {"type": "files", "paths": ["/data/uploads"]},
            },
            "schedules": [
                {"name": "pg", "source": "events_pg", "cron": "@daily", "targets": ["local"]},
                {"name": "up", "source": "uploads", "cron": "@daily", "targets": ["local"]},
            ],
        }
    )


PROMOTE = {
    "events_pg": {"switch": {"kind": "promote_standby", "conn_id": "pg_standby", "timeout_seconds": 30}}
}


# --- config ----------------------------------------------------------------------------


def test_promote_standby_needs_conn_id_and_nothing_else():
    with pytest.raises(ValueError, match="promote_standby needs conn_id: the Airflow Postgres connection"):
        FailoverSwitch(kind="promote_standby")
    with pytest.raises(ValueError, match="takes conn_id and timeout_seconds only; remove command"):
        FailoverSwitch(kind="promote_standby", conn_id="pg_standby", command=["pg_ctl", "promote"])
    ok = FailoverSwitch(kind="promote_standby", conn_id="pg_standby")
    assert ok.timeout_seconds == 600


def test_secondary_must_be_the_promoted_standby():
    with pytest.raises(ValueError, match="is not the standby the switch promotes"):
        make_config({"events_pg": {**PROMOTE["events_pg"], "secondary": "conn:other_pg"}})
    for same in ("conn:pg_standby", "pg_standby"):
        make_config({"events_pg": {**PROMOTE["events_pg"], "secondary": same}})


def test_config_file_error_names_the_key_path(tmp_path):
    path = tmp_path / "backup_config.yaml"
    path.write_text(
        textwrap.dedent(
            """
            dr:
              failover:
                events_pg:
                  switch: {kind: promote_standby}
            """
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (issue,) = caught.value.issues
    assert issue.startswith("dr.failover.events_pg.switch: switch kind promote_standby needs conn_id")


# --- params ----------------------------------------------------------------------------


def test_secondary_defaults_to_the_standby():
    config = make_config(PROMOTE)
    req = parse_failover_params({"source": "events_pg", "confirm": "events_pg"}, config)
    assert req.secondary == "conn:pg_standby"
    with pytest.raises(RestoreRefused, match="promotes the standby conn:pg_standby"):
        parse_failover_params(
            {"source": "events_pg", "confirm": "events_pg", "secondary": "dr_copy"}, config
        )


def test_promote_standby_on_a_files_source_is_refused_before_anything_runs():
    config = make_config({"uploads": {"switch": {"kind": "promote_standby", "conn_id": "pg_standby"}}})
    with pytest.raises(RestoreRefused, match="PostgreSQL standby but 'uploads' is a files source"):
        parse_failover_params({"source": "uploads", "confirm": "uploads"}, config)


def test_standby_that_is_the_source_connection_is_refused():
    config = make_config({"events_pg": {"switch": {"kind": "promote_standby", "conn_id": "events_pg"}}})
    with pytest.raises(RestoreRefused, match="production connection"):
        parse_failover_params({"source": "events_pg", "confirm": "events_pg"}, config)


# --- the decision ----------------------------------------------------------------------


def state(in_recovery: bool = True, timeline: int | None = None, **kw: Any) -> StandbyState:
    values: dict[str, Any] = {
        "replay_lsn": "0/3000148",
        "receive_lsn": "0/3000148",
        "last_replayed_at": REPLAYED_AT,
        "replay_lag_seconds": 2.5,
        "read_only_default": False,
    }
    values.update(kw)
    return StandbyState(in_recovery=in_recovery, timeline=timeline, **values)


@pytest.mark.parametrize(
    ("in_recovery", "timeline", "decision"),
    [
        (True, None, "promote"),
        (False, 2, "already_promoted"),
        (False, 7, "already_promoted"),
        (False, 1, "not_standby"),
    ],
)
def test_promotion_decision(in_recovery, timeline, decision):
    assert promotion_decision(state(in_recovery, timeline)) == decision


def test_lsn_bytes():
    assert lsn_bytes("0/0") == 0
    assert lsn_bytes("1/0") - lsn_bytes("0/FFFFFFFF") == 1
    assert lsn_bytes("16/B374D848") == (0x16 << 32) + 0xB374D848


# --- the switch against a fake server --------------------------------------------------


def state_row(s: StandbyState) -> tuple[Any, ...]:
    return (s.in_recovery, s.timeline, s.replay_lsn, s.receive_lsn, s.last_replayed_at,
            s.replay_lag_seconds, s.read_only_default)


class FakeServer:
    """Answers the queries the switch and verify send, from a script of states."""

    def __init__(self, states: list[StandbyState], promote_result: bool = True,
                 tables: list[tuple[str, str]] | None = None, connect_error: str | None = None):
        self.states = list(states)
        self.promote_result = promote_result
        self.tables = tables or []
        self.connect_error = connect_error
        self.executed: list[tuple[str, Any]] = []
        self.databases: list[str | None] = []
        self._last: Any = None

    # the hook
    def hook(self, postgres_conn_id: str, database: str | None = None) -> Any:
        server = self

        class Conn:
            host, port, password = "standby.example", 5433, SECRET

        class Hook:
            connection = Conn()

            def get_conn(self) -> Any:
                server.databases.append(database)
                if server.connect_error:
                    raise RuntimeError(server.connect_error)
                return server

        return Hook()

    # the connection
    autocommit = False

    def cursor(self) -> FakeServer:
        return self

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    # the cursor
    def execute(self, sql: str, params: Any = None) -> None:
        self.executed.append((" ".join(sql.split()), params))
        if "pg_is_in_recovery()" in sql:
            self._last = state_row(self.states.pop(0))
        elif "pg_promote" in sql:
            self._last = (self.promote_result,)
        elif "FROM pg_class" in sql:
            self._last = self.tables

    def fetchone(self) -> Any:
        return self._last

    def fetchall(self) -> Any:
        return self._last

    def ran(self, fragment: str) -> list[Any]:
        return [params for sql, params in self.executed if fragment in sql]


@pytest.fixture
def server(monkeypatch):
    holder: dict[str, FakeServer] = {}

    def use(fake: FakeServer) -> FakeServer:
        holder["fake"] = fake
        return fake

    monkeypatch.setattr(
        "airflow.providers.postgres.hooks.postgres.PostgresHook",
        lambda postgres_conn_id, **kw: holder["fake"].hook(postgres_conn_id, **kw),
    )
    return use


def test_dry_run_only_describes(server):
    fake = server(FakeServer([]))
    result = switch(make_config(PROMOTE), "events_pg", "conn:pg_standby", dry_run=True)
    assert result["done"] is False and result["action"] == "promote_standby"
    assert "would promote the standby behind connection 'pg_standby'" in result["detail"]
    assert fake.databases == []  # never connected


def test_promote_records_the_lag_then_promotes(server):
    fake = server(FakeServer([state(True), state(False, 2)]))
    result = switch(make_config(PROMOTE), "events_pg", "conn:pg_standby", backup_id="b1")
    assert fake.ran("pg_promote") == [{"s": 30}]  # timeout_seconds
    assert result["done"] is True and result["promoted"] is True and result["already_promoted"] is False
    assert result["replay_lag_seconds"] == 2.5
    assert result["last_replayed_at"] == REPLAYED_AT.isoformat()
    assert result["replay_lsn"] == "0/3000148" and result["timeline"] == 2
    assert result["server"] == "standby.example:5433"
    assert "promoted standby standby.example:5433" in result["detail"]
    assert SECRET not in repr(result)


def test_retry_after_a_promote_succeeds_without_promoting_again(server):
    fake = server(FakeServer([state(False, 2)]))
    result = switch(make_config(PROMOTE), "events_pg", "conn:pg_standby")
    assert result["done"] is True and result["promoted"] is False and result["already_promoted"] is True
    assert "already out of recovery on timeline 2" in result["detail"]
    assert fake.ran("pg_promote") == []


def test_a_server_that_was_never_a_standby_is_refused(server):
    fake = server(FakeServer([state(False, 1, last_replayed_at=None, replay_lag_seconds=None)]))
    with pytest.raises(BackupError) as caught:
        switch(make_config(PROMOTE), "events_pg", "conn:pg_standby")
    message = str(caught.value)
    assert "standby.example:5433 (Airflow connection 'pg_standby') is not a standby" in message
    assert "nothing was changed" in message and "switch.conn_id" in message
    assert fake.ran("pg_promote") == []


def test_a_promote_that_times_out_fails(server):
    server(FakeServer([state(True)], promote_result=False))
    with pytest.raises(BackupError, match=r"returned false: .* within 30 s \(switch.timeout_seconds\)"):
        switch(make_config(PROMOTE), "events_pg", "conn:pg_standby")


def test_connection_errors_never_carry_the_password(server):
    server(FakeServer([], connect_error=f'connection to "postgres://app:{SECRET}@standby" failed: {SECRET}'))
    with pytest.raises(BackupError) as caught:
        switch(make_config(PROMOTE), "events_pg", "conn:pg_standby")
    message = str(caught.value)
    assert SECRET not in message
    assert "cannot connect to standby.example:5433 (Airflow connection 'pg_standby')" in message


# --- restore and verify after the switch -----------------------------------------------


def test_restore_is_skipped_the_standby_holds_the_data():
    config = make_config(PROMOTE)
    switched = {"action": "promote_standby", "done": True, "promoted": True, "replay_lsn": "0/5000000",
                "replay_lag_seconds": 1.5, "last_replayed_at": REPLAYED_AT.isoformat(), "server": "s:5433"}
    result = restore_secondary(config, "events_pg", "conn:pg_standby", backup_id="b1", target="local",
                               switched=switched)
    assert result["skipped"] is True and result["dry_run"] is False
    assert result["detail"].startswith("skipped: the standby conn:pg_standby was promoted, it holds the data")
    assert result["switch"]["replay_lag_seconds"] == 1.5 and result["standby_conn_id"] == "pg_standby"
    dry = restore_secondary(config, "events_pg", "conn:pg_standby", backup_id="b1", target="local",
                            switched={"action": "promote_standby", "done": False, "dry_run": True})
    assert dry["skipped"] is True and dry["dry_run"] is True and "dry run" in dry["detail"]


def findings(s: StandbyState, *, promoted: bool = True, **kw: Any) -> tuple[list[str], list[str]]:
    args: dict[str, Any] = {
        "tables": {"users", "events"},
        "recorded_tables": {"users": 10, "events": 3},
        "backup_id": "b1",
        "backup_lsn": "0/3000000",
        "switched": {"replay_lag_seconds": 2.5, "last_replayed_at": REPLAYED_AT.isoformat()},
        "write_error": None,
    }
    args.update(kw)
    return standby_findings(s, promoted=promoted, **args)


def test_findings_on_a_good_promotion():
    issues, notes = findings(state(False, 2, replay_lsn="0/3000148"))
    assert issues == []
    assert "2 of 2 tables of backup b1 present" in notes
    assert any(n.startswith("behind the primary: last replayed transaction committed at 2026-01-02T03:04:05")
               and "2.5 s before the promotion" in n for n in notes)
    assert any("replayed 328 bytes of WAL past the start of backup b1" in n for n in notes)


def test_findings_flag_what_a_user_must_know():
    issues, _ = findings(state(False, 2, replay_lsn="0/2000000"), tables={"users"})
    assert "table events of backup b1 is missing on the standby" in issues
    assert any("16777216 bytes before backup b1 started" in i for i in issues)
    issues, _ = findings(state(True))
    assert issues == ["the promoted server is still in recovery: it does not accept writes"]
    read_only = "cannot execute CREATE TABLE in a read-only transaction"
    issues, _ = findings(state(False, 2), write_error=read_only)
    assert issues == [f"the promoted server does not accept writes: {read_only}"]
    # Dry run: the standby must still be one.
    issues, notes = findings(state(True), promoted=False)
    assert issues == [] and any(n.endswith("2.5 s ago") for n in notes)
    issues, _ = findings(state(False, 1), promoted=False)
    assert issues and "not a standby" in issues[0]
    issues, _ = findings(state(False, 2), promoted=False)
    assert issues and "already out of recovery (timeline 2): it no longer replicates" in issues[0]


def test_verify_checks_the_promoted_server(server, monkeypatch):
    from include.backup.catalog.manifest import Manifest

    manifest = Manifest(
        backup_id="b1", schedule="pg", source="events_pg", source_type="postgres", backup_type="FULL",
        started_at=REPLAYED_AT, payload_format="pg_dump-custom",
        position={"lsn": "0/3000000", "database": "events"}, stats={"tables": {"users": 10, "audit.log": 2}},
    )
    monkeypatch.setattr(
        "include.backup.dr.restore.locate", lambda config, backup_id, target=None: (None, manifest)
    )
    fake = server(FakeServer([state(False, 2)], tables=[("public", "users"), ("audit", "log")]))
    restored = restore_secondary(make_config(PROMOTE), "events_pg", "conn:pg_standby", backup_id="b1",
                                 target="local", switched={"done": True, "replay_lsn": "0/3000148"})
    verified = failover.verify_secondary(make_config(PROMOTE), restored)
    assert verified["ok"] is True and verified["standby"]["timeline"] == 2
    assert fake.databases == ["events"]  # the database the backup was taken from
    assert fake.ran("CREATE TEMPORARY TABLE") and fake.ran("ROLLBACK")  # the write probe left nothing

    fake = server(FakeServer([state(False, 2)], tables=[("public", "users")]))
    with pytest.raises(BackupError, match="table audit.log of backup b1 is missing on the standby"):
        failover.verify_secondary(make_config(PROMOTE), restored)


def test_the_alert_says_the_restore_was_skipped():
    request = failover.FailoverRequest("events_pg", "conn:pg_standby", None, dry_run=False, overwrite=False)
    outcomes = {
        "assess": {"backup_id": "b1", "target": "local", "age_hours": 0.5, "rpo_hours": 1},
        "switch": {"detail": "promoted standby s:5433"},
        "restore": {"skipped": True, "detail": "skipped: the standby conn:pg_standby was promoted"},
        "verify": {"ok": True, "notes": ["2 of 2 tables of backup b1 present"]},
    }
    alert = failover.activated_alert(request, outcomes, run_id="r1")
    assert alert.facts["restore"] == "skipped: the standby conn:pg_standby was promoted"
    assert "completed" in alert.summary
