"""The DR Management page in a real browser (Debian's headless Chromium) served by uvicorn,
and the plugin inside Airflow's own api-server app (plugins folder, auth manager, SQLite
metadata in a temporary Airflow home)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.backup.dr.web import Monitor, create_app
from include.backup.keys import KeyRing
from tests.unit.test_dr_web import age_backup, run_backup, write_config

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

pytestmark = [pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def backups(tmp_path, monkeypatch):
    """A config in tmp_path with one fresh verified backup of ``docs`` at two LocalTargets,
    and an older one."""
    config = write_config(tmp_path)
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    old = run_backup("run1")
    age_backup(tmp_path, old["backup_id"], hours=26)
    fresh = run_backup("run2")
    return tmp_path, fresh


@pytest.fixture
def served(backups) -> Iterator[str]:
    """The app on 127.0.0.1:<free port> by uvicorn in a thread; yields the page URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(monitor=Monitor(ttl=0)), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def chromium(args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_page_renders_in_headless_chromium(served, backups, tmp_path):
    # No skip: scripts/install-test-services.sh installs chromium; a missing one must fail.
    assert CHROMIUM is not None, (
        "needs Debian's chromium: apt-get install -y --no-install-recommends chromium "
        "(make test runs scripts/install-test-services.sh, which does)"
    )
    tmp, fresh = backups
    dom = chromium(["--dump-dom", served], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "<h1>DR Management</h1>" in html
    assert fresh["backup_id"] in html
    assert 'id="source-docs"' in html
    assert 'class="rpo ok"' in html  # the fresh backup is within the 2 h RPO
    assert "2 of 2 verified (100%)" in html
    assert "disk1: " in html and "disk2: " in html
    assert "DR_TEST_OVERDUE" in html  # never tested
    assert 'id="target-disk1"' in html and "threshold" in html

    shot = Path(os.environ.get("DR_PAGE_SCREENSHOT") or tmp_path / "dr-page.png")
    res = chromium(["--screenshot=" + str(shot), "--window-size=1280,900", served], tmp_path / "profile-shot")
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


PLUGIN_PROBE = textwrap.dedent("""
    import json
    from airflow import plugins_manager
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    apps, _ = plugins_manager.get_fastapi_plugins()
    external_views, _ = plugins_manager._get_ui_plugins()
    out = {
        "fastapi_apps": [{"url_prefix": a["url_prefix"], "name": a["name"]} for a in apps],
        "external_views": external_views,
    }
    app = create_app()
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
    c = TestClient(app)
    def get(path, **kw):
        r = c.get(path, **kw)
        return {"status": r.status_code, "body": r.text}
    out["anonymous"] = get("/dr/api/metrics")
    out["anonymous_page"] = get("/dr/", headers={"accept": "text/html"})
    out["bad_token"] = get("/dr/api/metrics", headers={"Authorization": "Bearer not-a-jwt"})
    out["bearer"] = get("/dr/api/metrics", headers={"Authorization": "Bearer " + token})
    out["cookie_page"] = get("/dr/", cookies={"_token": token})
    out["health"] = get("/dr/api/health")
    out["openapi_anonymous"] = {p: get("/dr" + p)["status"] for p in ("/openapi.json", "/docs", "/redoc")}
    out["openapi_schema_anonymous"] = get("/dr/api/openapi.json")
    out["openapi_schema_bearer"] = get("/dr/api/openapi.json", headers={"Authorization": "Bearer " + token})
    out["end_date_overflow"] = get(
        "/dr/api/backups", params={"end_date": "9999-12-31"}, headers={"Authorization": "Bearer " + token}
    )
    out["plugins_api"] = get("/api/v2/plugins", headers={"Authorization": "Bearer " + token})
    print("PROBE:" + json.dumps(out))
""")


@pytest.mark.airflow
def test_plugin_is_mounted_in_the_api_server_behind_airflow_auth(backups, tmp_path):
    tmp, fresh = backups
    home = tmp_path / "airflow-home"
    dags = tmp_path / "no-dags"
    dags.mkdir()
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
    )
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    airflow = str(Path(sys.executable).with_name("airflow"))
    mig = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert mig.returncode == 0, mig.stderr[-3000:]
    probe = subprocess.run(
        [sys.executable, "-c", PLUGIN_PROBE],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    line = next(ln for ln in probe.stdout.splitlines() if ln.startswith("PROBE:"))
    out = json.loads(line[len("PROBE:") :])

    assert out["fastapi_apps"] == [{"url_prefix": "/dr", "name": "DR Management"}]
    assert out["external_views"] == [
        {"name": "DR Management", "href": "/dr/", "url_route": "dr-management", "destination": "nav"}
    ]
    # Airflow mounts plugin apps without auth; ours brings Airflow's own.
    assert out["anonymous"]["status"] == 401
    page = out["anonymous_page"]
    assert page["status"] == 401 and "log in to the Airflow UI" in page["body"]
    assert out["bad_token"]["status"] == 403
    assert out["health"] == {"status": 200, "body": '{"status":"ok"}'}
    assert out["bearer"]["status"] == 200
    metrics = json.loads(out["bearer"]["body"])
    assert metrics["sources"]["docs"]["last_good_backup_id"] == fresh["backup_id"]
    assert metrics["sources"]["docs"]["rpo_ok"] is True
    assert out["cookie_page"]["status"] == 200 and fresh["backup_id"] in out["cookie_page"]["body"]
    # The OpenAPI schema and FastAPI's docs pages are not served outside Airflow's auth.
    assert out["openapi_anonymous"] == {"/openapi.json": 404, "/docs": 404, "/redoc": 404}
    assert out["openapi_schema_anonymous"]["status"] == 401
    assert out["openapi_schema_bearer"]["status"] == 200
    assert "/api/backups" in json.loads(out["openapi_schema_bearer"]["body"])["paths"]
    # A date out of range is the caller's error (422 naming it), not a 500.
    overflow = out["end_date_overflow"]
    assert overflow["status"] == 422 and json.loads(overflow["body"])["detail"].startswith("end_date:")
    plugins = json.loads(out["plugins_api"]["body"])["plugins"]
    assert [p["name"] for p in plugins] == ["dr_management"]
