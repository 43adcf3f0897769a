"""The audit trail's chain rules on a local target (include/backup/audit.py, audit_read.py):
concurrent writers keep their chains whole, an interrupted write is not a broken link,
retention cuts a chain from its start and the rest still checks, records signed with a
key the ring lacks are named, and a write that fails never raises."""

from __future__ import annotations

import json
import multiprocessing
import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.backup import audit, audit_read
from include.backup.config.loader import load_config
from include.backup.config.schema import BackupConfig
from include.backup.errors import RestoreRefused
from include.backup.keys import KeyRing
from include.backup.targets.local import LocalTarget


@pytest.fixture
def setup(tmp_path: Path) -> tuple[BackupConfig, KeyRing, LocalTarget]:
    (tmp_path / "data").mkdir()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk: {{type: local, path: {tmp_path}/disk}}
        sources:
          docs: {{type: files, paths: ["{tmp_path}/data"]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk]}}
        """)
    )
    ring = KeyRing({"k1": os.urandom(32)}, "k1")
    return load_config(cfg).config, ring, LocalTarget("disk", tmp_path / "disk")


def write(config: BackupConfig, ring: KeyRing, n: int, action: str = "list") -> None:
    for i in range(n):
        assert audit.note(config, action, source="docs", backup_ids=[f"b{i}"], keys=ring) == []


def _writer(cfg_path: str, key: str, n: int) -> None:
    config = load_config(cfg_path).config
    ring = KeyRing({"k1": bytes.fromhex(key)}, "k1")
    write(config, ring, n)


def test_concurrent_processes_keep_one_whole_chain(setup, tmp_path: Path) -> None:
    config, ring, disk = setup
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_writer, args=(str(tmp_path / "cfg.yaml"), ring.get("k1").hex(), 8))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seqs = sorted(r["seq"] for r in audit_read.iter_records(disk, "docs"))
    assert seqs == list(range(1, 25))  # one writer (this host's user): no fork, no gap
    assert audit_read.verify_trail(disk, "docs", ring) == []


def test_an_interrupted_write_is_not_a_broken_link(setup) -> None:
    config, ring, disk = setup
    write(config, ring, 2)
    head_key = next(k for k in audit_read.list_trail(disk, "docs").heads.values())
    head = disk.read_bytes(head_key)
    write(config, ring, 1)  # its process "died" before the head moved: put the old head back
    disk.put_bytes(head_key, head)
    write(config, ring, 2)  # the chain goes on from the old head
    assert len(list(audit_read.iter_records(disk, "docs"))) == 5
    assert audit_read.verify_trail(disk, "docs", ring) == []


def test_retention_cuts_from_the_start_and_the_rest_still_checks(setup) -> None:
    config, ring, disk = setup
    write(config, ring, 4)
    cut = datetime.now(UTC) + timedelta(seconds=1)
    later = datetime.now(UTC) + timedelta(days=1)
    assert audit_read.prune_trail(disk, "docs", ring, cut) == 4
    assert audit_read.verify_trail(disk, "docs", ring) == []  # every record gone, the marker says so
    write(config, ring, 3)
    assert audit_read.verify_trail(disk, "docs", ring) == []
    assert [r["seq"] for r in audit_read.iter_records(disk, "docs")] == [5, 6, 7]
    assert audit_read.sweep_retention(disk, ["docs"], ring, days=0, now=later) == 3


def test_a_forged_pruned_marker_is_named(setup) -> None:
    config, ring, disk = setup
    write(config, ring, 3)
    audit_read.prune_trail(disk, "docs", ring, datetime.now(UTC) + timedelta(seconds=1))
    [marker] = audit_read.list_trail(disk, "docs").pruned.values()
    doc = json.loads(disk.read_bytes(marker))
    disk.put_bytes(marker, json.dumps({**doc, "seq": 1}).encode())
    [problem] = audit_read.verify_trail(disk, "docs", ring)
    assert "pruned/" in problem.key and "edited after it was written" in problem.message


def test_a_record_signed_with_a_key_the_ring_lacks_is_named(setup) -> None:
    config, ring, disk = setup
    write(config, ring, 2)
    other = KeyRing({"k2": os.urandom(32)}, "k2")
    problems = audit_read.verify_trail(disk, "docs", other)
    assert problems and "key id 'k1', which the key ring lacks" in problems[0].message


def test_writing_never_raises(setup, tmp_path: Path) -> None:
    config, ring, disk = setup
    (tmp_path / "disk").mkdir(exist_ok=True)
    (tmp_path / "disk/docs").write_text("a file where the folder should be")
    problems = audit.note(config, "list", source="docs", keys=ring)
    assert len(problems) == 1 and "not written at target 'disk'" in problems[0]
    problems = audit.note(None, "list", source="docs")
    assert problems == ["audit record of list not written: no config names a target"]
    # The action's own error goes on; its record says "failed" (here: cannot be written either).
    with pytest.raises(RuntimeError), audit.recorded(config, "restore", source="docs"):
        raise RuntimeError("boom")


def test_a_refused_action_is_recorded_with_its_reason(setup) -> None:
    config, ring, disk = setup
    with pytest.raises(RestoreRefused), audit.recorded(config, "failover", keys=ring, source="docs") as out:
        out.backup_ids = ["b1"]
        raise RestoreRefused("secondary is the primary")
    [row] = audit_read.iter_records(disk, "docs")
    assert (row["action"], row["result"], row["backup_ids"]) == ("failover", "refused", ["b1"])
    assert row["reason"] == "RestoreRefused: secondary is the primary"


def test_records_of_a_retired_key_are_vouched_for_by_later_ones(setup) -> None:
    config, ring, disk = setup
    write(config, ring, 2)  # signed with k1
    both = ring.rotated("k2")
    write(config, both, 1)  # signed with k2: its prev hash vouches for the k1 records
    only_new = KeyRing({"k2": both.get("k2")}, "k2")
    assert audit_read.verify_trail(disk, "docs", only_new) == []


def test_reanchor_lets_a_key_leave_the_ring(setup) -> None:
    config, ring, disk = setup
    write(config, ring, 3)
    both = ring.rotated("k2")
    only_new = KeyRing({"k2": both.get("k2")}, "k2")
    before = audit_read.verify_trail(disk, "docs", only_new)
    assert before and "which the key ring lacks" in before[0].message  # nothing vouches for them yet
    assert audit.reanchor_all(config, both) == []  # the heads re-signed with k2
    assert audit_read.verify_trail(disk, "docs", only_new) == []
    write(config, only_new, 1)  # the chain goes on under k2
    assert audit_read.verify_trail(disk, "docs", only_new) == []
