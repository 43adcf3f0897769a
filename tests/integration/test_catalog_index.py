"""The catalog index (include/backup/catalog/index.py) at real targets: built from the
manifests on first read, appended on publish, signed, rebuilt when altered, tombstoned on
delete, safe with writers at once, and read without reading a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from include.backup.catalog import index
from include.backup.catalog.catalog import find_backup, list_backups, write_manifest
from include.backup.catalog.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    Manifest,
    StoredObject,
    Verification,
)
from include.backup.catalog.signing import check_shape, sign
from include.backup.config.loader import load_config
from include.backup.dr.monitor import run_monitor, sweep_targets
from include.backup.dr.web import Monitor, create_app
from include.backup.errors import IntegrityError, ObjectNotFound
from include.backup.keys import KeyRing
from include.backup.retention import RetentionPlan, apply_retention
from include.backup.targets.base import Target
from include.backup.targets.local import LocalTarget

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, 2, 0, tzinfo=UTC)
FILE_INDEX = {"files": {f"dir/file-{i}.txt": {"size": i, "mtime": 0} for i in range(50)}}


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing({"k1": os.urandom(32)}, "k1")


class CountingTarget:
    """A real target that counts what is read from it (which keys, how often)."""

    def __init__(self, inner: Target) -> None:
        self._inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.reads: Counter[str] = Counter()
        self.listed: list[str] = []  # the prefix of every listing

    def read_bytes(self, key: str) -> bytes:
        self.reads[key] += 1
        return self._inner.read_bytes(key)

    def list(self, prefix: str = "") -> Any:
        self.listed.append(prefix)
        return self._inner.list(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def manifest_reads(self) -> int:
        return sum(n for k, n in self.reads.items() if k.endswith(MANIFEST_NAME))


def make_manifest(
    ring: KeyRing,
    backup_id: str,
    *,
    source: str = "events_pg",
    hours: int = 0,
    backup_type: str = "FULL",
    parent_id: str | None = None,
    schedule: str = "daily_full",
) -> Manifest:
    payload = backup_id.encode()
    digest = hashlib.sha256(payload).hexdigest()
    started = T0 + timedelta(hours=hours)
    m = Manifest(
        backup_id=backup_id, schedule=schedule, source=source, source_type="files",
        backup_type=backup_type, parent_id=parent_id, started_at=started,
        finished_at=started + timedelta(minutes=5), payload_format="tar",
        objects=[StoredObject(name=PAYLOAD_NAME, size=len(payload), sha256=digest)],
        stored_size=len(payload), raw_size=10 * len(payload), position={"n": hours},
        source_state=FILE_INDEX, stats={"files": 50},
    )  # fmt: skip
    return sign(m, *ring.active())


def store(target: Target, m: Manifest, ring: KeyRing | None = None) -> Manifest:
    """Payload, then the manifest; with ``ring``, published the way the upload step does."""
    target.put_bytes(f"{m.source}/{m.backup_id}/{PAYLOAD_NAME}", m.backup_id.encode())
    if ring is None:
        write_manifest(target, m)  # as a version without the index wrote it
    else:
        index.publish(target, m, ring)
    return m


def ids(backups: list[Manifest]) -> list[str]:
    return [b.backup_id for b in backups]


def index_keys(target: Target, source: str = "events_pg") -> list[str]:
    return sorted(o.key for o in target.list(f"{source}/_catalog/"))


# --- every target kind -----------------------------------------------------------------


def test_index_is_built_on_first_read_then_used(target: Target, ring: KeyRing) -> None:
    for i in range(3):
        store(target, make_manifest(ring, f"b{i}", hours=i))  # no index yet: an old target
    listed = index.summaries(target, "events_pg", ring)
    assert ids(listed) == ids(list_backups(target, "events_pg")) == ["b0", "b1", "b2"]
    (base,) = index_keys(target)
    assert "/_catalog/base-" in base
    raw = target.read_bytes(base)
    assert b"file-1.txt" not in raw and b"wrapped_key" not in raw  # records only
    # Published from now on: the listing sees it without a rebuild.
    store(target, make_manifest(ring, "b3", hours=3), ring)
    counting = CountingTarget(target)
    listed = index.summaries(counting, "events_pg", ring)  # type: ignore[arg-type]
    assert ids(listed) == ["b0", "b1", "b2", "b3"]
    assert counting.manifest_reads() == 0
    assert listed[-1].source_state == {} and listed[-1].objects == []
    assert (listed[-1].stored_size, listed[-1].position) == (2, {"n": 3})


def test_a_verification_updates_the_record(target: Target, ring: KeyRing) -> None:
    m = store(target, make_manifest(ring, "b0"), ring)
    m.verification[target.name] = Verification(ok=True, verified_at=T0 + timedelta(hours=1), deep=True)
    index.publish(target, m, ring)
    (listed,) = index.summaries(target, "events_pg", ring)
    assert listed.verified and listed.verification[target.name].deep


# --- local target ----------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalTarget:
    return LocalTarget("local", tmp_path / "target")


def test_altered_segment_is_ignored_and_the_index_rebuilt(
    local: LocalTarget, ring: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    store(local, make_manifest(ring, "b0"), ring)
    store(local, make_manifest(ring, "b1", hours=1), ring)
    index.summaries(local, "events_pg", ring)
    segment = next(k for k in index_keys(local) if "/add-" in k or "/base-" in k)
    doc = json.loads(local.read_bytes(segment))
    doc["records"][0]["stored_size"] = 999_999  # someone with write access edits the index
    local.put_bytes(segment, json.dumps(doc).encode())
    listed = index.summaries(local, "events_pg", ring)
    assert [b.stored_size for b in listed] == [2, 2]  # from the manifests, not the edit
    assert "failed authentication" in caplog.text and "rebuilding the index" in caplog.text
    assert segment not in index_keys(local)  # replaced by a new base


def test_segment_signed_with_a_key_not_in_the_ring_is_rebuilt(local: LocalTarget, ring: KeyRing) -> None:
    store(local, make_manifest(ring, "b0"), ring)
    other = KeyRing({"k9": os.urandom(32)}, "k9")
    index.record_published(local, make_manifest(ring, "forged"), other)
    assert ids(index.summaries(local, "events_pg", ring)) == ["b0"]


def test_deleted_backup_drops_out_and_compaction_folds_it(local: LocalTarget, ring: KeyRing) -> None:
    for i in range(3):
        store(local, make_manifest(ring, f"b{i}", hours=i), ring)
    listed = index.summaries(local, "events_pg", ring)
    plan = RetentionPlan(delete={"b0": "test"})
    assert apply_retention(local, "events_pg", "daily_full", plan, current=listed) == ["b0"]
    assert "events_pg/_catalog/gone-b0" in index_keys(local)
    assert ids(index.summaries(local, "events_pg", ring)) == ["b1", "b2"]
    index.compact(local, "events_pg", ring)
    (base,) = index_keys(local)
    assert json.loads(local.read_bytes(base))["deleted"].keys() == {"b0"}
    assert ids(index.summaries(local, "events_pg", ring)) == ["b1", "b2"]


def test_writers_at_once_lose_no_record(
    local: LocalTarget, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index, "COMPACT_AT", 5)  # compactions while others append
    store(local, make_manifest(ring, "seed"), ring)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(8):
                store(local, make_manifest(ring, f"w{n}-{i}", hours=1 + i), ring)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    listed = set(ids(index.summaries(local, "events_pg", ring)))
    assert listed == {"seed"} | {f"w{n}-{i}" for n in range(4) for i in range(8)}
    assert len(index_keys(local)) <= 4 * 2 + 5  # compacted as it went


def test_reconcile_fixes_what_was_written_behind_the_index(local: LocalTarget, ring: KeyRing) -> None:
    store(local, make_manifest(ring, "b0"), ring)
    store(local, make_manifest(ring, "b1", hours=1), ring)
    index.summaries(local, "events_pg", ring)
    store(local, make_manifest(ring, "b2", hours=2))  # manifest only: the index misses it
    local.delete(f"events_pg/b0/{MANIFEST_NAME}")  # gone without a tombstone
    assert ids(index.summaries(local, "events_pg", ring)) == ["b0", "b1"]  # trusted as is
    assert index.reconcile(local, "events_pg", ring) == (1, 1)
    assert ids(index.summaries(local, "events_pg", ring)) == ["b1", "b2"]
    assert index.reconcile(local, "events_pg", ring) == (0, 0)


def test_without_a_key_ring_the_manifests_are_listed(local: LocalTarget, ring: KeyRing) -> None:
    store(local, make_manifest(ring, "b0"), ring)
    store(local, make_manifest(ring, "b1", hours=1))  # not in the index
    assert ids(index.summaries(local, "events_pg", None)) == ["b0", "b1"]


def test_sources_are_found_once_then_registered(local: LocalTarget, ring: KeyRing) -> None:
    store(local, make_manifest(ring, "a0"))
    store(local, make_manifest(ring, "m0", source="mongo_main"))
    assert index.index_sources(local) == ["events_pg", "mongo_main"]
    assert local.stat("_catalog/complete") is not None
    store(local, make_manifest(ring, "f0", source="files_docs"), ring)  # a new source publishes
    assert index.index_sources(local) == ["events_pg", "files_docs", "mongo_main"]
    assert ids(index.summaries(local, None, ring)) == ["a0", "f0", "m0"]


def test_find_backup_looks_in_each_source_not_through_every_key(local: LocalTarget, ring: KeyRing) -> None:
    for i in range(3):
        store(local, make_manifest(ring, f"pg-{i}", hours=i), ring)
    store(local, make_manifest(ring, "docs-1", source="files_docs"), ring)
    assert index.index_sources(local) == ["events_pg", "files_docs"]  # the first listing registers them
    counting = CountingTarget(local)
    found = find_backup(counting, "docs-1")  # type: ignore[arg-type]
    assert (found.source, found.backup_id, len(found.objects)) == ("files_docs", "docs-1", 1)
    assert counting.listed == ["_catalog/"]  # the source registry, never every key
    assert list(counting.reads) == ["files_docs/docs-1/manifest.json"]
    with pytest.raises(ObjectNotFound, match="holds no backup pg-9"):
        find_backup(counting, "pg-9")  # type: ignore[arg-type]
    store(local, make_manifest(ring, "pg-1", source="files_docs"), ring)
    with pytest.raises(IntegrityError, match="under several sources"):
        find_backup(counting, "pg-1")  # type: ignore[arg-type]


def test_a_summary_cannot_be_restored_or_verified(local: LocalTarget, ring: KeyRing) -> None:
    store(local, make_manifest(ring, "b0"), ring)
    (summary,) = index.summaries(local, "events_pg", ring)
    with pytest.raises(IntegrityError, match="lists no objects"):
        check_shape(summary)


# --- the DR page's API -----------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ring: KeyRing) -> TestClient:
    """The DR app over a config whose one target holds 7 published backups."""
    (tmp_path / "data").mkdir()
    config = tmp_path / "backup_config.yaml"
    config.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
        sources:
          events_pg: {{type: files, paths: [{tmp_path}/data]}}
        schedules:
          - {{name: daily_full, source: events_pg, type: FULL, cron: "@daily", targets: [disk1]}}
        """)
    )
    ring.save(tmp_path / "keys.json")
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    disk1 = LocalTarget("disk1", tmp_path / "t1")
    for i in range(7):
        store(disk1, make_manifest(ring, f"b{i}", hours=i), ring)
    return TestClient(create_app(monitor=Monitor(ttl=0)))


def test_backups_api_pages_with_a_cursor(api: TestClient) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        body = api.get("/api/backups", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [r["backup_id"] for r in body["backups"]]
        assert body["count"] == len(body["backups"]) <= 3
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"b{i}" for i in range(7)] and pages == 3
    everything = api.get("/api/backups").json()  # no limit: every row, as before
    assert everything["count"] == 7 and everything["next_cursor"] is None


def test_backups_api_since_and_source(api: TestClient) -> None:
    since = (T0 + timedelta(hours=5)).isoformat()
    rows = api.get("/api/backups", params={"since": since, "source": "events_pg"}).json()["backups"]
    assert [r["backup_id"] for r in rows] == ["b5", "b6"]
    assert api.get("/api/backups", params={"source": "other"}).json()["backups"] == []


@pytest.mark.parametrize(
    ("param", "value"),
    [("limit", "0"), ("limit", "ten"), ("limit", "10001"), ("cursor", "not-a-cursor"),
     ("since", "yesterday")],  # fmt: skip
)
def test_backups_api_refuses_bad_values_naming_the_parameter(api: TestClient, param: str, value: str) -> None:
    response = api.get("/api/backups", params={param: value})
    assert response.status_code == 400
    assert response.json()["detail"].startswith(f"{param}: ")


def test_a_restore_reads_the_manifests_of_its_chain_only(local: LocalTarget, ring: KeyRing) -> None:
    store(local, make_manifest(ring, "old-full"), ring)
    store(local, make_manifest(ring, "full", hours=1), ring)
    store(local, make_manifest(ring, "inc1", hours=2, backup_type="INCREMENTAL", parent_id="full"), ring)
    store(local, make_manifest(ring, "inc2", hours=3, backup_type="INCREMENTAL", parent_id="inc1"), ring)
    index.summaries(local, "events_pg", ring)  # the index exists
    counting = CountingTarget(local)
    chain = index.read_chain(counting, "events_pg", ring)  # type: ignore[arg-type]
    assert ids(chain) == ["full", "inc1", "inc2"]
    assert all(m.source_state == FILE_INDEX and m.objects for m in chain)  # whole manifests
    assert counting.manifest_reads() == 3  # not old-full's
    assert ids(index.read_chain(local, "events_pg", ring, "inc1")) == ["full", "inc1"]
    local.delete(f"events_pg/full/{MANIFEST_NAME}")  # behind the index's back
    with pytest.raises(IntegrityError, match="needs parent full"):
        index.read_chain(local, "events_pg", ring, "inc2")


def test_dr_monitor_sweep_reconciles_an_index_that_missed_writes(
    api: TestClient, tmp_path: Path, ring: KeyRing
) -> None:
    """dr_monitor's per-target sweep fixes the index: a published backup the index missed
    shows on the DR API afterwards, a deleted one no longer does, with no human step."""
    config = load_config(tmp_path / "backup_config.yaml").config
    disk1 = LocalTarget("disk1", tmp_path / "t1")
    index.summaries(disk1, "events_pg", ring)  # the index holds its base
    store(disk1, make_manifest(ring, "late", hours=9))  # manifest only: its index write failed
    disk1.delete(f"events_pg/b0/{MANIFEST_NAME}")  # deleted, its tombstone never written
    listed = [r["backup_id"] for r in api.get("/api/backups", params={"refresh": 1}).json()["backups"]]
    assert listed == [f"b{i}" for i in range(7)]  # the index is trusted as it stands

    sweep_targets(config, run_monitor(config, keyring=ring), keyring=ring)
    listed = [r["backup_id"] for r in api.get("/api/backups", params={"refresh": 1}).json()["backups"]]
    assert listed == [f"b{i}" for i in range(1, 7)] + ["late"]
    assert index.reconcile(disk1, "events_pg", ring) == (0, 0)  # nothing left to fix
    assert index.reconcile(disk1, "other_source", ring) == (0, 0)
    assert not list(disk1.list("other_source/"))  # no index started for a source it does not hold
