"""The DR cockpit in headless Chromium (Debian's /usr/bin/chromium driven by playwright),
served by the real Airflow api-server of the e2e deployment (the plugin mounts it at /dr,
behind Airflow's auth: the browser carries the UI's ``_token`` cookie).

A real backup of ``e2e_files`` is made into the deployment's targets by the backup steps
(include.backup.testing.run_backup, with the deployment's config and key), and a DR test
report naming it is written next to it; the deployment's other sources have no verified
backup, so they miss their RPO. The test reads what a person would read on the overview,
on the page of a source in violation and on the backup's page, and keeps a 1280x900
screenshot of each (in $DR_COCKPIT_ARTIFACTS, else pytest's tmp; the paths are printed).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from include.backup.config.loader import load_config
from include.backup.dr.reports import DRTestReport, write_report
from include.backup.targets import build_target
from include.backup.testing import run_backup
from tests.e2e.conftest import FILES_SCHEDULE, KEY_ID

pytestmark = [pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture
def cockpit_data(airflow_deployment, tmp_path, monkeypatch):
    """A verified backup of e2e_files at both targets and a DR test report that used it."""
    dep = airflow_deployment
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(json.dumps({"keys": {KEY_ID: dep.key_material}, "active": KEY_ID}))
    keyfile.chmod(0o600)
    monkeypatch.setenv("BACKUP_CONFIG", str(dep.config_path))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(keyfile))
    meta = run_backup(FILES_SCHEDULE)
    config = load_config(dep.config_path).config
    started = datetime.now(UTC) - timedelta(hours=1)
    report = DRTestReport(
        test_id="dr-browser-1", test_type="RESTORE_TEST", source="e2e_files", success=True,
        started_at=started, finished_at=started + timedelta(seconds=840), measured_rto_seconds=840.0,
        backup_id=meta["backup_id"], notes="restored into a scratch directory",
    )  # fmt: skip
    for name in ("local", "offsite"):
        write_report(build_target(name, config.targets[name]), report)
    return meta["backup_id"]


def artifacts_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("DR_COCKPIT_ARTIFACTS") or tmp_path / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_cockpit_in_headless_chromium(airflow_deployment, cockpit_data, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "needs Debian's chromium: make system-deps installs it"
    dep, backup_id = airflow_deployment, cockpit_data
    out = artifacts_dir(tmp_path)
    host = urlsplit(dep.url).hostname
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            # Logged in as the UI is: its JWT in the _token cookie.
            context.add_cookies([{"name": "_token", "value": dep.token(), "domain": host, "path": "/"}])
            page = context.new_page()

            # The overview: figures, actions per source, the history charts.
            resp = page.goto(f"{dep.url}/dr/?refresh=1")
            assert resp is not None and resp.status == 200, resp and resp.text()[:500]
            assert page.locator("h1").inner_text() == "DR Management"
            files_row = page.locator("#source-e2e_files")
            assert backup_id in files_row.inner_text()
            actions = page.locator("#actions-e2e_files")
            assert actions.locator("a.restore").inner_text() == "restore…"
            assert actions.locator("a.restore").get_attribute("href") == "/dags/restore"
            assert page.locator("#failover-e2e_files").inner_text() == "no failover in the last 90 days"
            titles = page.locator("#history-e2e_files svg.chart text.t").all_text_contents()
            assert titles == [
                "RPO age (worst of each day), 30 days",
                "Stored bytes per target, 30 days",
                "Backup duration, 30 days",
                "DR test RTO, 30 days",
            ]
            assert page.locator("#history-e2e_files svg.chart text.objective-label").all_text_contents() == [
                "RPO objective 1 h",
                "RTO objective 4 h",
            ]
            shot = out / "dr-cockpit-overview.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")

            page.goto(f"{dep.url}/dr/#history-e2e_files")  # the anchor scrolls the charts into view
            rpo_points = page.locator("#history-e2e_files svg.chart").first.locator("circle.pt title")
            assert rpo_points.count() == 1  # one day with a backup: today
            shot = out / "dr-cockpit-history.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")

            # A source in violation: the first row whose Violations cell lists one.
            violated = [
                row.get_attribute("id").removeprefix("source-")
                for row in page.locator("#sources tr[id^='source-']").all()
                if row.locator("td.violations li.bad").count()
            ]
            assert violated, "the deployment's sources without a backup miss their RPO"
            source = "e2e_gone" if "e2e_gone" in violated else violated[0]
            resp = page.goto(f"{dep.url}/dr/source/{source}")
            assert resp is not None and resp.status == 200
            banner = page.locator("#violations").inner_text()
            assert banner.startswith("Violations:") and "RPO_MISSED" in banner
            assert page.locator("h1").inner_text() == source
            assert "curl -X POST " in page.locator("#how-restore pre.rest-call").text_content()
            assert f'"source": "{source}"' in page.locator("#how-restore pre.conf").text_content()
            shot = out / "dr-cockpit-source-violation.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")

            # The backup's page, reached from the e2e_files source page.
            page.goto(f"{dep.url}/dr/source/e2e_files")
            page.locator(f"#backups a:has-text('{backup_id}')").click()
            page.wait_for_url(re.compile(rf".*/dr/backup/e2e_files/{re.escape(backup_id)}$"))
            assert page.locator("h1").inner_text() == f"Backup {backup_id}"
            fields = page.locator("#manifest").inner_text()
            assert "Signed with" in fields and KEY_ID in fields and "FULL" in fields
            verification = page.locator("#verification").inner_text()
            assert "local" in verification and "offsite" in verification and "FAILED" not in verification
            assert "dr-browser-1" in page.locator("#drills").inner_text()
            assert "backup" in page.locator("#backup-audit").inner_text()  # the upload's records
            shot = out / "dr-cockpit-backup.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    for name in ("overview", "history", "source-violation", "backup"):
        data = (out / f"dr-cockpit-{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
