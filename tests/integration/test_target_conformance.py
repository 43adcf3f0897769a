"""The conformance suite every storage target passes (restic's backend test, one suite for
all backends); the targets are wired up in tests/integration/target_harness.py. The
catalog functions over a target are in test_catalog.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.backup.catalog.catalog import list_backups
from include.backup.errors import ObjectNotFound, TargetError
from include.backup.retention import Swept, sweep_target
from include.backup.targets.base import ObjectInfo, Target
from tests.integration.target_harness import Harness, MiB

pytestmark = pytest.mark.integration


def _put(target: Target, tmp_path: Path, key: str, data: bytes) -> ObjectInfo:
    src = tmp_path / f"src-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    src.write_bytes(data)
    return target.put(key, src)


def _read(target: Target, key: str, offset: int = 0, length: int | None = None) -> bytes:
    with target.open(key, offset, length) as f:
        return f.read()


# --- the storage contract --------------------------------------------------------------


def test_is_a_target(target: Target) -> None:
    assert isinstance(target, Target)
    assert target.name


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB + 1, 5 * MiB])
def test_round_trip(target: Target, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    info = _put(target, tmp_path, "src/b1/payload", data)
    assert info == ObjectInfo("src/b1/payload", size)
    assert target.stat("src/b1/payload") == ObjectInfo("src/b1/payload", size)
    assert _read(target, "src/b1/payload") == data
    assert target.read_bytes("src/b1/payload") == data


def test_put_bytes_round_trip(target: Target) -> None:
    info = target.put_bytes("src/b1/manifest.json", b'{"a": 1}')
    assert info.size == 8
    assert target.read_bytes("src/b1/manifest.json") == b'{"a": 1}'


def test_reads_in_small_blocks(target: Target, tmp_path: Path) -> None:
    data = os.urandom(MiB + 7)
    _put(target, tmp_path, "k", data)
    got = bytearray()
    with target.open("k") as f:
        while block := f.read(65536):
            got += block
    assert bytes(got) == data


@pytest.mark.parametrize(
    "offset,length",
    [
        (0, 10),  # head
        (1000, 5000),  # inside
        (MiB - 1, 3),  # across the 1 MiB mark
        (2 * MiB - 10, 10),  # exactly at the end
        (2 * MiB - 10, 100),  # runs past the end: truncated
        (2 * MiB, 5),  # starts at the end: empty
        (2 * MiB + 100, 5),  # starts past the end: empty
        (12345, None),  # to the end
        (0, 0),  # nothing
    ],
)
def test_ranged_read(target: Target, tmp_path: Path, offset: int, length: int | None) -> None:
    data = os.urandom(2 * MiB)
    _put(target, tmp_path, "src/b1/payload", data)
    end = None if length is None else offset + length
    assert _read(target, "src/b1/payload", offset, length) == data[offset:end]


def test_stat_missing_is_none(target: Target) -> None:
    assert target.stat("nope") is None
    assert target.stat("src/nope/payload") is None


def test_open_missing_raises_object_not_found(target: Target) -> None:
    with pytest.raises(ObjectNotFound) as exc:
        target.open("src/b1/payload")
    assert target.name in str(exc.value)
    assert "src/b1/payload" in str(exc.value)
    assert isinstance(exc.value, TargetError)
    with pytest.raises(ObjectNotFound):
        target.read_bytes("missing")


def test_list_with_prefixes(target: Target) -> None:
    keys = ["a/1/payload", "a/1/manifest.json", "a/2/payload", "ab/1/payload", "b/x", "top"]
    for key in keys:
        target.put_bytes(key, key.encode())
    assert sorted(o.key for o in target.list()) == sorted(keys)
    assert sorted(o.key for o in target.list("")) == sorted(keys)
    assert sorted(o.key for o in target.list("a/")) == ["a/1/manifest.json", "a/1/payload", "a/2/payload"]
    assert sorted(o.key for o in target.list("a")) == sorted(k for k in keys if k.startswith("a"))
    assert sorted(o.key for o in target.list("a/1/")) == ["a/1/manifest.json", "a/1/payload"]
    assert sorted(o.key for o in target.list("a/1/pay")) == ["a/1/payload"]
    assert list(target.list("zzz/")) == []
    sizes = {o.key: o.size for o in target.list()}
    assert sizes == {k: len(k) for k in keys}


def test_list_of_empty_target(target: Target) -> None:
    assert list(target.list()) == []


def test_delete(target: Target) -> None:
    target.put_bytes("src/b1/payload", b"x")
    target.put_bytes("src/b2/payload", b"y")
    target.delete("src/b1/payload")
    assert target.stat("src/b1/payload") is None
    assert [o.key for o in target.list()] == ["src/b2/payload"]
    target.delete("src/b1/payload")  # missing: fine
    target.delete("never/was/there")


def test_overwrite(target: Target, tmp_path: Path) -> None:
    _put(target, tmp_path, "k", b"first version, longer")
    _put(target, tmp_path, "k", b"second")
    assert target.read_bytes("k") == b"second"
    assert target.stat("k") == ObjectInfo("k", 6)
    target.put_bytes("k", b"third")
    assert target.read_bytes("k") == b"third"
    assert [o.key for o in target.list()] == ["k"]


def test_interrupted_upload_leaves_nothing_listed(harness: Harness, tmp_path: Path) -> None:
    target = harness.target
    harness.leave_partial_upload("src/b1/payload", b"half of it")
    assert list(target.list()) == []
    assert target.stat("src/b1/payload") is None
    assert list_backups(target) == []
    # A later complete put is unaffected by the leftover.
    _put(target, tmp_path, "src/b1/payload", b"all of it")
    assert [o.key for o in target.list()] == ["src/b1/payload"]
    assert target.read_bytes("src/b1/payload") == b"all of it"


def test_interrupted_overwrite_keeps_the_old_object(harness: Harness) -> None:
    target = harness.target
    target.put_bytes("k", b"old")
    harness.leave_partial_upload("k", b"new but cut")
    assert target.read_bytes("k") == b"old"
    assert [o.key for o in target.list()] == ["k"]


def test_put_of_missing_source_file(target: Target, tmp_path: Path) -> None:
    with pytest.raises(TargetError) as exc:
        target.put("src/b1/payload", tmp_path / "does-not-exist")
    assert target.name in str(exc.value)
    assert list(target.list()) == []


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/abs", "/etc/passwd", "", "a//b", "./a", "a/./b", "a/.."]
)
def test_invalid_keys_are_rejected(target: Target, key: str) -> None:
    for call in (
        lambda: target.put_bytes(key, b"x"),
        lambda: target.open(key),
        lambda: target.stat(key),
        lambda: target.delete(key),
    ):
        with pytest.raises(TargetError) as exc:
            call()
        assert not isinstance(exc.value, ObjectNotFound)
        assert target.name in str(exc.value)


@pytest.mark.parametrize("prefix", ["../", "/abs", "a/../b"])
def test_invalid_prefixes_are_rejected(target: Target, prefix: str) -> None:
    with pytest.raises(TargetError):
        list(target.list(prefix))


def test_free_bytes(target: Target) -> None:
    free = target.free_bytes()
    assert free is None or free > 0


# --- local disk only: failure injection the generic suite cannot do -----------------------


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_local_disk_full_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from include.backup.targets import local

    target = local.LocalTarget("nas", tmp_path / "root")
    target.put_bytes("src/b1/payload", b"old")

    def half_then_enospc(src, dst):  # type: ignore[no-untyped-def]
        dst.write(src.read(10))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "_copy_stream", half_then_enospc)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(100_000))
    with pytest.raises(TargetError) as exc:
        target.put("src/b1/payload", src)
    message = str(exc.value)
    assert "'nas'" in message and "no space left" in message
    assert str(tmp_path / "root" / "src" / "b1" / "payload") in message
    assert _all_files(tmp_path / "root") == ["src/b1/payload"]  # no temp file left
    assert target.read_bytes("src/b1/payload") == b"old"


def test_local_put_killed_midway_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from include.backup.targets import local

    target = local.LocalTarget("nas", tmp_path / "root")

    def interrupted(src, dst):  # type: ignore[no-untyped-def]
        dst.write(src.read(10))
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "_copy_stream", interrupted)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(1000))
    with pytest.raises(KeyboardInterrupt):
        target.put("src/b1/payload", src)
    assert _all_files(tmp_path / "root") == []
    assert list(target.list()) == []


def test_local_delete_prunes_empty_folders_but_not_the_root(tmp_path: Path) -> None:
    from include.backup.targets.local import LocalTarget

    root = tmp_path / "root"
    target = LocalTarget("nas", root)
    target.put_bytes("src/b1/payload", b"x")
    target.put_bytes("src/b1/manifest.json", b"{}")
    target.put_bytes("src/b2/payload", b"y")
    target.delete("src/b1/payload")
    assert (root / "src/b1").is_dir()
    target.delete("src/b1/manifest.json")
    assert not (root / "src/b1").exists() and (root / "src/b2").is_dir()
    target.delete("src/b2/payload")
    assert root.is_dir() and list(root.iterdir()) == []
    target.delete("src")  # a folder is not an object: nothing happens
    assert root.is_dir()


def test_local_refuses_temp_like_keys_and_works_before_the_root_exists(tmp_path: Path) -> None:
    from include.backup.targets.base import temp_name
    from include.backup.targets.local import LocalTarget

    target = LocalTarget("nas", tmp_path / "not" / "yet")
    assert list(target.list()) == []
    assert target.stat("a") is None
    assert (target.free_bytes() or 0) > 0
    with pytest.raises(TargetError, match="temporary"):
        target.put_bytes(f"src/{temp_name('payload')}", b"x")
    with pytest.raises(ValueError):
        target.open("a", -1)


def test_build_target(tmp_path: Path) -> None:
    from include.backup.config.schema import BackupConfig
    from include.backup.targets import build_target, build_targets
    from include.backup.targets.local import LocalTarget

    config = BackupConfig.model_validate(
        {
            "targets": {
                "disk": {"type": "local", "path": str(tmp_path)},
            }
        }
    )
    built = build_target("disk", config.targets["disk"])
    assert isinstance(built, LocalTarget) and built.name == "disk" and built.root == tmp_path
    # A kind without a builder (s3 today, until its module lands) is refused by name.
    with pytest.raises(TargetError, match="target type 'tape' is not implemented in this version"):
        build_target("vault", SimpleNamespace(type="tape"))
    assert [t.name for t in build_targets(config, ["disk"])] == ["disk"]
    with pytest.raises(TargetError, match="no target named 'nope'"):
        build_targets(config, ["disk", "nope"])


def test_object_not_found_is_also_file_not_found(target: Target) -> None:
    with pytest.raises(FileNotFoundError):
        target.open("missing")


# --- the orphan sweep's contract (include/backup/retention.py) --------------------------

GOOD, ORPHAN, RUNNING, KILLED = (f"daily-20200101T00000{i}Z-abcde{i}" for i in range(4))
LATER = datetime.now(UTC) + timedelta(days=3)  # the leftovers made now are older than the grace then
YOUNG = f"daily-{LATER - timedelta(hours=1):%Y%m%dT%H%M%S}Z-abcdef"  # a run of an hour before


def _stock_leftovers(harness: Harness) -> None:
    target = harness.target
    target.put_bytes(f"src/{GOOD}/payload", b"sealed")  # a backup: payload and manifest
    target.put_bytes(f"src/{GOOD}/manifest.json", b"{}")
    target.put_bytes(f"src/{ORPHAN}/payload", b"sealed")  # its manifest never arrived
    target.put_bytes(f"src/{RUNNING}/payload", b"sealed")  # its run still in flight
    target.put_bytes(f"src/{YOUNG}/payload", b"sealed")  # within the grace
    target.put_bytes("src/_catalog/daily-20200101T000000Z-abcdef", b"index")  # never '_'
    target.put_bytes("src/not-ours/payload", b"someone else's")  # never a foreign name
    harness.leave_partial_upload(f"src/{KILLED}/payload", b"half of it")  # a killed put
    harness.leave_partial_upload(f"src/{RUNNING}/manifest.json", b"half of it")
    harness.leave_partial_upload(f"src/{YOUNG}/manifest.json", b"half of it")


def _sweep(target: Target, **kw: bool) -> Swept:
    return sweep_target(
        target, "src", now=LATER, grace=timedelta(hours=48), in_flight=lambda: {RUNNING}, **kw
    )


def test_sweep_removes_orphans_and_killed_uploads_only(harness: Harness) -> None:
    target = harness.target
    _stock_leftovers(harness)
    kept = sorted(o.key for o in target.list("") if ORPHAN not in o.key)
    assert _sweep(target, dry_run=True).orphans == [ORPHAN]
    assert target.stat(f"src/{ORPHAN}/payload") is not None
    swept = _sweep(target)
    assert swept.orphans == [ORPHAN]
    if target.capabilities.partial_uploads:
        # Found and removed, only the one past the grace and of no run in flight.
        assert [k.split("/")[1] for k in swept.partial_uploads] == [KILLED]
        left = sorted(u.key.split("/")[1] for u in target.list_partial_uploads("src/"))
        assert left == sorted([RUNNING, YOUNG])
    else:
        # Azure's uncommitted blocks and GCS's resumable sessions cannot be listed; the
        # store drops them after a week (docs/targets.md).
        assert swept.partial_uploads == [] and target.list_partial_uploads("src/") == []
    assert sorted(o.key for o in target.list("")) == kept
    assert _sweep(target) == Swept()  # nothing left to do


def test_partial_uploads_listed_and_removed(harness: Harness) -> None:
    target = harness.target
    harness.leave_partial_upload("src/b1/payload", b"half of it")
    found = target.list_partial_uploads("src/")
    if not target.capabilities.partial_uploads:
        assert found == []
        return
    # (Its time is whatever the store reports: moto gives every multipart upload the same.)
    assert [u.key.rpartition("/")[0] for u in found] == ["src/b1"] and found[0].started_at is not None
    assert target.list_partial_uploads("other/") == []
    target.remove_partial_upload(found[0])
    target.remove_partial_upload(found[0])  # already gone: no error
    assert target.list_partial_uploads("") == [] and list(target.list("")) == []
