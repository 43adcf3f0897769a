"""What automation driving the REST API sees (issue: the official client's findings):
refusals reported as refusals (a plain log line, an XCom, an info mail, no critical page),
trigger-only DAGs unpaused at creation, the dr_test aliases the docs list, backup ids
named by when the backup was taken, one asset event per verified backup, and the
``/dr/api/backups`` filters and fields. The live run of the same is
tests/e2e/test_rest_client.py."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from include.backup import tasks
from include.backup.alerts import callbacks
from include.backup.catalog.chains import BrokenChain
from include.backup.catalog.manifest import Manifest
from include.backup.catalog.signing import signed_bytes
from include.backup.config.schema import BackupConfig
from include.backup.dr.params import parse_restore_params
from include.backup.dr.restore import restore_backup
from include.backup.dr.web import Monitor, create_app
from include.backup.errors import RestoreRefused
from include.backup.keys import KeyRing
from tests.unit.test_alerts import FakeHook, fake_smtp  # noqa: F401 - a fixture
from tests.unit.test_dr_web import env, run_backup  # noqa: F401 - a fixture

CONFIG = BackupConfig.model_validate(
    {
        "dr": {"notification_emails": ["oncall@example.com"]},
        "targets": {"local": {"type": "local", "path": "/tmp/b"}},
        "sources": {"docs": {"type": "files", "paths": ["/srv/docs"]}},
        "schedules": [{"name": "docs_full", "source": "docs", "cron": "@daily", "targets": ["local"]}],
    }
)


class RecordingTI:
    dag_id = "failover"
    run_id = "manual__2026-12-01T10:00:00+00:00"
    task_id = "validate_params"
    map_index = -1
    try_number = 1

    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


# --- refusals --------------------------------------------------------------------------


def test_refusal_is_logged_stored_as_xcom_and_mailed_as_info_not_failure(
    tmp_path: Path, fake_smtp: list[dict[str, Any]], caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    ti = RecordingTI()
    reason = "param 'confirm' must equal the source name 'docs' to fail it over"
    context = {"ti": ti, "run_id": ti.run_id, "exception": RestoreRefused(reason)}
    with caplog.at_level(logging.ERROR, logger=callbacks.__name__):
        callbacks.on_backup_failure(context, config=CONFIG, state_path=tmp_path / "state")
        # the failover's notify task refuses too: still one mail for the run
        callbacks.on_backup_failure(
            {**context, "exception": RestoreRefused("failover refused by validate_params")},
            config=CONFIG,
            state_path=tmp_path / "state",
        )
    assert f"refused, nothing was touched: {reason}" in caplog.messages  # a plain line, no traceback
    assert ti.xcoms["refusal"]["reason"] == "failover refused by validate_params"
    assert ti.xcoms["refusal"]["task_id"] == "validate_params" and ti.xcoms["refusal"]["touched_nothing"]
    (mail,) = fake_smtp
    assert mail["subject"].startswith("[INFO] Request refused: failover")
    assert "fail" not in mail["subject"].lower().replace("failover", "")
    assert reason.replace("'", "&#x27;") in mail["html_content"]
    assert not (tmp_path / "state").exists() or "BACKUP_FAILED" not in (tmp_path / "state").read_text()


def test_a_broken_chain_is_still_a_failure(tmp_path: Path, fake_smtp: list[dict[str, Any]]) -> None:  # noqa: F811
    ti = RecordingTI()
    context = {"ti": ti, "run_id": ti.run_id, "exception": BrokenChain("incremental without its full")}
    callbacks.on_backup_failure(context, config=CONFIG, state_path=tmp_path / "state")
    (mail,) = fake_smtp
    assert mail["subject"].startswith("[CRITICAL] Backup failed") and "refusal" not in ti.xcoms


def test_refusal_report_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoXcom(RecordingTI):
        def xcom_push(self, key: str, value: Any) -> None:
            raise ConnectionError("execution API down")

    def boom(*a: Any, **k: Any) -> int:
        raise ConnectionRefusedError("smtp down")

    monkeypatch.setattr(callbacks, "send", boom)
    callbacks.on_backup_failure({"ti": NoXcom(), "exception": RestoreRefused("no")}, config=CONFIG)


def test_relative_files_destination_is_refused_not_resolved_against_the_cwd(
    env: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    with pytest.raises(RestoreRefused, match="'into' 'restored' is a relative path.*e.g. /srv/restore/docs"):
        parse_restore_params({"source": "docs", "into": "restored"}, CONFIG)
    # by backup id (the source is known only from the backup): refused before anything is written
    meta = run_backup()
    monkeypatch.chdir(env)
    config = tasks.load_config()
    keys = KeyRing.from_file(env / "keys.json")
    with pytest.raises(RestoreRefused, match="relative path"):
        restore_backup(config, meta["backup_id"], "restored", keys=keys)
    assert not (env / "restored").exists()
    assert restore_backup(config, meta["backup_id"], str(env / "restored"), keys=keys).backup_id


# --- DAGs as the REST API sees them ----------------------------------------------------


@pytest.fixture(scope="module")
def dr_dags() -> dict[str, Any]:
    from include.backup.dr.dags import build_dr_test_dag, build_failover_dag, build_restore_dag

    builders = (build_restore_dag, build_dr_test_dag, build_failover_dag)
    return {dag.dag_id: dag for dag in (build(CONFIG) for build in builders)}


def test_trigger_only_dags_start_unpaused(dr_dags: dict[str, Any]) -> None:
    assert {d: dag.is_paused_upon_creation for d, dag in dr_dags.items()} == {
        "restore": False,
        "dr_test": False,
        "failover": False,
    }


@pytest.mark.parametrize("alias", ["FAILOVER", "RESTORE", "RTO", "RESTORE_TEST"])
def test_documented_test_type_aliases_pass_the_param_schema(dr_dags: dict[str, Any], alias: str) -> None:
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dr_dags["dr_test"].params)
    params["test_type"] = alias  # validated as the REST API does before it creates the run
    assert params.validate()["test_type"] == alias
    with pytest.raises(ParamValidationError, match="test_type"):
        params["test_type"] = "BOGUS"  # a 400 at trigger time


def test_backup_cleanup_declares_its_source_asset(tmp_path: Path) -> None:
    """Declared at parse time, so the asset exists before the first event: two schedules of
    one source finishing at once no longer both create it (the second failed its cleanup)."""
    from airflow.sdk import Asset

    from include.backup.factory import build_backup_dag

    for schedule in CONFIG.schedules:
        dag = build_backup_dag(CONFIG, schedule, tmp_path / "c.yaml")
        assert dag.get_task("cleanup").outlets == [Asset(f"backup://{schedule.source}")]
        assert dag.get_task("dump").outlets == []


def test_backup_event_names_the_backup_sizes_and_targets(env: Path) -> None:  # noqa: F811
    meta = tasks.BackupMeta.from_xcom(run_backup())
    uri, extra = tasks.backup_event(tasks.load_config(), meta, "docs_full")
    assert uri == "backup://docs"
    assert extra["backup_id"] == meta.backup_id and extra["targets"] == ["disk1", "disk2"]
    assert extra["stored_size"] == meta.stored_size > 0 and extra["raw_size"] == meta.raw_size > 0
    json.dumps(extra)  # an asset event's extra is JSON


# --- backup ids and the manifest -------------------------------------------------------


def test_backup_id_is_named_by_the_run_start_not_the_logical_date() -> None:
    logical = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # unpaused at 09:41: the 02:00 interval runs now
    started = datetime(2026, 12, 1, 9, 41, 7, tzinfo=UTC)
    ctx = {"logical_date": logical, "dag_run": {"start_date": started, "run_after": logical}}
    assert tasks.run_started_at(ctx) == started
    assert "T094107Z" in tasks.make_backup_id("s", tasks.run_started_at(ctx), "scheduled__x")
    # no start date (a context without a run): run_after, then the logical date
    assert tasks.run_started_at({"dag_run": {"run_after": logical.isoformat()}}) == logical
    assert tasks.run_started_at({"logical_date": logical}) == logical
    assert tasks.run_started_at({}) is None


def test_manifest_keeps_the_run_and_logical_date_and_old_manifests_sign_the_same(env: Path) -> None:  # noqa: F811
    logical = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    config = tasks.load_config()
    schedule = tasks.resolve_schedule(config, "docs_full", "dump")
    started = datetime.now(UTC).replace(microsecond=0)
    meta = tasks.dump(
        config, schedule, "scheduled__x", started, logical_date=logical, dag_run_id="scheduled__x"
    )
    assert started.strftime("%Y%m%dT%H%M%SZ") in meta.backup_id
    manifest = Manifest.from_json((meta.stage / tasks.DRAFT_NAME).read_text())
    assert manifest.dag_run_id == "scheduled__x" and manifest.logical_date == logical
    # a manifest without the fields (the CLI's, or an old one): same JSON and signed bytes as before
    old = manifest.model_copy(update={"dag_run_id": None, "logical_date": None})
    doc = json.loads(old.to_json())
    assert "dag_run_id" not in doc and "logical_date" not in doc
    assert b"dag_run_id" not in signed_bytes(old)
    assert Manifest.from_json(old.to_json()) == old


# --- /dr/api/backups -------------------------------------------------------------------


def test_backups_api_type_filter_and_run_id(env: Path) -> None:  # noqa: F811
    # the run's fields come from the dump task in a DAG run; here through dump() itself
    config = tasks.load_config()
    schedule = tasks.resolve_schedule(config, "docs_full", "dump")
    meta = tasks.dump(config, schedule, "manual__r2", datetime.now(UTC) + timedelta(seconds=2),
                      dag_run_id="manual__r2").to_xcom()
    meta = tasks.run_checksum(tasks.run_encrypt(meta))
    for t in ("disk1", "disk2"):
        tasks.run_upload(meta, t)
        tasks.run_verify(meta, t)
    client = TestClient(create_app(monitor=Monitor(ttl=0)))
    r = client.get("/api/backups", params={"type": "BOGUS"})
    assert r.status_code == 400
    assert r.json()["detail"] == "type: give one of FULL, INCREMENTAL, TRANSACTION_LOG, SCHEMA, got 'BOGUS'"
    rows = client.get("/api/backups", params={"type": "full"}).json()["backups"]
    assert [r["dag_run_id"] for r in rows if r["backup_id"] == meta["backup_id"]] == ["manual__r2"]
    assert client.get("/api/backups", params={"type": "SCHEMA"}).json()["backups"] == []
