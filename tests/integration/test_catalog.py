"""The catalog functions over every storage target: manifests written and read, backups
listed and found, chains followed, stored objects verified. They only talk to a target, so
they run against each kind of tests/integration/target_harness.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from include.backup.catalog.catalog import (
    chain_for,
    find_backup,
    latest,
    list_backups,
    read_manifest,
    scan_backups,
    verify_object,
    write_manifest,
)
from include.backup.catalog.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    Manifest,
    StoredObject,
    Verification,
    backup_prefix,
)
from include.backup.errors import IntegrityError, ObjectNotFound
from include.backup.targets.base import Target
from tests.integration.target_harness import Harness, MiB

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, 2, 0, tzinfo=UTC)


def _store_backup(
    target: Target,
    backup_id: str,
    *,
    source: str = "events_pg",
    started: datetime = T0,
    backup_type: str = "FULL",
    parent_id: str | None = None,
    payload: bytes = b"payload bytes",
    verified: dict[str, bool] | None = None,
    schedule: str = "daily_full",
) -> Manifest:
    manifest = Manifest(
        backup_id=backup_id,
        schedule=schedule,
        source=source,
        source_type="postgres",
        backup_type=backup_type,
        parent_id=parent_id,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        payload_format="pg_dump-custom",
        objects=[
            StoredObject(name=PAYLOAD_NAME, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
        ],
        stored_size=len(payload),
        verification={
            name: Verification(ok=ok, verified_at=started + timedelta(minutes=6))
            for name, ok in (verified or {}).items()
        },
    )
    target.put_bytes(f"{backup_prefix(source, backup_id)}/{PAYLOAD_NAME}", payload)
    write_manifest(target, manifest)
    return manifest


def test_write_manifest_publishes_at_the_manifest_key(target: Target) -> None:
    m = _store_backup(target, "b1")
    assert target.stat(f"events_pg/b1/{MANIFEST_NAME}") is not None
    assert read_manifest(target, "events_pg", "b1") == m


def test_list_backups_sorted_and_filtered_by_source(target: Target) -> None:
    _store_backup(target, "b2", started=T0 + timedelta(days=1))
    _store_backup(target, "b1", started=T0)
    _store_backup(target, "f1", source="uploads", started=T0 + timedelta(hours=1))
    assert [m.backup_id for m in list_backups(target)] == ["b1", "f1", "b2"]
    assert [m.backup_id for m in list_backups(target, "events_pg")] == ["b1", "b2"]
    assert [m.backup_id for m in list_backups(target, "uploads")] == ["f1"]
    assert list_backups(target, "events") == []  # a prefix of a source name is not a source


def test_manifestless_backup_is_not_listed(target: Target) -> None:
    _store_backup(target, "good")
    target.put_bytes(f"events_pg/half/{PAYLOAD_NAME}", b"uploaded, manifest never written")
    assert [m.backup_id for m in list_backups(target)] == ["good"]
    with pytest.raises(ObjectNotFound):
        find_backup(target, "half")


def test_invalid_manifests_are_reported_not_fatal(target: Target, caplog: pytest.LogCaptureFixture) -> None:
    _store_backup(target, "good")
    target.put_bytes(f"events_pg/garbage/{MANIFEST_NAME}", b"{not json")
    target.put_bytes(f"events_pg/partial/{MANIFEST_NAME}", json.dumps({"backup_id": "partial"}).encode())
    moved = _store_backup(target, "elsewhere").to_json()
    target.put_bytes(f"events_pg/moved/{MANIFEST_NAME}", moved)  # describes another backup
    scan = scan_backups(target)
    assert [m.backup_id for m in scan.backups] == ["elsewhere", "good"]
    assert len(scan.problems) == 3
    assert all(target.name in p for p in scan.problems)
    assert any("events_pg/garbage" in p for p in scan.problems)
    with caplog.at_level("WARNING"):
        assert len(list_backups(target)) == 2
    assert "events_pg/garbage" in caplog.text
    with pytest.raises(IntegrityError):
        read_manifest(target, "events_pg", "garbage")


def test_read_manifest_missing(target: Target) -> None:
    with pytest.raises(ObjectNotFound) as exc:
        read_manifest(target, "events_pg", "nope")
    assert target.name in str(exc.value) and "nope" in str(exc.value)


def test_find_backup_searches_all_sources(target: Target) -> None:
    _store_backup(target, "b1")
    _store_backup(target, "f1", source="uploads")
    assert find_backup(target, "f1").source == "uploads"
    assert find_backup(target, "b1").source == "events_pg"
    with pytest.raises(ObjectNotFound):
        find_backup(target, "b")  # no partial-id matches


def test_latest(target: Target) -> None:
    assert latest(target, "events_pg") is None
    _store_backup(target, "full1", started=T0, verified={target.name: True})
    _store_backup(
        target, "full2", started=T0 + timedelta(days=1), verified={target.name: False, "other": True}
    )
    _store_backup(
        target, "inc1", started=T0 + timedelta(days=1, hours=1), backup_type="INCREMENTAL", parent_id="full2"
    )
    _store_backup(
        target, "schema1", started=T0 + timedelta(days=2), backup_type="SCHEMA", verified={"other": True}
    )
    assert latest(target, "events_pg").backup_id == "schema1"  # type: ignore[union-attr]
    assert latest(target, "events_pg", types=["FULL"]).backup_id == "full2"  # type: ignore[union-attr]
    assert latest(target, "events_pg", types=["FULL", "INCREMENTAL"]).backup_id == "inc1"  # type: ignore[union-attr]
    # Failed here (full2) beats ok elsewhere; no result here (schema1) falls back to others.
    assert latest(target, "events_pg", verified_only=True).backup_id == "schema1"  # type: ignore[union-attr]
    assert latest(target, "events_pg", types=["FULL"], verified_only=True).backup_id == "full1"  # type: ignore[union-attr]
    assert latest(target, "uploads") is None


def test_chain_for(target: Target) -> None:
    full = _store_backup(target, "full", started=T0)
    inc1 = _store_backup(
        target, "inc1", started=T0 + timedelta(hours=1), backup_type="INCREMENTAL", parent_id="full"
    )
    inc2 = _store_backup(
        target, "inc2", started=T0 + timedelta(hours=2), backup_type="INCREMENTAL", parent_id="inc1"
    )
    assert [m.backup_id for m in chain_for(target, inc2)] == ["full", "inc1", "inc2"]
    assert [m.backup_id for m in chain_for(target, full)] == ["full"]
    known = {m.backup_id: m for m in (full, inc1)}
    assert chain_for(target, inc2, known=known) == [full, inc1, inc2]


def test_chain_for_missing_parent(target: Target) -> None:
    _store_backup(target, "full", started=T0)
    inc1 = _store_backup(
        target, "inc1", started=T0 + timedelta(hours=1), backup_type="INCREMENTAL", parent_id="full"
    )
    inc2 = _store_backup(
        target, "inc2", started=T0 + timedelta(hours=2), backup_type="INCREMENTAL", parent_id="inc1"
    )
    target.delete(f"events_pg/inc1/{MANIFEST_NAME}")
    with pytest.raises(IntegrityError) as exc:
        chain_for(target, inc2)
    message = str(exc.value)
    assert "backup chain broken: inc2 needs parent inc1" in message
    assert target.name in message
    assert inc1.backup_id in message


def test_chain_for_rootless_incremental(target: Target) -> None:
    orphan = _store_backup(target, "inc", backup_type="INCREMENTAL", parent_id=None)
    with pytest.raises(IntegrityError, match="names no parent"):
        chain_for(target, orphan)


def test_chain_for_loop(target: Target) -> None:
    a = _store_backup(target, "a", backup_type="INCREMENTAL", parent_id="b")
    _store_backup(target, "b", backup_type="INCREMENTAL", parent_id="a")
    with pytest.raises(IntegrityError, match="loops"):
        chain_for(target, a)


@pytest.mark.parametrize("size", [0, 1, 4 * MiB + 3])
def test_verify_object_ok(target: Target, size: int) -> None:
    m = _store_backup(target, "b1", payload=os.urandom(size))
    ok, detail = verify_object(target, m)
    assert ok, detail
    assert "matches" in detail


def test_verify_object_detects_a_flipped_byte(harness: Harness) -> None:
    target = harness.target
    m = _store_backup(target, "b1", payload=os.urandom(3 * MiB))
    harness.corrupt(f"events_pg/b1/{PAYLOAD_NAME}")
    ok, detail = verify_object(target, m)
    assert not ok
    assert "sha256" in detail and "b1" in detail and target.name in detail


def test_verify_object_detects_truncation_and_loss(target: Target) -> None:
    m = _store_backup(target, "b1", payload=b"0123456789")
    target.put_bytes(f"events_pg/b1/{PAYLOAD_NAME}", b"01234")
    ok, detail = verify_object(target, m)
    assert not ok and "size 5" in detail
    target.delete(f"events_pg/b1/{PAYLOAD_NAME}")
    ok, detail = verify_object(target, m)
    assert not ok and "missing" in detail
    ok, detail = verify_object(target, m, "no-such-object")
    assert not ok and "no object" in detail


def test_manifest_json_is_sorted_and_indented_as_before() -> None:
    """to_json re-indents the C encoder's output: the bytes json.dumps(indent=1,
    sort_keys=True) wrote, non-ASCII escaped, empty containers kept inline."""
    manifest = Manifest(
        backup_id="b1", schedule="daily_full", source="events_pg", source_type="postgres",
        backup_type="FULL", started_at=T0, payload_format="pg_dump",
        objects=[StoredObject(name=PAYLOAD_NAME, size=3, sha256="ab" * 32)],
        source_state={"files": {"dir/é.txt": {"size": 1.5e-7, "tags": [], "x": {}}}},
        verification={"nas": Verification(ok=False, verified_at=T0, detail='bad "quote"\n')},
    )  # fmt: skip
    expected = json.dumps(manifest.model_dump(mode="json"), indent=1, sort_keys=True).encode()
    assert manifest.to_json() == expected
    assert Manifest.from_json(manifest.to_json()) == manifest
