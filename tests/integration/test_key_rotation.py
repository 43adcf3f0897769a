"""Key rotation that rotates (docs/keys.md): ``keys rotate`` writes a new active key where
the key ring lives, ``keys retire`` moves every backup off the old key at every target
(payload re-encrypted, manifest re-signed) so that the key can be deleted, ``keys status``
says which backups use which key, and ``dr_monitor`` rotates by itself with
``encryption.auto_rotate``. Real files, a real local target, moto's S3 server, a real
Airflow metadata database (SQLite, through Airflow's own Connection model)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup import cli
from include.backup.catalog.catalog import list_backups
from include.backup.config.loader import load_config
from include.backup.dr.monitor import run_monitor
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.targets import build_target
from include.backup.testing import run_backup
from tests.integration.services import unique

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("disk", "s3")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: Any) -> dict[str, Path]:
    data = tmp_path / "data"
    (data / "docs/sub").mkdir(parents=True)
    (data / "docs/a.txt").write_text("alpha\n" * 1000)
    (data / "docs/sub/b.bin").write_bytes(os.urandom(300_000))
    config = tmp_path / "backup_config.yaml"
    config.write_text(textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        encryption: {{key_rotation_days: 30}}
        targets:
          disk: {{type: local, path: {tmp_path}/disk}}
          s3: {{type: s3, conn_id: {moto_server.conn_id}, bucket: {moto_server.bucket},
                prefix: {unique("keys")}/}}
        sources:
          docs: {{type: files, paths: ["{data}/docs"]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk, s3]}}
          - {{name: docs_inc, source: docs, type: INCREMENTAL, cron: "@hourly", targets: [disk, s3]}}
    """))  # fmt: skip
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return {"tmp": tmp_path, "data": data, "config": config, "keys": tmp_path / "keys.json"}


def keys_verb(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``python -m include.backup keys ARGS`` in this process: (exit code, stdout)."""
    code = cli.main(["keys", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def key_values(path: Path) -> set[str]:
    return set(json.loads(path.read_text())["keys"].values())


def status(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    code = cli.main(["keys", "status", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = out[out.index("\n{") + 1 :] if not out.startswith("{") else out  # after any log lines
    return {row["key_id"]: row for row in json.loads(doc)["keys"]}


def restore_tree(env: dict[str, Path], backup_id: str, target: str) -> dict[str, Any]:
    into = env["tmp"] / f"out-{backup_id}-{target}"
    config = load_config().config
    restore_backup(config, backup_id, str(into), keys=KeyRing.from_file(env["keys"]), target_name=target)
    return tree_digest(into / str(env["data"] / "docs").lstrip("/"))


def test_rotate_back_up_retire_killed_resumed_delete_and_restore_everything(env, capsys):
    """A FULL under k1, rotate, an INCREMENTAL under k2 (its parent under k1); a retire
    killed after putting a re-encrypted payload and before its manifest leaves k1 needed
    (deleting it is refused); the next retire finishes that backup and moves the rest, k1
    is deleted, and every backup restores from every target with k2 alone."""
    docs = env["data"] / "docs"
    full = run_backup("docs_full")["backup_id"]
    trees = {full: tree_digest(docs)}
    old_values = key_values(env["keys"])

    code, out = keys_verb(capsys, "rotate", "--key-id", "k2")
    assert code == 0, out
    assert "'k2' is now the active key" in out and "kept: k1" in out
    ring = KeyRing.from_file(env["keys"])
    assert (ring.active_id, ring.key_ids) == ("k2", ["k1", "k2"])
    assert stat.S_IMODE(env["keys"].stat().st_mode) == 0o600
    assert not any(v in out for v in key_values(env["keys"])), "a rotation that stored its key printed a key"

    (docs / "a.txt").write_text("changed after the rotation\n")
    inc = run_backup("docs_inc")["backup_id"]
    trees[inc] = tree_digest(docs)

    before = status(capsys)
    assert before["k1"]["by_target"] == {t: {"docs": 1} for t in TARGETS}
    assert before["k2"]["by_target"] == {t: {"docs": 1} for t in TARGETS}
    assert before["k2"]["active"] and not before["k1"]["active"]

    killed = subprocess.run(
        [sys.executable, "-m", "include.backup", "keys", "retire", "k1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BACKUP_FAULT": "rewrap.before-manifest:kill"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    code, out = keys_verb(capsys, "delete", "k1")
    assert code == 1 and "refusing to delete key 'k1'" in out
    assert all(f"docs/{full} at target '{t}'" in out for t in TARGETS), out
    assert "k1" in KeyRing.from_file(env["keys"])

    code, out = keys_verb(capsys, "retire", "k1")
    assert code == 0, out
    assert (
        "target 'disk': 0 backup(s) moved to key 'k2'" in out
        and "1 interrupted earlier and finished now" in out
    )
    assert "target 's3': 1 backup(s) moved to key 'k2'" in out, out
    assert "key 'k1' deleted from the key file" in out
    assert KeyRing.from_file(env["keys"]).key_ids == ["k2"]
    assert not key_values(env["keys"]) & old_values

    after = status(capsys)
    assert set(after) == {"k2"} and after["k2"]["by_target"] == {t: {"docs": 2} for t in TARGETS}
    config = load_config().config
    for t in TARGETS:
        held = list_backups(build_target(t, config.targets[t]))
        assert {(m.backup_id, m.encryption.key_id, m.auth.key_id) for m in held} == {
            (full, "k2", "k2"),
            (inc, "k2", "k2"),
        }
        # The incremental's restore replays its chain: both payloads decrypted with k2 alone.
        assert compare_trees(trees[inc], restore_tree(env, inc, t)) == [], t
    assert compare_trees(trees[full], restore_tree(env, full, "s3")) == []
    code, out = keys_verb(capsys, "retire", "k2")
    assert code == 1 and "active key" in out


def test_rotate_prints_what_to_set_when_the_ring_cannot_be_written(env, capsys, monkeypatch):
    """A key ring in an AIRFLOW_CONN_ variable cannot be written: the new key is printed,
    once, saying it was not stored; the old key never."""
    ring = KeyRing.from_file(env["keys"])
    monkeypatch.delenv("BACKUP_KEY_FILE")
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ENCRYPTION", json.dumps(ring.to_connection()))
    code, out = keys_verb(capsys, "rotate", "--key-id", "k2")
    assert code == 3
    assert "NOT STORED" in out and "AIRFLOW_CONN_BACKUP_ENCRYPTION" in out
    assert base64.b64encode(ring("k1")).decode() not in out
    new = [line for line in out.splitlines() if '"secret_keys"' in line]
    assert len(new) == 1 and len(base64.b64decode(new[0].split('"')[-2])) == 32
    assert '"active" to:   "k2"' in out


def test_rotate_and_delete_write_the_connection_in_airflows_metadata_database(tmp_path):
    """The ring in a connection stored in Airflow's metadata database (SQLite here, the
    connection table made by Airflow's own model) is rotated in place, through Airflow's
    Connection model; its extra keeps the keys under secret_keys, Fernet as configured."""
    script = textwrap.dedent("""
        import json, sys
        from airflow import settings
        from airflow.models.base import Base
        from airflow.models.connection import Connection
        from airflow.models.team import Team
        from airflow.utils.session import create_session
        from include.backup.keyops.store import ConnectionStore, remove_key, rotate
        from include.backup.keys import KeyRing

        Base.metadata.create_all(settings.engine, tables=[Team.__table__, Connection.__table__])
        ring = KeyRing({"k1": bytes(32)}, "k1")
        with create_session() as s:
            s.add(Connection(conn_id="backup_encryption", conn_type="generic",
                             extra=json.dumps(ring.to_connection_extra())))
        store = ConnectionStore("backup_encryption")
        result = rotate(store, "k2")
        after = store.load()
        remove_key(store, "k1")
        with create_session() as s:
            extra = s.query(Connection).one().extra_dejson
        print(json.dumps({"stored": result.stored, "reason": result.reason, "after": after.key_ids,
                          "active": after.active_id, "extra": sorted(extra),
                          "ids": sorted(extra["secret_keys"])}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "AIRFLOW_CONN_"))}
    env |= {"PYTHONPATH": str(ROOT), "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db"}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == {
        "stored": True, "reason": "", "after": ["k1", "k2"], "active": "k2",
        "extra": ["active", "created", "secret_keys"], "ids": ["k2"],
    }  # fmt: skip


def test_dr_monitor_rotates_a_due_key_itself_with_auto_rotate(env):
    """With encryption.auto_rotate the monitor makes a new key active once the old one is
    due (key file: writable); without it, it keeps warning."""
    old = KeyRing({"k1": os.urandom(32)}, "k1", {"k1": date.today() - timedelta(days=40)})
    old.save(env["keys"], overwrite=True)
    report = run_monitor(load_config().config, now=datetime.now(UTC))
    assert report.keys.rotation_due and any(a.kind == "KEY_ROTATION_DUE" for a in report.alerts)
    assert KeyRing.from_file(env["keys"]).key_ids == ["k1"]

    env["config"].write_text(
        env["config"].read_text().replace("key_rotation_days: 30", "key_rotation_days: 30, auto_rotate: true")
    )
    report = run_monitor(load_config().config, now=datetime.now(UTC))
    ring = KeyRing.from_file(env["keys"])
    assert ring.active_id != "k1" and ring.key_ids == sorted(["k1", ring.active_id])
    assert report.keys.rotated_to == ring.active_id and not report.keys.rotation_due
    assert not any(a.kind == "KEY_ROTATION_DUE" for a in report.alerts)
