"""The DR page as a cockpit, on real backups at two local targets: history charts per
source (30/90 days) with the objectives as lines, actions with their params filled in, the
last failover and its data-loss window, and the page (and JSON) of one backup.

Backups are made by the backup steps themselves (include.backup.testing.run_backup); to
give them a history, their manifests are then moved into the past and re-signed with the
key ring (catalog/signing.sign), and the catalog index is rebuilt from them, as it is for
a target written before the index existed. DR test reports and the failover's audit record
are written by the project's own writers (dr/reports.write_report, audit.note).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from include.backup import audit
from include.backup.catalog.manifest import MANIFEST_NAME, Manifest
from include.backup.catalog.signing import sign
from include.backup.config.loader import load_config
from include.backup.dr.cockpit.actions import failover_window
from include.backup.dr.cockpit.svg import Series, chart
from include.backup.dr.reports import DRTestReport, write_report
from include.backup.dr.web import Monitor, create_app
from include.backup.keys import KeyRing
from include.backup.targets import build_target
from include.backup.testing import run_backup

pytestmark = [pytest.mark.integration]

HOSTILE = "<script>alert('x')</script> & \"quoted\""


def write_config(tmp: Path) -> Path:
    data = tmp / "data/docs"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n" * 400)
    (data / "b.txt").write_text("beta\n" * 900)
    config = tmp / "backup_config.yaml"
    config.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp}/staging
        dr:
          rpo_hours: 2
          rto_hours: 1
          test_frequency_days: 30
          notification_emails: [oncall@example.com]
          drills:
            docs: {{into: {tmp}/drill-scratch}}
        targets:
          disk1: {{type: local, path: {tmp}/t1}}
          disk2: {{type: local, path: {tmp}/t2, offsite: true}}
        sources:
          docs: {{type: files, paths: [{data}]}}
          spare: {{type: files, paths: [{tmp}/data/spare]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk1, disk2]}}
          - {{name: spare_full, source: spare, type: FULL, cron: "@daily", targets: [disk1]}}
        """)
    )
    return config


def move_into_past(tmp: Path, ring: KeyRing, backup_id: str, started: datetime | None, run_id: str) -> None:
    """Give a stored backup another start (and the DAG run id a DAG run records), at both
    targets, re-signed; the index is rebuilt from the manifests on the next read."""
    for path in tmp.glob(f"t*/docs/{backup_id}/{MANIFEST_NAME}"):
        m = Manifest.from_json(path.read_bytes())
        update: dict[str, Any] = {"dag_run_id": run_id}
        if started is not None:
            shift = started - m.started_at
            update |= {
                "started_at": started,
                "finished_at": started + timedelta(seconds=42),
                "verification": {
                    n: v.model_copy(update={"verified_at": v.verified_at + shift})
                    for n, v in m.verification.items()
                },
            }
        path.write_bytes(sign(m.model_copy(update=update), *ring.active()).to_json())
        shutil.rmtree(path.parent.parent / "_catalog", ignore_errors=True)


@pytest.fixture
def cockpit_env(tmp_path, monkeypatch):
    config_path = write_config(tmp_path)
    monkeypatch.setenv("BACKUP_CONFIG", str(config_path))
    ring = KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    when = [today - timedelta(days=20), today - timedelta(days=10), today - timedelta(days=3), None]
    ids = []
    for i, started in enumerate(when):
        meta = run_backup("docs_full", run_id=f"run{i}")
        move_into_past(tmp_path, ring, meta["backup_id"], started, f"scheduled__run{i}")
        ids.append(meta["backup_id"])
    config = load_config(config_path).config
    ok_at, slow_at = today - timedelta(days=5), today - timedelta(days=2)
    reports = [
        DRTestReport(test_id="dr-ok", test_type="RESTORE_TEST", source="docs", success=True,
                     started_at=ok_at, finished_at=ok_at + timedelta(seconds=1800),
                     measured_rto_seconds=1800.0, backup_id=ids[1]),
        DRTestReport(test_id="dr-slow", test_type="RECOVERY_TIME_TEST", source="docs", success=False,
                     started_at=slow_at, finished_at=slow_at + timedelta(seconds=5400),
                     measured_rto_seconds=5400.0, backup_id=ids[2], issues=[HOSTILE]),
    ]  # fmt: skip
    for name in ("disk1", "disk2"):
        target = build_target(name, config.targets[name])
        for r in reports:
            write_report(target, r)
    outcomes = {"assess": {"backup_id": ids[3], "age_seconds": 7.5}, "restore": {"backup_id": ids[3]}}
    problems = audit.note(config, "failover", source="docs", result="ok", reason=HOSTILE,
                          run_id="manual__failover1", extra=failover_window(outcomes))  # fmt: skip
    assert problems == []
    return tmp_path, ids


def client() -> TestClient:
    return TestClient(create_app(monitor=Monitor(ttl=0)))


def charts_of(page: str, source: str) -> list[str]:
    block = page[page.index(f"id='history-{source}'") :]
    return re.findall(r"<svg class='chart'.*?</svg>", block)[:4]


def test_history_charts_have_a_point_per_day_and_backup_and_the_objectives(cockpit_env):
    _, ids = cockpit_env
    c = client()
    page = c.get("/").text
    rpo, stored, durations, rto = charts_of(page, "docs")
    # RPO age: one point a day from the first backup's day (20 days ago) to today: 21.
    assert "RPO age (worst of each day), 30 days" in rpo
    assert len(re.findall(r"<circle class='pt'", rpo)) == 21
    objective = re.search(r"<line class='objective'[^>]*data-value='([0-9.]+)'", rpo)
    assert objective and float(objective.group(1)) == 2  # dr.rpo_hours
    assert "RPO objective 2 h" in rpo
    assert "fill='#c0262d'" in rpo  # days older than the objective are drawn red
    # Stored bytes: one line per target, one point a day.
    assert re.findall(r"data-series='(\w+)' data-points='(\d+)'", stored) == [
        ("disk1", "30"),
        ("disk2", "30"),
    ]
    # Duration: one point per backup in the period.
    assert len(re.findall(r"<circle class='pt'", durations)) == 4
    # DR test RTO: one bar per report, against the 1 h objective (60 min); the slow one red.
    bars = re.findall(r"<rect class='bar'[^>]*fill='(#[0-9a-f]+)'><title>([^<]*)</title>", rto)
    assert [t.split(" (")[0] for _, t in bars] == ["dr-ok", "dr-slow"]
    assert bars[0][0] != "#c0262d" and bars[1][0] == "#c0262d"
    assert "data-value='60'" in rto and "RTO objective 1 h" in rto
    # A source with no backup gets empty charts that say so, not an error.
    assert "no data in this period" in charts_of(page, "spare")[0]

    long = c.get("/?days=90").text
    rpo90, stored90, *_ = charts_of(long, "docs")
    assert "90 days" in rpo90 and len(re.findall(r"<circle class='pt'", rpo90)) == 21
    assert re.findall(r"data-points='(\d+)'", stored90) == ["90", "90"]
    bad = c.get("/?days=7")
    assert bad.status_code == 422 and "days must be one of 30, 90" in bad.json()["detail"]


def test_a_refreshed_overview_reads_each_target_once_and_shows_one_moment(cockpit_env, monkeypatch):
    """``?refresh=1`` reads every target's catalog once for the figures, the history and
    the actions together (it read them three times), and a backup published since the last
    refresh shows in the figures and in the history alike."""
    from include.backup.catalog import index

    reads: list[str] = []
    read_state = index.read_state

    def counted(target: Any, source: str, keys: Any) -> Any:
        reads.append(target.name)
        return read_state(target, source, keys)

    monkeypatch.setattr(index, "read_state", counted)
    c = client()
    c.get("/?refresh=1")
    assert sorted(reads) == ["disk1", "disk2"]

    newest = run_backup("docs_full", run_id="run-new")["backup_id"]
    reads.clear()
    page = html.unescape(c.get("/?refresh=1").text)
    assert sorted(reads) == ["disk1", "disk2"]
    assert newest in page[: page.index("id='history-docs'")]  # the figures' last backup
    assert len(re.findall(r"<circle class='pt'", charts_of(page, "docs")[2])) == 5  # durations: 4 + 1


def test_actions_link_to_the_trigger_forms_with_params_and_the_latest_run(cockpit_env):
    tmp, ids = cockpit_env
    c = client()
    page = c.get("/").text
    row = page[page.index("id='actions-docs'") :]
    assert "href='/dags/restore'" in row and "href='/dags/dr_test'" in row
    assert "href='/dags/backup__docs_full/runs/scheduled__run3'" in row
    assert "href='/source/docs'" in row
    # The last failover and its measured data-loss window, from the audit trail.
    failover = page[page.index("id='failover-docs'") :].split("</div>")[0]
    assert "data loss 7.5 s" in failover and f"age of the restored backup {ids[3]}" in failover
    assert "no failover in the last 90 days" in page[page.index("id='failover-spare'") :].split("</div>")[0]

    src = c.get("/source/docs").text
    confs = [json.loads(html.unescape(c)) for c in re.findall(r"<pre class='conf'>(.*?)</pre>", src)]
    assert confs[0] == {"source": "docs", "backup_id": ids[3], "into": ""}
    assert confs[1] == {
        "test_type": "RESTORE_TEST",
        "source": "docs",
        "target_environment": f"{tmp}/drill-scratch",
    }
    rest = html.unescape(re.findall(r"<pre class='rest-call'>(.*?)</pre>", src)[0])
    assert rest.startswith("curl -X POST http://testserver/api/v2/dags/restore/dagRuns")
    assert json.loads(rest.split("-d ", 1)[1].strip("'"))["conf"]["backup_id"] == ids[3]
    assert "RTO_MISSED" in src  # the slow drill is a violation of this source
    assert src.count("/backup/docs/") >= 4  # every backup links to its page
    assert c.get("/source/nope").status_code == 404


def test_backup_page_and_json_show_manifest_lineage_drills_and_audit(cockpit_env):
    _, ids = cockpit_env
    c = client()
    body = c.get(f"/api/backups/docs/{ids[2]}").json()
    assert body["manifest"]["type"] == "FULL" and body["manifest"]["signed_with"] == "k1"
    assert body["manifest"]["dag_run_id"] == "scheduled__run2"
    assert [x["backup_id"] for x in body["lineage"]["chain"]] == [ids[2]]
    assert set(body["verification"]) == {"disk1", "disk2"}
    assert all(v["ok"] is True for v in body["verification"].values())
    assert [d["test_id"] for d in body["drills"]] == ["dr-slow"]
    backups_audited = [r for r in body["audit"] if r["action"] == "backup"]
    assert sorted(r["target"] for r in backups_audited) == ["disk1", "disk2"]
    assert "wrapped_key" not in json.dumps(body) and "mac" not in body["manifest"]

    page = c.get(f"/backup/docs/{ids[2]}").text
    assert f"<h1>Backup <code>{ids[2]}</code></h1>" in page
    assert "<dt>Signed with</dt><dd>k1</dd>" in page and "<dt>DAG run</dt><dd>scheduled__run2</dd>" in page
    drills = page[page.index("id='drills'") :].split("</table>")[0]
    assert "<code>dr-slow</code>" in drills and "<td>1.5 h</td>" in drills  # its measured RTO
    # Untrusted text (a report's issue) is escaped, never markup.
    assert "<script>" not in page and "&lt;script&gt;alert(" in page
    assert c.get("/backup/docs/nope").status_code == 404
    assert "no target holds backup 'nope'" in c.get("/api/backups/docs/nope").json()["detail"]


def test_overview_escapes_what_it_did_not_write():
    svg = chart(HOSTILE, [Series(HOSTILE, [(datetime(2026, 1, 1, tzinfo=UTC), 1.0)], labels=[HOSTILE])],
                start=datetime(2025, 12, 1, tzinfo=UTC), end=datetime(2026, 1, 2, tzinfo=UTC),
                objective=0.5, objective_label=HOSTILE)  # fmt: skip
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "data-series='&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;'" in svg


def test_failover_window_is_the_standby_lag_after_a_promotion_else_the_backup_age():
    promoted = {
        "assess": {"backup_id": "b1", "age_seconds": 3600.0},
        "restore": {"skipped": True, "standby_conn_id": "standby", "switch": {"replay_lag_seconds": 0.42}},
    }
    assert failover_window(promoted)["data_loss_seconds"] == 0.42
    assert failover_window(promoted)["data_loss_basis"] == "standby replay lag before the promotion"
    restored = {"assess": {"backup_id": "b1", "age_seconds": 3600.0}, "restore": {"backup_id": "b1"}}
    assert failover_window(restored) == {
        "data_loss_seconds": 3600.0,
        "data_loss_basis": "age of the restored backup b1",
    }
    assert failover_window({"assess": None, "restore": None}) == {}


def test_audit_data_is_left_out_for_users_who_may_not_read_the_trail(cockpit_env):
    _, ids = cockpit_env
    app = create_app(monitor=Monitor(ttl=0))

    @app.middleware("http")
    async def not_an_auditor(request, call_next):  # what dr/web_auth.py decides for such a user
        request.state.dr_audit_allowed = False
        return await call_next(request)

    c = TestClient(app)
    body = c.get(f"/api/backups/docs/{ids[2]}").json()
    assert body["audit"] == [] and "dr.audit_roles" in body["audit_hidden"]
    assert [d["test_id"] for d in body["drills"]] == ["dr-slow"]  # DR figures stay
    page = c.get(f"/backup/docs/{ids[2]}").text
    assert "shown only to the roles of dr.audit_roles" in page
    failover = c.get("/").text.split("id='failover-docs'>")[1].split("</div>")[0]
    assert failover.startswith("last failover ") and " by " not in failover and "data loss 7.5 s" in failover
    own = client().get("/").text.split("id='failover-docs'>")[1].split("</div>")[0]
    assert " by " in own  # an auditor (here: no auth at all) sees who did it
