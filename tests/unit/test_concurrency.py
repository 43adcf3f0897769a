"""The pieces that keep concurrent runs apart: the per-source lock and in-flight records in
the staging root, sparing what runs in flight need from retention, stale-staging removal,
and the WAL spool's shared/exclusive use. Locks are taken by real separate processes."""

from __future__ import annotations

import multiprocessing
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup import tasks
from include.backup.catalog.inflight import (
    INFLIGHT_NAME,
    InFlight,
    read_inflight,
    run_lock,
    source_lock,
    write_inflight,
)
from include.backup.catalog.manifest import Manifest
from include.backup.errors import BackupError
from include.backup.retention import RetentionPlan
from include.backup.schedule_retention import spare_in_flight
from include.backup.sources.postgres.spool import spool_in_use

CTX = multiprocessing.get_context("fork")
WAIT_S = 60  # deadlock guard only


def _hold_source_lock(root: str, held: Any, release: Any) -> None:
    with source_lock(Path(root), "pg", purpose="retention of schedule nightly"):
        held.set()
        release.wait(WAIT_S)


def _hold_spool(spool: str, held: Any, release: Any) -> None:
    with spool_in_use(Path(spool)):
        held.set()
        release.wait(WAIT_S)


def in_child(target: Any, *args: Any) -> tuple[Any, Any, Any]:
    held, release = CTX.Event(), CTX.Event()
    proc = CTX.Process(target=target, args=(*args, held, release))
    proc.start()
    assert held.wait(WAIT_S)
    return proc, release, held


# --- the source lock -------------------------------------------------------------------------


def test_source_lock_excludes_another_process_and_names_it(tmp_path):
    proc, release, _ = in_child(_hold_source_lock, str(tmp_path))
    try:
        with (
            pytest.raises(BackupError) as exc,
            source_lock(tmp_path, "pg", purpose="choosing a parent", wait_s=0.3),
        ):
            pass
        text = str(exc.value)
        assert "choosing a parent" in text and f'"pid": {proc.pid}' in text
        assert "retention of schedule nightly" in text
        # Another source's lock is independent.
        with source_lock(tmp_path, "other", purpose="x", wait_s=0.3):
            pass
    finally:
        release.set()
        proc.join(WAIT_S)
    with source_lock(tmp_path, "pg", purpose="after release", wait_s=WAIT_S):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    proc, _, _ = in_child(_hold_source_lock, str(tmp_path))
    proc.kill()
    proc.join(WAIT_S)
    with source_lock(tmp_path, "pg", purpose="after the worker died", wait_s=WAIT_S):
        pass


def test_source_lock_is_not_reentrant_and_says_so(tmp_path):
    with (
        source_lock(tmp_path, "pg", purpose="outer"),
        pytest.raises(RuntimeError, match="not re-entrant"),
        source_lock(tmp_path, "pg", purpose="inner"),
    ):
        pass


def test_unwritable_staging_root_is_a_clear_error(tmp_path):
    root = tmp_path / "file"
    root.write_text("not a directory")
    with (
        pytest.raises(BackupError, match="staging directory .* writable by every worker"),
        source_lock(root, "pg", purpose="x"),
    ):
        pass


# --- in-flight records -----------------------------------------------------------------------


def test_read_inflight_finds_the_source_s_runs_only(tmp_path):
    for backup_id, source, parent in (("a-1", "pg", "f0"), ("b-1", "pg", None), ("c-1", "docs", "d0")):
        (tmp_path / backup_id).mkdir()
        write_inflight(tmp_path / backup_id, InFlight(backup_id, backup_id[0], source, parent))
    (tmp_path / "no-record").mkdir()
    (tmp_path / ".locks").mkdir()
    found = sorted(read_inflight(tmp_path, "pg"), key=lambda r: r.backup_id)
    assert [(r.backup_id, r.parent_id) for r in found] == [("a-1", "f0"), ("b-1", None)]
    assert found[0].protects() == {"a-1", "f0"} and found[1].protects() == {"b-1"}
    assert read_inflight(tmp_path / "missing", "pg") == []


def test_a_damaged_record_is_an_error_naming_the_staging(tmp_path):
    (tmp_path / "x-1").mkdir()
    (tmp_path / "x-1" / INFLIGHT_NAME).write_text("{not json")
    with pytest.raises(BackupError, match="x-1"):
        read_inflight(tmp_path, "pg")


def manifest(backup_id: str, parent: str | None, kind: str, schedule: str) -> Manifest:
    return Manifest(
        backup_id=backup_id, schedule=schedule, source="pg", source_type="postgres",
        backup_type=kind, parent_id=parent, started_at=datetime(2026, 1, 1, tzinfo=UTC),
        payload_format="x",
    )  # fmt: skip


def test_spare_in_flight_keeps_the_parent_chain_and_the_run_s_own_backup():
    backups = [
        manifest("f1", None, "FULL", "full"),
        manifest("t1", "f1", "TRANSACTION_LOG", "wal"),
        manifest("f2", None, "FULL", "full"),
        manifest("mine", None, "FULL", "full"),
    ]
    plan = RetentionPlan(delete={"f1": "old", "t1": "old", "f2": "old", "mine": "old"})
    records = [InFlight("t2", "wal", "pg", "t1"), InFlight("mine", "full", "pg")]
    spare_in_flight(plan, backups, records, target_name="disk")
    assert plan.delete == {"f2": "old"}
    assert plan.keep["t1"] == ["needed by t2 of schedule wal, still in flight"]
    assert plan.keep["f1"] == ["needed by t2 of schedule wal, still in flight"]
    assert plan.keep["mine"] == ["its run is still in flight (staging mine exists)"]


# --- stale staging ---------------------------------------------------------------------------


def test_stale_staging_removal_takes_every_schedule_s_staging_untouched_for_a_day(tmp_path):
    """Any schedule's cleanup (and dr_monitor) removes the staging of any failed or killed
    run once nothing touched it for 24 hours; never one a step writes to or holds."""
    day_ago = time.time() - timedelta(hours=25).total_seconds()
    hours_ago = time.time() - timedelta(hours=20).total_seconds()
    old_own = tmp_path / "pg-20260101T000000Z-abcdef"
    old_other = tmp_path / "mongo-hourly-20260101T000000Z-abcdef"  # another schedule's
    live = tmp_path / "pg-20260102T000000Z-123456"  # old directory, but a file in it changed
    recent = tmp_path / "pg-20260103T000000Z-654321"  # failed 20 hours ago: kept for a retry
    held = tmp_path / "pg-20260104T000000Z-aaaaaa"  # old, but a step holds its run lock
    for d in (old_own, old_other, live, recent, held):
        d.mkdir()
        (d / "payload").write_bytes(b"x")
    for d, when in ((old_own, day_ago), (old_other, day_ago), (live, day_ago), (recent, hours_ago),
                    (held, day_ago)):  # fmt: skip
        os.utime(d / "payload", (when, when))
        os.utime(d, (when, when))
    os.utime(live / "payload")
    with run_lock(held, purpose="a slow upload"):
        os.utime(held, (day_ago, day_ago))  # the lock file's creation touched it
        tasks._remove_stale_staging(tmp_path, "pg")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, recent.name, held.name])


def test_each_step_marks_its_staging_as_in_use(tmp_path):
    stage = tmp_path / "pg-20260101T000000Z-abcdef"
    stage.mkdir()
    week_ago = time.time() - timedelta(days=8).total_seconds()
    os.utime(stage, (week_ago, week_ago))
    tasks._touch(stage)
    tasks._remove_stale_staging(tmp_path, "pg")
    assert stage.exists()
    tasks._touch(tmp_path / "gone")  # a staging already cleaned up is not an error


# --- the WAL spool ---------------------------------------------------------------------------


def test_pruning_needs_the_spool_to_itself(tmp_path):
    with spool_in_use(tmp_path) as use:
        with use.exclusive() as alone:
            assert alone
        proc, release, _ = in_child(_hold_spool, str(tmp_path))
        try:
            with use.exclusive() as alone:
                assert not alone  # another dump reads the spool: prune later
        finally:
            release.set()
            proc.join(WAIT_S)
        with use.exclusive() as alone:
            assert alone


def _try_prune(spool: str, out: Any) -> None:
    with spool_in_use(Path(spool)) as use, use.exclusive() as alone:
        out.put(alone)


def test_spool_use_is_counted_within_a_process(tmp_path):
    with spool_in_use(tmp_path) as outer:
        with spool_in_use(tmp_path) as inner:
            assert inner is outer and outer.users == 2
        # The inner block ending must not drop the outer one's hold on the spool.
        out = CTX.Queue()
        proc = CTX.Process(target=_try_prune, args=(str(tmp_path), out))
        proc.start()
        assert out.get(timeout=WAIT_S) is False
        proc.join(WAIT_S)


def test_a_missing_spool_is_left_to_the_dump_to_report(tmp_path):
    with spool_in_use(tmp_path / "missing") as use, use.exclusive() as alone:
        assert use.fd is None and not alone
