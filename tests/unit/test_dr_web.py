"""The DR Management app (include/backup/dr/web.py) through FastAPI's TestClient, on a real
config in tmp_path whose LocalTargets hold backups made by the real pipeline."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from include.backup import tasks
from include.backup.catalog.manifest import MANIFEST_NAME
from include.backup.config.loader import load_config
from include.backup.dr.reports import DRTestReport, write_report
from include.backup.dr.web import Monitor, _logical_date, create_app
from include.backup.keys import KeyRing
from include.backup.targets import build_target

SECRET_PASSWORD = "s3cr3t-Pa55word-xyz"


def write_config(tmp_path: Path, *, extra_target: str = "") -> Path:
    data = tmp_path / "data"
    (data / "docs").mkdir(parents=True, exist_ok=True)
    (data / "docs/a.txt").write_text("alpha\n" * 500)
    (data / "docs/b.bin").write_bytes(os.urandom(50_000))
    config = tmp_path / "backup_config.yaml"
    config.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        dr: {{rpo_hours: 2, rto_hours: 1, test_frequency_days: 30, notification_emails: [oncall@example.com]}}
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
          disk2: {{type: local, path: {tmp_path}/t2, offsite: true}}
        {extra_target}
        sources:
          docs: {{type: files, paths: [{data}/docs]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk1, disk2]}}
        """)
    )
    return config


@pytest.fixture
def env(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return tmp_path


def run_backup(run_id: str = "run1") -> dict:
    meta = tasks.run_dump("docs_full", run_id, datetime.now(UTC))
    meta = tasks.run_checksum(tasks.run_encrypt(meta))
    for t in ("disk1", "disk2"):
        tasks.run_upload(meta, t)
    for t in ("disk1", "disk2"):
        tasks.run_verify(meta, t)
    tasks.run_cleanup(meta, "docs_full")
    return meta


def age_backup(tmp: Path, backup_id: str, hours: float) -> None:
    """Move a stored backup's start (and end) ``hours`` into the past, at every target."""
    for manifest in tmp.glob(f"t*/docs/{backup_id}/{MANIFEST_NAME}"):
        doc = json.loads(manifest.read_text())
        started = datetime.now(UTC) - timedelta(hours=hours)
        doc["started_at"] = started.isoformat()
        doc["finished_at"] = (started + timedelta(seconds=42)).isoformat()
        manifest.write_text(json.dumps(doc))
        # The catalog index holds the times as published: drop it, the next read rebuilds it.
        shutil.rmtree(manifest.parent.parent / "_catalog", ignore_errors=True)


def client() -> TestClient:
    return TestClient(create_app(monitor=Monitor(ttl=0)))


def test_metrics_show_a_fresh_backup_within_the_rpo(env):
    meta = run_backup()
    r = client().get("/api/metrics")
    assert r.status_code == 200
    body = r.json()
    docs = body["sources"]["docs"]
    assert docs["last_good_backup_id"] == meta["backup_id"]
    assert docs["last_good_backup_age_hours"] < docs["rpo_hours"] == 2
    assert docs["rpo_ok"] and docs["success"]
    assert docs["verified_count"] == docs["backups_count"] == 1
    assert set(docs["stored_bytes_per_target"]) == {"disk1", "disk2"}
    assert all(v > 0 for v in docs["stored_bytes_per_target"].values())
    assert docs["avg_duration_seconds"] is not None
    assert body["targets"]["disk1"]["reachable"] and body["targets"]["disk1"]["free_bytes"] > 0
    summary = body["summary"]
    assert summary["sources_within_rpo"] == ["docs"]
    assert summary["rpo_violations"] == []
    assert summary["success_rate"] == 1.0
    assert summary["rto_hours"] == 1 and summary["rpo_hours"] == 2
    # never a DR test: overdue, reported as a violation
    assert summary["dr_tests_overdue"] == ["docs"]
    assert client().get("/api/health").json() == {"status": "ok"}


def test_old_backup_is_an_rpo_violation_on_page_and_api(env):
    meta = run_backup()
    age_backup(env, meta["backup_id"], hours=5)
    c = client()
    body = c.get("/api/metrics").json()
    docs = body["sources"]["docs"]
    assert docs["last_good_backup_age_hours"] > 4.9 and not docs["rpo_ok"]
    assert body["summary"]["rpo_violations"] == ["docs"]
    kinds = {(a["kind"], a["subject"]) for a in body["alerts"]}
    assert ("RPO_MISSED", "docs") in kinds
    assert docs["avg_duration_seconds"] == 42.0

    v = c.get("/api/metrics/violations").json()
    assert v["rpo_violations"] == ["docs"]

    page = c.get("/").text
    row = page[page.index("id='source-docs'") :]
    row = row[: row.index("</tr>")]
    assert "rpo bad" in row and "5.0 h" in row and "RPO_MISSED" in row
    assert meta["backup_id"] in row


def test_page_shows_the_figures(env):
    meta = run_backup()
    # a DR test that passed but measured an RTO above the 1 h objective
    report = DRTestReport(
        test_id="dr-test-1",
        test_type="RESTORE_TEST",
        source="docs",
        target_environment="staging_fs",
        started_at=datetime.now(UTC) - timedelta(hours=3),
        finished_at=datetime.now(UTC) - timedelta(hours=1),
        success=True,
        measured_rto_seconds=7200.0,
        measured_rpo_seconds=1800.0,
        issues=["smoke <query> slow"],
        notes="scheduled drill: no successful DR test on record",
    )
    config = load_config().config
    write_report(build_target("disk1", config.targets["disk1"]), report)

    r = client().get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    body = client().get("/api/metrics").json()
    docs = body["sources"]["docs"]
    assert meta["backup_id"] in page
    assert "class='rpo ok'" in page
    assert "1 of 1 verified (100%)" in page
    assert "disk1: " in page and "disk2: " in page
    from include.backup.dr.monitor import fmt_bytes

    assert fmt_bytes(docs["stored_bytes_per_target"]["disk1"]) in page
    assert "RESTORE_TEST" in page and "passed" in page
    # The DR guide's test result: success, RTO, RPO, issues, notes (escaped).
    assert ", RPO 30 min" in page
    assert "issue: smoke &lt;query&gt; slow" in page
    assert "notes: scheduled drill: no successful DR test on record" in page
    assert docs["last_dr_test"]["issue_list"] == ["smoke <query> slow"]
    assert "RTO_MISSED: DR test dr-test-1 measured RTO 2.0 h, objective 1 h" in page
    assert body["summary"]["rto_violations"] == {
        "docs": "DR test dr-test-1 measured RTO 2.0 h, objective 1 h"
    }
    # next DR test due 30 days after the successful test
    due = datetime.fromisoformat(docs["next_dr_test_due"])
    assert abs((due - datetime.now(UTC)) - timedelta(days=30, hours=-1)) < timedelta(minutes=5)
    assert due.strftime("%Y-%m-%d") in page
    assert "id='target-disk1'" in page and "threshold" in page
    assert "docs_full" in page  # schedules table


@pytest.mark.parametrize("stored", ["2026-01-01T01:00:00+00:00", datetime(2026, 1, 1, 1, tzinfo=UTC)])
def test_a_logical_date_reads_as_text_or_datetime(stored: str | datetime) -> None:
    # the catalog index gives it as the text it stored, a parsed manifest as a datetime
    assert _logical_date(stored) == "2026-01-01T01:00:00+00:00" and _logical_date(None) is None


def test_backups_endpoint_filters(env):
    first = run_backup("run1")
    age_backup(env, first["backup_id"], hours=30)
    second = run_backup("run2")
    c = client()
    rows = c.get("/api/backups").json()["backups"]
    assert [r["backup_id"] for r in rows] == [first["backup_id"], second["backup_id"]]
    assert rows[0]["targets"] == ["disk1", "disk2"] and rows[0]["verified"]
    assert "encryption" not in rows[0] and "source_state" not in rows[0]
    latest = c.get("/api/backups", params={"type": "full", "latest": "true"}).json()["backups"]
    assert [r["backup_id"] for r in latest] == [second["backup_id"]]
    assert c.get("/api/backups", params={"source": "nope"}).json()["count"] == 0
    by_source = c.get("/api/backups", params={"source": "docs"})
    assert by_source.status_code == 200 and by_source.json()["count"] == 2, by_source.text
    today = datetime.now(UTC).date().isoformat()
    in_range = c.get("/api/backups", params={"start_date": today, "end_date": today}).json()
    assert second["backup_id"] in [r["backup_id"] for r in in_range["backups"]]
    period = c.get("/api/metrics", params={"start_date": "2000-01-01", "end_date": today}).json()["period"]
    assert period["sources"]["docs"]["backups"] >= 1
    assert c.get("/api/backups", params={"start_date": "yesterday"}).status_code == 422
    rate = c.get("/api/metrics/success-rate").json()
    assert rate["sources"]["docs"]["backups"] == 2 and rate["success_rate"] == 1.0


def test_broken_config_gives_error_banner_and_503(tmp_path, monkeypatch):
    bad = tmp_path / "backup_config.yaml"
    bad.write_text("targets: [this is: not valid\n")
    monkeypatch.setenv("BACKUP_CONFIG", str(bad))
    c = client()
    r = c.get("/")
    assert r.status_code == 200
    assert "class='banner error'" in r.text and "cannot load the backup config" in r.text
    m = c.get("/api/metrics")
    assert m.status_code == 503 and "cannot load the backup config" in m.json()["error"]
    assert c.get("/api/metrics/violations").status_code == 503
    assert c.get("/api/backups").status_code == 503
    monkeypatch.setenv("BACKUP_CONFIG", str(tmp_path / "missing.yaml"))
    assert c.get("/api/metrics").status_code == 503


def test_unreachable_target_is_shown_without_secrets(env, monkeypatch):
    run_backup()
    # an SFTP target whose connection does not exist / cannot be reached, with a password in
    # its URI: the page must name the target and never show the password
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_DEAD", f"sftp://backup:{SECRET_PASSWORD}@127.0.0.1:1/?timeout=2")
    config = write_config(env, extra_target="  dead: {type: sftp, conn_id: sftp_dead, path: /backups}")
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    c = client()
    page = c.get("/")
    assert page.status_code == 200
    assert "id='unreachable'" in page.text and "id='target-dead'" in page.text
    body = c.get("/api/metrics").json()
    assert body["targets"]["dead"]["reachable"] is False
    assert body["summary"]["targets_unreachable"] == ["dead"]
    assert ("TARGET_UNREACHABLE", "dead") in {(a["kind"], a["subject"]) for a in body["alerts"]}
    # the other targets still count
    assert body["sources"]["docs"]["rpo_ok"]
    for text in (page.text, json.dumps(body), c.get("/api/backups").text):
        assert SECRET_PASSWORD not in text
    key = json.loads((env / "keys.json").read_text())
    for material in _strings(key):
        if len(material) >= 32:
            assert material not in page.text and material not in json.dumps(body)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_results_are_cached(env):
    run_backup()
    calls = []
    from include.backup.factory import _load

    def counting_load():
        calls.append(1)
        return _load(None)

    c = TestClient(create_app(monitor=Monitor(ttl=60, load=counting_load)))
    c.get("/api/metrics")
    c.get("/")
    assert len(calls) == 1
    c.get("/api/metrics", params={"refresh": "1"})
    assert len(calls) == 2


def test_auth_required_when_asked(env):
    run_backup()
    c = TestClient(create_app(require_auth=True, monitor=Monitor(ttl=0)))
    assert c.get("/api/health").status_code == 200
    r = c.get("/api/metrics")
    assert r.status_code == 401
    page = c.get("/", headers={"accept": "text/html"})
    assert page.status_code == 401 and "log in to the Airflow UI" in page.text


@pytest.mark.parametrize("route", ["/api/backups", "/api/metrics"])
@pytest.mark.parametrize(
    "params,name",
    [
        ({"end_date": "9999-12-31"}, "end_date"),  # was a 500: OverflowError adding a day
        ({"end_date": "9999-12-31T23:59:59-05:00"}, "end_date"),  # overflows converting to UTC
        ({"start_date": "0001-01-01"}, "start_date"),
        ({"start_date": "2024-02-30"}, "start_date"),
        ({"end_date": "31/12/2024"}, "end_date"),
    ],
)
def test_bad_or_out_of_range_dates_are_422_naming_the_parameter(env, route, params, name):
    run_backup()
    c = TestClient(create_app(monitor=Monitor(ttl=0)), raise_server_exceptions=False)
    r = c.get(route, params=params)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"{name}:") and "1970-01-01 to 2999-12-31" in detail


def test_date_bounds_inside_the_range_still_filter(env):
    meta = run_backup()
    c = client()
    latest = {"start_date": "1970-01-01", "end_date": "2999-12-31"}
    assert [r["backup_id"] for r in c.get("/api/backups", params=latest).json()["backups"]] == [
        meta["backup_id"]
    ]
    # a datetime end is an inclusive instant; the backup started after this one
    past = c.get("/api/backups", params={"end_date": "2000-01-01T00:00:00+00:00"}).json()
    assert past["count"] == 0
    swapped = c.get("/api/backups", params={"start_date": "2024-02-02", "end_date": "2024-02-01"})
    assert swapped.status_code == 422 and "start_date" in swapped.json()["detail"]


def test_openapi_and_docs_are_not_served_without_auth(env):
    c = TestClient(create_app(require_auth=True, monitor=Monitor(ttl=0)))
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert c.get(path).status_code == 404, path
    assert c.get("/api/openapi.json").status_code == 401
    # without require_auth (tests, behind an authenticating proxy) the schema is there
    schema = client().get("/api/openapi.json").json()
    assert "/api/backups" in schema["paths"] and "/api/openapi.json" not in schema["paths"]
