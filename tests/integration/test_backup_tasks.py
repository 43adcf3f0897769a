"""The backup steps end to end without Airflow: files source → local target, through the
same functions the DAG tasks call. Real files, real disk, real crypto."""

from __future__ import annotations

import json
import os
import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.backup import tasks
from include.backup.catalog.catalog import list_backups
from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.errors import BackupError, IntegrityError, KeyNotFoundError, RestoreRefused
from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.targets import build_target
from include.backup.testing import run_backup

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "docs/sub").mkdir(parents=True)
    (data / "docs/a.txt").write_text("alpha\n" * 1000)
    (data / "docs/sub/b.bin").write_bytes(os.urandom(300_000))
    (data / "docs/skip.tmp").write_text("no")
    config = tmp_path / "backup_config.yaml"
    config.write_text(textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
          disk2: {{type: local, path: {tmp_path}/t2, offsite: true}}
        sources:
          docs: {{type: files, paths: [{data}/docs], exclude: ["*.tmp"]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk1, disk2]}}
          - {{name: docs_inc, source: docs, type: INCREMENTAL, cron: "@hourly", targets: [disk1, disk2]}}
    """))
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return tmp_path, data


def test_full_then_incremental_restores_latest_tree(env):
    tmp, data = env
    full = run_backup("docs_full", run_id="run1")
    (data / "docs/a.txt").write_text("changed\n")
    (data / "docs/sub/b.bin").unlink()
    (data / "docs/new.txt").write_text("new\n")
    inc = run_backup("docs_inc", run_id="run2")

    config = load_config().config
    for name in ("disk1", "disk2"):
        held = {b.backup_id: b for b in list_backups(build_target(name, config.targets[name]))}
        assert set(held) == {full["backup_id"], inc["backup_id"]}
        assert held[inc["backup_id"]].parent_id == full["backup_id"]
        assert held[inc["backup_id"]].verification[name].ok

    keys = KeyRing.from_file(tmp / "keys.json")
    result = restore_backup(config, inc["backup_id"], str(tmp / "out"), keys=keys, target_name="disk2")
    assert result.chain == [full["backup_id"], inc["backup_id"]]
    restored = tree_digest(tmp / "out" / str(data / "docs").lstrip("/"))
    assert compare_trees(tree_digest(data / "docs", exclude=["*.tmp"]), restored) == []
    assert not (tmp / "staging" / full["backup_id"]).exists()


def test_retry_of_a_step_is_idempotent(env):
    tmp, data = env
    meta = tasks.run_dump("docs_full", "run1", datetime(2026, 1, 1, tzinfo=UTC))
    again = tasks.run_dump("docs_full", "run1", datetime(2026, 1, 1, tzinfo=UTC))
    assert again["backup_id"] == meta["backup_id"]
    meta = tasks.run_checksum(tasks.run_encrypt(again))
    tasks.run_upload(meta, "disk1")
    tasks.run_upload(meta, "disk1")  # retried upload overwrites, still one backup
    tasks.run_verify(meta, "disk1")
    config = load_config().config
    assert [b.backup_id for b in list_backups(build_target("disk1", config.targets["disk1"]))] == [
        meta["backup_id"]
    ]


def test_corrupt_payload_fails_verify_and_restore_refuses(env):
    tmp, data = env
    meta = run_backup("docs_full", run_id="run1")
    payload = next((tmp / "t1").rglob(PAYLOAD_NAME))
    raw = bytearray(payload.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    payload.write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="disk1"):
        tasks.run_verify(meta, "disk1")
    manifest = json.loads((payload.parent / MANIFEST_NAME).read_text())
    assert manifest["verification"]["disk1"]["ok"] is False
    config = load_config().config
    keys = KeyRing.from_file(tmp / "keys.json")
    with pytest.raises(IntegrityError):
        restore_backup(config, meta["backup_id"], str(tmp / "out"), keys=keys, target_name="disk1")
    assert not (tmp / "out").exists() or not any((tmp / "out").iterdir())
    # the other copy is intact and restores
    restore_backup(config, meta["backup_id"], str(tmp / "out2"), keys=keys, target_name="disk2")


def test_upload_without_manifest_is_not_a_backup(env):
    tmp, data = env
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_full", "r", None)))
    config = load_config().config
    target = build_target("disk1", config.targets["disk1"])
    target.put(f"docs/{meta['backup_id']}/{PAYLOAD_NAME}", Path(meta["staging"]) / PAYLOAD_NAME)
    assert list_backups(target) == []


def test_restore_with_the_wrong_key_fails_clearly(env):
    tmp, data = env
    meta = run_backup("docs_full", run_id="run1")
    config = load_config().config
    other = KeyRing.generate(tmp / "other.json", "k1")
    with pytest.raises(IntegrityError):
        restore_backup(config, meta["backup_id"], str(tmp / "out"), keys=other)
    unknown = KeyRing.generate(tmp / "unknown.json", "k9")
    with pytest.raises(KeyNotFoundError, match="k1"):
        restore_backup(config, meta["backup_id"], str(tmp / "out3"), keys=unknown)


def test_restore_refuses_non_empty_destination(env):
    tmp, data = env
    meta = run_backup("docs_full", run_id="run1")
    (tmp / "busy").mkdir()
    (tmp / "busy/keep.txt").write_text("mine")
    config = load_config().config
    keys = KeyRing.from_file(tmp / "keys.json")
    with pytest.raises(RestoreRefused):
        restore_backup(config, meta["backup_id"], str(tmp / "busy"), keys=keys)
    assert (tmp / "busy/keep.txt").read_text() == "mine"


def test_unknown_backup_id_names_the_targets(env):
    config = load_config().config
    with pytest.raises(RestoreRefused, match="not found at any target"):
        restore_backup(config, "nope", "/tmp/x", keys=None)


def test_prune_dry_run_prints_the_plan_and_prune_applies_it(env, capsys):
    from include.backup.cli import main

    tmp, data = env
    # GFS tiers of its own: a schedule with none keeps every FULL younger than
    # dr.backup_retention_days (test_retention_rules.py), and both backups here are new.
    config_file = tmp / "backup_config.yaml"
    config_file.write_text(config_file.read_text().replace(
        'targets: [disk1, disk2]}', "targets: [disk1, disk2], retention: {daily: 7}}", 1
    ))  # fmt: skip
    # Without the cleanup step, so that retention is applied by prune only.
    old = run_backup("docs_full", run_id="run-old", cleanup=False)
    new = run_backup("docs_full", run_id="run-new", cleanup=False)
    # Both runs are over: without their staging they are no longer in flight (a run in
    # flight keeps its backup and its parent from retention: docs/concurrency.md).
    import shutil

    shutil.rmtree(tmp / "staging")
    # At disk1, age the first backup to 2024: GFS keeps it as that year's yearly. At disk2
    # both are from today: the daily tier keeps only the newest of the day.
    manifest_path = next((tmp / "t1").rglob(f"{old['backup_id']}/{MANIFEST_NAME}"))
    manifest = json.loads(manifest_path.read_text())
    manifest["started_at"] = "2024-06-01T00:00:00Z"
    manifest_path.write_text(json.dumps(manifest))
    # The catalog index recorded the manifest as published: rebuild it from the edited one.
    assert main(["list", "--target", "disk1", "--rebuild-index"]) == 0

    assert main(["prune", "--schedule", "docs_full", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "disk1: would delete 0 backup(s), keep 2" in out
    # The plan: counts by rule, then the ids one per line.
    disk2 = out[out.index("disk2: would delete 1 backup(s), keep 1") :]
    assert "1  daily" in disk2 and "1  newest backup" in disk2
    assert "1  FULL not kept by any GFS tier" in disk2
    # Then every backup, newest first, with the rule that keeps or deletes it.
    assert re.search(rf"\n    keep    {new['backup_id']}  FULL +\S+  daily \S+; .*newest backup", disk2)
    assert re.search(rf"\n    delete  {old['backup_id']}  FULL +\S+  FULL not kept by any GFS tier", disk2)
    assert len(list((tmp / "t2").rglob(MANIFEST_NAME))) == 2  # dry run deleted nothing

    assert main(["prune", "--schedule", "docs_full"]) == 0
    assert f"disk2: deleted 1 backup(s): {old['backup_id']}" in capsys.readouterr().out
    config = load_config().config
    held = {
        name: sorted(b.backup_id for b in list_backups(build_target(name, config.targets[name])))
        for name in ("disk1", "disk2")
    }
    assert held == {"disk1": sorted([old["backup_id"], new["backup_id"]]), "disk2": [new["backup_id"]]}


def test_failed_dump_leaves_no_staging(env):
    tmp, data = env
    import shutil

    shutil.rmtree(data / "docs")  # the source's path is gone
    with pytest.raises(BackupError, match="docs"):
        tasks.run_dump("docs_full", "run-x", datetime.now(UTC))
    assert not (tmp / "staging").exists() or not any((tmp / "staging").iterdir())


def test_each_step_re_run_after_it_finished_returns_the_same_result(env):
    """Issue 18: a step whose process died after its work (before Airflow recorded it) is
    retried; it returns what it had finished, even once the next step has moved on."""
    tmp, data = env
    when = datetime(2026, 1, 2, tzinfo=UTC)
    dumped = tasks.run_dump("docs_full", "run1", when)
    assert tasks.run_dump("docs_full", "run1", when) == dumped  # the finished dump is kept
    sealed = tasks.run_encrypt(dumped)
    assert not (Path(dumped["staging"]) / tasks.DUMP_NAME).exists()  # the plaintext is gone
    assert tasks.run_encrypt(dumped) == sealed  # was a bare FileNotFoundError on .../dump
    meta = tasks.run_checksum(sealed)
    manifest = (Path(meta["staging"]) / MANIFEST_NAME).read_bytes()
    assert tasks.run_checksum(sealed) == meta
    assert (Path(meta["staging"]) / MANIFEST_NAME).read_bytes() == manifest  # byte for byte
    for name in ("disk1", "disk2"):
        tasks.run_upload(meta, name)
        tasks.run_verify(meta, name)
    tasks.run_cleanup(meta, "docs_full")
    assert not Path(meta["staging"]).exists()
    # An upload cleared after the run: the target holds the backup, staging is gone.
    assert tasks.run_upload(meta, "disk1")["backup_id"] == meta["backup_id"]
    tasks.run_cleanup(meta, "docs_full")
    config = load_config().config
    held = list_backups(build_target("disk1", config.targets["disk1"]))
    assert [b.backup_id for b in held] == [meta["backup_id"]] and held[0].verification["disk1"].ok


def test_a_sealed_payload_that_does_not_open_is_never_kept(env):
    tmp, data = env
    dumped = tasks.run_dump("docs_full", "run1", None)
    tasks.run_encrypt(dumped)
    payload = Path(dumped["staging"]) / PAYLOAD_NAME
    raw = bytearray(payload.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    payload.write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="does not open.*Clear the dump task"):
        tasks.run_encrypt(dumped)


def test_an_upload_of_a_new_payload_under_the_same_id_replaces_the_manifest_it_finds(env):
    tmp, data = env
    when = datetime(2026, 1, 3, tzinfo=UTC)
    first = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_full", "run1", when)))
    tasks.run_upload(first, "disk1")
    # The dump task cleared: a new dump, data key and payload under the same backup id.
    (data / "docs/a.txt").write_text("changed\n")
    second = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_full", "run1", when)))
    assert second["backup_id"] == first["backup_id"] and second["sha256"] != first["sha256"]
    tasks.run_upload(second, "disk1")
    assert tasks.run_verify(second, "disk1")["ok"]
