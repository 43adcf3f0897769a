"""The demo's backup DAGs executed by Airflow (`airflow dags test`, SQLite metadata in a
temporary Airflow home) against a real PostgreSQL cluster, then restored with the CLI.

scripts/demo.py itself fails unless the restored database has the same row counts and
content checksums and the restored tree the same entries, modes and bytes; this test runs
it in temporary directories and checks what a user would look at afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.airflow]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, DEMO_DIR=str(base / "demo"), DEMO_AIRFLOW_HOME=str(base / "airflow"))
    env.pop("BACKUP_KEY_FILE", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env, cwd=ROOT, text=True, capture_output=True, timeout=900,
    )
    return proc, base


def test_demo_backs_up_and_restores_both_sources(demo_run):
    proc, base = demo_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "row counts and content checksums match" in proc.stdout
    assert "tree, modes and bytes match" in proc.stdout


def test_backups_at_target_are_complete_verified_and_encrypted(demo_run):
    proc, base = demo_run
    assert proc.returncode == 0
    manifests = []
    for target in ("backups", "offsite"):  # the demo's two targets: local and offsite
        found = sorted((base / "demo" / target).rglob("manifest.json"))
        assert len(found) == 3, f"{target}: {found}"
        manifests += found
    for path in manifests:
        manifest = json.loads(path.read_text())
        target = "local" if "/backups/" in str(path) else "offsite"
        assert manifest["verification"][target]["ok"] is True
        payload = path.parent / "payload"
        assert payload.stat().st_size == manifest["objects"][0]["size"]
        data = payload.read_bytes()
        # what is stored is ciphertext: no table or file content in clear
        assert b"event photo" not in data and b"COPY public" not in data
    # the key material never reached the manifests or the staging directory
    key = json.loads((base / "demo" / "keys.json").read_text())["keys"]["demo-key-1"]
    for path in manifests:
        assert key not in path.read_text()
    # Only the per-source lock files stay (.locks/, docs/concurrency.md).
    left = [p.name for p in (base / "demo" / "staging").iterdir() if p.name != ".locks"]
    assert left == [], "staging was not cleaned up"


def test_airflow_recorded_successful_runs(demo_run):
    proc, base = demo_run
    assert proc.returncode == 0
    import sqlite3

    db = sqlite3.connect(base / "airflow" / "airflow.db")
    rows = db.execute("select dag_id, state from dag_run").fetchall()
    assert sorted(rows) == [
        ("backup__demo_files_full", "success"),
        ("backup__demo_files_incr", "success"),
        ("backup__demo_pg_full", "success"),
        ("restore", "success"),
    ]
    mapped = db.execute(
        "select count(*) from task_instance where task_id in ('upload', 'verify') and map_index >= 0"
    ).fetchone()[0]
    assert mapped == 12  # 3 runs x 2 targets x (upload, verify)
