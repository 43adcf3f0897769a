"""Nothing orphaned at the targets (issue 18, part 3): what killed uploads, a retention
delete cut short and a manifest upload that never happened leave behind is removed by the
cleanup step and by ``dr_monitor`` once past the grace, never while its run is in flight.
Real files, a real killed process, moto's S3 server; the step functions the DAG tasks call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup import tasks
from include.backup.catalog.catalog import list_backups, manifest_key
from include.backup.catalog.manifest import PAYLOAD_NAME
from include.backup.config.loader import load_config
from include.backup.dr.monitor import run_monitor, sweep_targets
from include.backup.keys import KeyRing
from include.backup.retention import RetentionPlan, apply_retention
from include.backup.schedule_retention import SWEEP_STATE_NAME, sweep_source
from include.backup.targets import build_target
from include.backup.targets.base import Target, is_temp_name
from include.backup.testing.pipeline import run_backup
from tests.integration.services import S3Service, unique

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
SCHEDULE = "docs_full"
WAIT_S = 60.0  # a bound on waiting for a state, never a measured duration


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: S3Service) -> dict[str, Any]:
    """A files source backed up daily to a local disk and to S3, keeping one day."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n" * 1000)
    (tmp_path / "backup_config.yaml").write_text(textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk: {{type: local, path: {tmp_path}/disk}}
          s3: {{type: s3, conn_id: {moto_server.conn_id}, bucket: {moto_server.bucket},
               prefix: {unique('sweep')}/}}
        sources:
          docs: {{type: files, paths: [{data}]}}
        schedules:
          - {{name: {SCHEDULE}, source: docs, type: FULL, cron: "@daily", targets: [disk, s3],
              retention_days: 1}}
    """))
    monkeypatch.setenv("BACKUP_CONFIG", str(tmp_path / "backup_config.yaml"))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    config = load_config().config
    return {name: build_target(name, config.targets[name]) for name in ("disk", "s3")}


def finished_run(days_ago: float, *, publish: bool = True) -> dict[str, Any]:
    """A run of ``days_ago`` that is over (its staging gone). Without ``publish`` only its
    payload reached the targets: its manifest upload never happened."""
    when = NOW - timedelta(days=days_ago)
    if publish:
        meta = run_backup(SCHEDULE, logical_date=when, cleanup=False)
    else:
        meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump(SCHEDULE, f"run-{days_ago}", when)))
        config = load_config().config
        for name in config.schedule(SCHEDULE).targets:
            build_target(name, config.targets[name]).put(
                f"docs/{meta['backup_id']}/{PAYLOAD_NAME}", Path(meta["staging"]) / PAYLOAD_NAME
            )
    shutil.rmtree(meta["staging"])
    return meta


def killed_local_put(root: Path, key: str, fifo_dir: Path, *, days_ago: float) -> Path:
    """Put ``key`` at a local target in a process of its own, SIGKILL it once its temporary
    file holds bytes, and date the leftover ``days_ago`` (the kill happened back then)."""
    fifo = fifo_dir / f"put-{unique('fifo')}"
    os.mkfifo(fifo)
    code = ("import pathlib, sys\nfrom include.backup.targets.local import LocalTarget\n"
            "LocalTarget('disk', sys.argv[1]).put(sys.argv[2], pathlib.Path(sys.argv[3]))")
    child = subprocess.Popen([sys.executable, "-c", code, str(root), key, str(fifo)])
    folder = root / key.rpartition("/")[0]
    with open(fifo, "wb") as feed:
        feed.write(os.urandom(2 << 20))  # more than one block of the put's copy: it writes one
        feed.flush()
        deadline = time.monotonic() + WAIT_S
        while not (temps := [p for p in folder.glob(".*") if is_temp_name(p.name) and p.stat().st_size]):
            assert child.poll() is None and time.monotonic() < deadline, "the put never wrote its temp file"
            time.sleep(0.02)
        child.kill()
        child.wait()
    then = (NOW - timedelta(days=days_ago)).timestamp()
    os.utime(temps[0], (then, then))
    return temps[0]


def killed_s3_put(s3: S3Service, target: Any, key: str) -> None:
    """What an S3 put killed after its first part leaves (the process never got to abort):
    a multipart upload, open, under the target's prefix."""
    client, full = s3.client(), target.root + key
    upload = client.create_multipart_upload(Bucket=s3.bucket, Key=full, ChecksumAlgorithm="CRC32")
    client.upload_part(Bucket=s3.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=1,
                       Body=os.urandom(1 << 16), ChecksumAlgorithm="CRC32")


def open_uploads(s3: S3Service, target: Any) -> list[str]:
    resp = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=target.root)
    return [u["Key"] for u in resp.get("Uploads", [])]


def folders(target: Target) -> set[str]:
    """The backup folders at ``target`` holding any object (the catalog index aside)."""
    return {o.key.split("/")[1] for o in target.list("docs/") if not o.key.split("/")[1].startswith("_")}


def test_cleanup_removes_every_orphan_after_the_grace_and_spares_runs_in_flight(
    world: dict[str, Any], moto_server: S3Service, tmp_path: Path
) -> None:
    disk, s3 = world["disk"], world["s3"]
    # 5 days ago: a backup whose upload was killed once before its retry published it:
    # the killed attempt's leftovers are a temp file at the disk, an open multipart at S3.
    deleted = finished_run(5)["backup_id"]
    temp = killed_local_put(disk.root, f"docs/{deleted}/{PAYLOAD_NAME}", tmp_path, days_ago=5)
    killed_s3_put(moto_server, s3, f"docs/{deleted}/{PAYLOAD_NAME}")
    # 4 days ago: the payload reached both targets, the manifest upload never happened.
    unpublished = finished_run(4, publish=False)["backup_id"]
    # 3 days ago: retention was killed between deleting the manifest and the payload.
    cut = finished_run(3)["backup_id"]
    for target in world.values():
        target.delete(manifest_key("docs", cut))
    # 6 days ago, still in flight (a backfill run being retried): its leftovers stay.
    running = tasks.run_dump(SCHEDULE, "run-backfill", NOW - timedelta(days=6))["backup_id"]
    killed_s3_put(moto_server, s3, f"docs/{running}/{PAYLOAD_NAME}")
    running_temp = killed_local_put(disk.root, f"docs/{running}/{PAYLOAD_NAME}", tmp_path, days_ago=6)

    new = run_backup(SCHEDULE, cleanup=False)
    # The first backup is deleted by retention since: the leftovers outlive it, unlisted.
    for target in world.values():
        assert apply_retention(target, "docs", SCHEDULE, RetentionPlan(delete={deleted: "old"})) == [deleted]
    assert temp.exists() and open_uploads(moto_server, s3) == [
        s3.root + f"docs/{deleted}/{PAYLOAD_NAME}", s3.root + f"docs/{running}/{PAYLOAD_NAME}"
    ]

    done = tasks.run_cleanup(new, SCHEDULE)

    assert done["deleted"] == {"disk": [], "s3": []}
    assert done["orphans"] == {"disk": sorted([unpublished, cut]), "s3": sorted([unpublished, cut])}
    assert [k.split("/")[1] for k in done["partial_uploads"]["disk"]] == [deleted]
    assert done["partial_uploads"]["s3"] == [f"docs/{deleted}/{PAYLOAD_NAME}"]
    assert not temp.exists() and running_temp.exists()
    assert open_uploads(moto_server, s3) == [s3.root + f"docs/{running}/{PAYLOAD_NAME}"]
    for target in world.values():
        assert [m.backup_id for m in list_backups(target)] == [new["backup_id"]]
        assert folders(target) == {new["backup_id"]}
    assert not (disk.root / "docs" / deleted).exists()


def test_dr_monitor_sweeps_every_source_at_every_target(world: dict[str, Any], tmp_path: Path) -> None:
    config = load_config().config
    good = run_backup(SCHEDULE, logical_date=NOW - timedelta(days=3))["backup_id"]
    unpublished = finished_run(4, publish=False)["backup_id"]
    # A manifest write killed (a verify recording its result) beside a good backup.
    temp = killed_local_put(world["disk"].root, f"docs/{good}/manifest.json", tmp_path, days_ago=3)

    report = run_monitor(config)
    sweep_targets(config, report)
    temp_key = str(temp.relative_to(world["disk"].root))
    assert report.swept == {
        "disk": {"docs": {"orphans": [unpublished], "partial_uploads": [temp_key]}},
        "s3": {"docs": {"orphans": [unpublished], "partial_uploads": []}},
    }
    assert report.to_json()["swept"] == report.swept
    for target in world.values():
        assert folders(target) == {good}
    assert not temp.exists()

    # At most every few hours per target: the next rounds leave a new orphan to a later one.
    again = finished_run(4.5, publish=False)["backup_id"]
    sweep_targets(config, report := run_monitor(config))
    assert report.swept == {} and (Path(config.staging_dir or "") / SWEEP_STATE_NAME).exists()
    sweep_targets(config, report, now=NOW + timedelta(hours=7))
    assert set(report.swept) == {"disk", "s3"} and report.swept["s3"]["docs"]["orphans"] == [again]


def test_prune_killed_between_the_manifest_and_the_payload_leaves_no_listed_backup_without_data(
    world: dict[str, Any], tmp_path: Path
) -> None:
    config_file = tmp_path / "backup_config.yaml"
    config_file.write_text(config_file.read_text().replace(
        "retention_days: 1", "retention: {daily: 1, weekly: 0, monthly: 0, yearly: 0}"
    ))
    older = run_backup(SCHEDULE)["backup_id"]
    newer_run = run_backup(SCHEDULE, cleanup=False)  # its cleanup is the prune below
    shutil.rmtree(newer_run["staging"])
    newer = newer_run["backup_id"]
    disk, s3 = world["disk"], world["s3"]
    assert {m.backup_id for m in list_backups(disk)} == {older, newer}  # (one day: one goes)

    prune = [sys.executable, "-m", "include.backup", "prune", "--schedule", SCHEDULE]
    killed = subprocess.run(prune, env=dict(os.environ, BACKUP_FAULT="retention.between-deletes"),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr  # SIGKILL, at the first target
    # The cut delete left an orphan payload, never a listed backup whose data is gone.
    assert [m.backup_id for m in list_backups(disk)] == [newer]
    assert disk.stat(f"docs/{older}/{PAYLOAD_NAME}") is not None
    assert {m.backup_id for m in list_backups(s3)} == {older, newer}  # not reached yet

    done = subprocess.run(prune, capture_output=True, text=True, timeout=600)  # the retry
    assert done.returncode == 0, done.stderr
    for target in world.values():
        assert [m.backup_id for m in list_backups(target)] == [newer]
    assert folders(disk) == {older, newer} and folders(s3) == {newer}
    # The orphan goes with the first sweep past the grace.
    root = Path(load_config().config.staging_dir or "")
    assert sweep_source(disk, "docs", root, now=NOW + timedelta(days=3)).orphans == [older]
    assert folders(disk) == {newer}
