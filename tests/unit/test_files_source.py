"""Files source: FULL and INCREMENTAL dumps, chain restores, safety of extraction."""

from __future__ import annotations

import io
import logging
import os
import socket
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from include.backup.catalog import signing
from include.backup.catalog.manifest import Manifest, StoredObject
from include.backup.config.schema import FilesSource as FilesConfig
from include.backup.errors import IntegrityError, RestoreRefused, SourceError
from include.backup.sources.base import DumpResult, Source
from include.backup.sources.files import (
    FilesSource,
    compare_trees,
    tree_digest,
    tree_mtimes,
)
from include.backup.sources.files import dump as files_dump
from include.backup.sources.files import headers as files_headers

EXCLUDES = ["*.tmp", "*.log", "node_modules/"]
NON_ASCII = "résumé ünïcode ✓.txt"
BASE_NS = 1_700_000_000_123_456_789  # sub-second digits on purpose: they must survive

# Entries of the uploads tree the excludes must drop (relative to the uploads root).
EXCLUDED = {"scratch.tmp", "a/b/trace.log", "a/node_modules"}


# --- helpers ----------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _set_mtimes(root: Path) -> None:
    """Give every entry a distinct, sub-second mtime; directories last, deepest first, so
    writing children does not move them afterwards."""
    entries = sorted(root.rglob("*"), key=lambda p: (len(p.parts), str(p)))
    dirs = [p for p in entries if p.is_dir() and not p.is_symlink()]
    for i, p in enumerate(entries):
        if p not in dirs:
            ns = BASE_NS + i * 1_000_000_007
            os.utime(p, ns=(ns, ns), follow_symlinks=False)
    for i, p in enumerate(reversed(dirs + [root])):
        ns = BASE_NS - (i + 1) * 3_000_000_011
        os.utime(p, ns=(ns, ns))


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """An uploads tree plus a single config file, the two configured roots."""
    uploads = tmp_path / "data" / "uploads"
    _write(uploads / "top.txt", b"top level\n")
    _write(uploads / "a" / "b" / "c" / "deep.bin", os.urandom(70_000))
    _write(uploads / "a" / "secret.key", b"private\n", 0o600)
    _write(uploads / "a" / "run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    _write(uploads / "ünï" / NON_ASCII, "héllo wörld ✓\n".encode())
    _write(
        uploads / ("long-" + "x" * 120) / ("name-" + "y" * 150 + ".txt"), b"long path\n"
    )
    (uploads / "empty").mkdir()
    (uploads / "locked").mkdir()
    _write(uploads / "docs" / "guide.md", b"# guide\n")
    os.symlink("../top.txt", uploads / "docs" / "rel-link")
    os.symlink("/etc/hostname", uploads / "docs" / "abs-link")
    os.symlink("does-not-exist", uploads / "docs" / "dangling")
    # Excluded: by basename glob, by glob in a subdirectory, a whole directory.
    _write(uploads / "scratch.tmp", b"tmp")
    _write(uploads / "a" / "b" / "trace.log", b"log")
    _write(uploads / "a" / "node_modules" / "pkg" / "index.js", b"js")
    # "node_modules/" only matches directories: a file of that name stays.
    _write(uploads / "docs" / "node_modules", b"a file, not the dir")
    (uploads / "locked").chmod(0o750)

    config = tmp_path / "etc" / "app.conf"
    _write(config, b"[app]\nkey = value\n", 0o640)

    _set_mtimes(tmp_path / "data")
    os.utime(config, ns=(BASE_NS, BASE_NS))
    return {"root": tmp_path, "uploads": uploads, "config": config}


def make_source(
    *paths: Path,
    exclude: list[str] | None = None,
    name: str = "uploads",
    on_changed: str = "fail",
) -> FilesSource:
    cfg = FilesConfig(
        type="files",
        paths=[str(p) for p in paths],
        exclude=EXCLUDES if exclude is None else exclude,
        on_changed=on_changed,
    )
    return FilesSource(name, cfg)


def manifest_for(
    result: DumpResult, backup_id: str, source: str = "uploads"
) -> Manifest:
    # Round-trip through JSON like a real catalog does: the index must survive it.
    m = Manifest(
        backup_id=backup_id,
        schedule="hourly_files",
        source=source,
        source_type="files",
        backup_type=result.backup_type,
        parent_id=result.parent_id,
        started_at=datetime.now(UTC),
        payload_format=result.payload_format,
        stats=result.stats,
        source_state=result.source_state,
        incomplete=result.incomplete,
    )
    return Manifest.from_json(m.to_json())


def backup(
    src: FilesSource, kind: str, parent: Manifest | None, backup_id: str
) -> tuple[Manifest, bytes]:
    out = io.BytesIO()
    result = src.dump(kind, out, parent)
    return manifest_for(result, backup_id, src.name), out.getvalue()


def restore(
    src: FilesSource, chain: list[tuple[Manifest, bytes]], into: Path, **kw: Any
) -> dict:
    return src.restore([(m, io.BytesIO(b)) for m, b in chain], str(into), **kw)


def under(into: Path, original: Path) -> Path:
    """Where ``original`` lands in a restore into ``into``."""
    return into / str(original).lstrip("/")


def expected(root: Path, excluded: set[str] = frozenset()) -> dict[str, Any]:
    return {
        k: v
        for k, v in tree_digest(root).items()
        if not any(k == e or k.startswith(e + "/") for e in excluded)
    }


def expected_mtimes(root: Path, excluded: set[str] = frozenset()) -> dict[str, int]:
    return {
        k: v
        for k, v in tree_mtimes(root).items()
        if not any(k == e or k.startswith(e + "/") for e in excluded)
    }


def member_names(payload: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r|") as tar:
        return [m.name for m in tar]


def snapshot(root: Path, excluded: set[str] = frozenset()) -> tuple[dict, dict]:
    return expected(root, excluded), expected_mtimes(root, excluded)


def assert_restored(into: Path, root: Path, snap: tuple[dict, dict]) -> None:
    digest, mtimes = snap
    got = under(into, root)
    assert compare_trees(digest, tree_digest(got)) == []
    assert compare_trees(mtimes, tree_mtimes(got)) == []


# --- FULL -------------------------------------------------------------------------------------


def test_implements_source_protocol(tree: dict[str, Path]) -> None:
    assert isinstance(make_source(tree["uploads"]), Source)


def test_full_roundtrip_keeps_content_modes_mtimes_links(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    uploads, config = tree["uploads"], tree["config"]
    snap = snapshot(uploads, EXCLUDED)
    src = make_source(uploads, config)

    full = backup(src, "FULL", None, "b1")
    m = full[0]
    assert m.backup_type == "FULL" and m.parent_id is None and m.payload_format == "tar"
    assert "deleted" not in m.source_state

    into = tmp_path / "restore"
    stats = restore(src, [full], into)
    assert_restored(into, uploads, snap)

    # Spot checks of what the digest comparison covers, to make failures readable.
    got = under(into, uploads)
    assert (got / "a" / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (got / "a" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (got / "locked").stat().st_mode & 0o777 == 0o750
    assert os.readlink(got / "docs" / "rel-link") == "../top.txt"
    assert os.readlink(got / "docs" / "abs-link") == "/etc/hostname"
    assert os.readlink(got / "docs" / "dangling") == "does-not-exist"
    assert (got / "ünï" / NON_ASCII).read_text() == "héllo wörld ✓\n"
    assert (got / "empty").is_dir() and not any((got / "empty").iterdir())
    assert (got / "docs" / "node_modules").is_file()
    assert (got / "top.txt").stat().st_mtime_ns == (
        uploads / "top.txt"
    ).stat().st_mtime_ns
    assert (got / "top.txt").stat().st_mtime_ns % 1_000_000_000 != 0

    # The second root, a single file.
    conf = under(into, config)
    assert conf.read_bytes() == config.read_bytes()
    assert conf.stat().st_mode & 0o777 == 0o640
    assert conf.stat().st_mtime_ns == BASE_NS

    # Stats: the dump's tree counts and the restore's counts agree.
    n_files = sum(1 for v in snap[0].values() if v[0] == "f") + 1  # + app.conf
    n_links = sum(1 for v in snap[0].values() if v[0] == "l")
    n_dirs = sum(1 for v in snap[0].values() if v[0] == "d") + 1  # + the uploads root
    assert (m.stats["files"], m.stats["symlinks"], m.stats["dirs"]) == (
        n_files,
        n_links,
        n_dirs,
    )
    assert m.stats["excluded"] == 3
    assert m.stats["deleted"] == 0
    assert {k: stats[k] for k in ("files", "dirs", "symlinks", "bytes")} == {
        "files": m.stats["tree_files"],
        "dirs": m.stats["tree_dirs"],
        "symlinks": m.stats["tree_symlinks"],
        "bytes": m.stats["tree_bytes"],
    }
    assert (
        stats["bytes"]
        == m.stats["bytes"]
        == sum(v[2] for v in snap[0].values()) + config.stat().st_size
    )


def test_payload_is_a_pax_tar_with_relative_names_dirs_first(
    tree: dict[str, Path],
) -> None:
    uploads = tree["uploads"]

    class WriteOnly(io.RawIOBase):  # no seek, no tell: the dump must stream
        def __init__(self) -> None:
            self.buf = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.buf += b
            return len(b)

    sink = WriteOnly()
    result = make_source(uploads).dump("FULL", sink, None)
    payload = bytes(sink.buf)
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
        members = tar.getmembers()
    # PAX: every member carries an exact "mtime" record (sub-second, to the nanosecond).
    assert all("mtime" in m.pax_headers for m in members)
    names = [m.name for m in members]
    prefix = str(uploads).lstrip("/")
    assert names[0] == prefix
    assert all(n == prefix or n.startswith(prefix + "/") for n in names)
    assert not any(n.startswith("/") for n in names)
    assert f"{prefix}/ünï/{NON_ASCII}" in names
    # Each directory comes before everything under it.
    seen: set[str] = set()
    for n in names:
        parent = n.rsplit("/", 1)[0]
        assert n == prefix or parent in seen, f"{n} precedes its directory"
        seen.add(n)
    # The index describes the tree, keyed like the members.
    index = result.source_state["file_index"]
    assert set(index) == set(names)
    assert (
        index[f"{prefix}/docs/rel-link"][0] == "l"
        and index[f"{prefix}/docs/rel-link"][4] == "../top.txt"
    )
    assert index[f"{prefix}/a/secret.key"][3] == 0o600


def test_exclude_semantics(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    for rel in [
        "keep.txt",
        "x.tmp",
        "sub/y.tmp",
        "sub/app.log",
        "cache/big.bin",
        "sub/cache/also.bin",
        "node_modules/a.js",
        "sub/node_modules/b.js",
        "sub/notes/node_modules",  # a file: "node_modules/" must not match it
        "build/out/result.bin",
        "build/keep.txt",
    ]:
        _write(root / rel, b"x")
    src = make_source(
        root,
        exclude=[
            "*.tmp",
            "*.log",
            "node_modules/",
            "cache",
            "build/out/",
            str(root / "sub" / "cache") + "/",
        ],
    )
    result = src.dump("FULL", io.BytesIO(), None)
    prefix = str(root).lstrip("/")
    kept = {
        k[len(prefix) + 1 :] for k in result.source_state["file_index"] if k != prefix
    }
    assert kept == {
        "keep.txt",
        "sub",
        "sub/notes",
        "sub/notes/node_modules",
        "build",
        "build/keep.txt",
    }
    # x.tmp, sub/y.tmp, sub/app.log, cache, sub/cache, node_modules, sub/node_modules, build/out
    assert result.stats["excluded"] == 8


def test_missing_path_is_a_clear_error(tmp_path: Path, tree: dict[str, Path]) -> None:
    missing = tmp_path / "nope"
    src = make_source(tree["uploads"], missing, name="uploads")
    out = io.BytesIO()
    with pytest.raises(SourceError) as e:
        src.dump("FULL", out, None)
    assert "uploads" in str(e.value) and str(missing) in str(e.value)
    assert out.getvalue() == b""  # checked before anything was written


def test_unsupported_backup_type(tree: dict[str, Path]) -> None:
    with pytest.raises(SourceError, match="FULL or INCREMENTAL"):
        make_source(tree["uploads"]).dump("TRANSACTION_LOG", io.BytesIO(), None)


def test_special_files_skipped_with_warning(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    _write(root / "f.txt", b"x")
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock_path = root / "s.sock"
    try:
        sock.bind(str(sock_path))
    except OSError:  # path too long for AF_UNIX in some tmp dirs
        sock_path = None
    try:
        result = make_source(root).dump("FULL", io.BytesIO(), None)
    finally:
        sock.close()
    skipped = result.stats["skipped_special"]
    assert str(root / "pipe") in skipped
    if sock_path:
        assert str(sock_path) in skipped
    assert any("fifo" in w for w in result.stats["warnings"])
    assert result.stats["files"] == 1


# --- files changing during the dump ----------------------------------------------------------


def test_vanished_file_with_on_changed_warn_is_skipped_and_marks_incomplete(
    tree: dict[str, Path], monkeypatch, tmp_path: Path
) -> None:
    uploads = tree["uploads"]
    victim = uploads / "top.txt"
    real_open = os.open

    def flaky_open(
        path, flags, *a, **kw
    ):  # the file disappears between listing and open
        if str(path) == str(victim):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(files_dump.os, "open", flaky_open)
    src = make_source(uploads, on_changed="warn")
    m, payload = backup(src, "FULL", None, "b1")
    monkeypatch.undo()

    assert m.stats["vanished"] == [str(victim)] and m.stats["vanished_count"] == 1
    assert m.incomplete
    assert f"{victim} (vanished)" in m.stats["warnings"][0]
    key = str(victim).lstrip("/")
    assert key not in m.source_state["file_index"]
    assert key not in member_names(payload)
    restore(src, [(m, payload)], tmp_path / "r")  # the archive is intact
    assert not under(tmp_path / "r", victim).exists()


def test_file_shrinking_while_read_is_padded_and_taken_again(
    tree: dict[str, Path], monkeypatch, tmp_path: Path
) -> None:
    uploads = tree["uploads"]
    victim = uploads / "a" / "b" / "c" / "deep.bin"
    original = victim.read_bytes()
    real_init = files_headers._ExactSizeReader.__init__

    def shrink_then_read(self, fd: int, size: int) -> None:
        if size == len(original):  # header already announced the full size
            os.truncate(victim, 1000)
        real_init(self, fd, size)

    monkeypatch.setattr(files_headers._ExactSizeReader, "__init__", shrink_then_read)
    src = make_source(uploads, on_changed="warn")
    full = backup(src, "FULL", None, "b1")
    monkeypatch.undo()

    assert full[0].stats["changed_during_read"] == [str(victim)]
    assert full[0].incomplete
    into = tmp_path / "r1"
    restore(src, [full], into)  # the rest of the archive is still readable
    got = under(into, victim).read_bytes()
    assert got == original[:1000] + b"\0" * (len(original) - 1000)
    assert (under(into, uploads) / "top.txt").read_bytes() == b"top level\n"

    # The index kept the pre-read stat, so the next incremental takes the file again.
    inc = backup(src, "INCREMENTAL", full[0], "b2")
    assert not inc[0].incomplete
    assert str(victim).lstrip("/") in member_names(inc[1])
    into2 = tmp_path / "r2"
    restore(src, [full, inc], into2)
    assert under(into2, victim).read_bytes() == original[:1000]


def _renamed_away_after(monkeypatch, root: Path, opened: int) -> None:
    """Rename ``root`` away once ``opened`` files were opened: the issue's case, made
    deterministic (between listing and reading, not by timing)."""
    real_open, count = os.open, [0]

    def open_then_rename(path, flags, *a, **kw):
        count[0] += 1
        if count[0] == opened + 1:
            os.rename(root, f"{root}.moved")
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(files_dump.os, "open", open_then_rename)


@pytest.fixture
def wide_tree(tmp_path: Path) -> Path:
    """440 files in 22 folders."""
    root = tmp_path / "data"
    for i in range(22):
        for j in range(20):
            _write(root / f"d{i:02}" / f"f{j:02}.txt", b"x" * 100)
    return root


def test_tree_renamed_away_mid_dump_fails_naming_the_paths(
    wide_tree: Path, monkeypatch
) -> None:
    # Before: 66 of 440 files published as a good backup, warnings [].
    _renamed_away_after(monkeypatch, wide_tree, 66)
    with pytest.raises(SourceError) as err:
        make_source(wide_tree, exclude=[]).dump("FULL", io.BytesIO(), None)
    msg = str(err.value)
    assert "32 path(s) vanished or changed" in msg  # 12 files of d03, then 20 folders
    assert f"{wide_tree}/d03/f06.txt (vanished)" in msg and "and 27 more" in msg
    assert "sources.uploads.on_changed: warn" in msg and "sources.uploads.exclude" in msg


def test_tree_renamed_away_with_on_changed_warn_is_published_incomplete(
    wide_tree: Path, monkeypatch, tmp_path: Path
) -> None:
    _renamed_away_after(monkeypatch, wide_tree, 66)
    src = make_source(wide_tree, exclude=[], on_changed="warn")
    m, payload = backup(src, "FULL", None, "b1")
    monkeypatch.undo()

    assert m.incomplete and m.stats["files"] == 66
    assert m.stats["warnings"][0].startswith("incomplete: 32 path(s) vanished")
    assert m.stats["vanished_count"] == 32 and f"{wide_tree}/d21" in m.stats["vanished"]
    restore(src, [(m, payload)], tmp_path / "r")
    assert len(list(under(tmp_path / "r", wide_tree).rglob("*.txt"))) == 66


def test_file_growing_while_read_fails_by_default(
    tree: dict[str, Path], monkeypatch
) -> None:
    victim = tree["uploads"] / "a" / "b" / "c" / "deep.bin"
    real_init = files_headers._ExactSizeReader.__init__

    def grow_then_read(self, fd: int, size: int) -> None:
        if size == 70_000:
            with open(victim, "ab") as f:
                f.write(b"more")
        real_init(self, fd, size)

    monkeypatch.setattr(files_headers._ExactSizeReader, "__init__", grow_then_read)
    with pytest.raises(SourceError, match=rf"1 path\(s\).*{victim} \(changed while read\)"):
        make_source(tree["uploads"]).dump("FULL", io.BytesIO(), None)


def test_incomplete_mark_is_signed_and_absent_from_complete_manifests(
    tree: dict[str, Path], monkeypatch
) -> None:
    kek = os.urandom(32)
    complete, _ = backup(make_source(tree["uploads"]), "FULL", None, "b1")
    signing.sign(complete, "k1", kek)
    # Not in the JSON nor in the signed bytes: manifests signed before the field existed
    # keep their signature, and earlier versions still read complete manifests.
    assert b'"incomplete"' not in complete.to_json()
    assert b'"incomplete"' not in signing.signed_bytes(complete)

    monkeypatch.setattr(files_dump.os, "open", _vanishing_open(tree["uploads"] / "top.txt"))
    partial, _ = backup(make_source(tree["uploads"], on_changed="warn"), "FULL", None, "b2")
    partial.objects = [StoredObject(name="payload", size=1, sha256="0" * 64)]
    signing.sign(partial, "k1", kek)
    assert b'"incomplete": true' in partial.to_json()
    assert signing.authenticate(partial, lambda key_id: kek) is signing.AuthStatus.SIGNED
    # Dropping the mark (to pass the backup off as complete) breaks the signature.
    stripped = Manifest.from_json(partial.to_json().replace(b'"incomplete": true,', b""))
    assert not stripped.incomplete
    with pytest.raises(IntegrityError, match="failed authentication"):
        signing.authenticate(stripped, lambda key_id: kek)


def test_on_changed_takes_fail_or_warn_and_defaults_to_fail() -> None:
    assert FilesConfig(type="files", paths=["/srv"]).on_changed == "fail"
    with pytest.raises(ValidationError, match="on_changed"):
        FilesConfig(type="files", paths=["/srv"], on_changed="ignore")


def _vanishing_open(victim: Path) -> Any:
    real_open = os.open

    def flaky_open(path, flags, *a, **kw):
        if str(path) == str(victim):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, flags, *a, **kw)

    return flaky_open


# --- INCREMENTAL ------------------------------------------------------------------------------


def test_incremental_without_parent_takes_full(tree: dict[str, Path], caplog) -> None:
    src = make_source(tree["uploads"], name="uploads")
    with caplog.at_level(logging.WARNING):
        result = src.dump("INCREMENTAL", io.BytesIO(), None)
    assert result.backup_type == "FULL" and result.parent_id is None
    assert (
        "no parent backup found for incremental of source uploads; taking a full backup"
        in caplog.text
    )


def test_incremental_of_unchanged_tree_has_only_directories(
    tree: dict[str, Path],
) -> None:
    src = make_source(tree["uploads"])
    full = backup(src, "FULL", None, "b1")
    m, _ = backup(src, "INCREMENTAL", full[0], "b2")
    assert m.backup_type == "INCREMENTAL" and m.parent_id == "b1"
    assert m.stats["files"] == 0 and m.stats["symlinks"] == 0 and m.stats["bytes"] == 0
    assert m.stats["changed"] == 0 and m.stats["deleted"] == 0
    assert m.stats["dirs"] == full[0].stats["dirs"]
    assert m.source_state["deleted"] == []
    assert m.source_state["file_index"] == full[0].source_state["file_index"]


def _touch(path: Path, data: bytes, ns: int) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(ns, ns))


def test_incremental_chain_restores_the_last_state(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    uploads, config = tree["uploads"], tree["config"]
    src = make_source(uploads, config)
    chain = [backup(src, "FULL", None, "b0")]
    snaps = [snapshot(uploads, EXCLUDED)]

    # inc 1: modify a file, add a file, delete a file, change a mode only.
    _touch(uploads / "top.txt", b"top level, edited\n", BASE_NS + 10**12)
    _write(uploads / "docs" / "new.txt", b"brand new\n")
    (uploads / "docs" / "guide.md").unlink()
    (uploads / "a" / "run.sh").chmod(0o700)
    chain.append(backup(src, "INCREMENTAL", chain[-1][0], "b1"))
    snaps.append(snapshot(uploads, EXCLUDED))
    m1, p1 = chain[-1]
    prefix = str(uploads).lstrip("/")
    changed = {
        n for n in member_names(p1) if m1.source_state["file_index"][n][0] != "d"
    }
    assert changed == {
        f"{prefix}/top.txt",
        f"{prefix}/docs/new.txt",
        f"{prefix}/a/run.sh",
    }
    assert m1.source_state["deleted"] == [f"{prefix}/docs/guide.md"]
    assert m1.parent_id == "b0" and m1.stats["deleted"] == 1

    # inc 2: delete a directory with contents, replace a file by a symlink, and a symlink
    # by a directory.
    import shutil

    shutil.rmtree(uploads / "a" / "b")
    (uploads / "top.txt").unlink()
    os.symlink("docs/new.txt", uploads / "top.txt")
    (uploads / "docs" / "rel-link").unlink()
    _write(uploads / "docs" / "rel-link" / "inside.txt", b"now a directory\n")
    chain.append(backup(src, "INCREMENTAL", chain[-1][0], "b2"))
    snaps.append(snapshot(uploads, EXCLUDED))
    m2 = chain[-1][0]
    # A deleted directory is listed once, not with everything under it.
    assert m2.source_state["deleted"] == [f"{prefix}/a/b"]

    # inc 3: a directory becomes a file, the non-ASCII file is deleted, the config changes.
    shutil.rmtree(uploads / "empty")
    _write(uploads / "empty", b"was a directory\n")
    (uploads / "ünï" / NON_ASCII).unlink()
    _touch(config, b"[app]\nkey = other\n", BASE_NS + 5)
    chain.append(backup(src, "INCREMENTAL", chain[-1][0], "b3"))
    snaps.append(snapshot(uploads, EXCLUDED))
    assert chain[-1][0].source_state["deleted"] == [f"{prefix}/ünï/{NON_ASCII}"]

    # Every prefix of the chain restores the tree as it was at that backup.
    for n in range(1, len(chain) + 1):
        into = tmp_path / f"restore{n}"
        stats = restore(src, chain[:n], into)
        assert_restored(into, uploads, snaps[n - 1])
        last = chain[n - 1][0].stats
        assert (
            stats["files"] == last["tree_files"]
            and stats["bytes"] == last["tree_bytes"]
        )
        assert (
            stats["dirs"] == last["tree_dirs"]
            and stats["symlinks"] == last["tree_symlinks"]
        )
    assert under(tmp_path / "restore4", config).read_bytes() == b"[app]\nkey = other\n"
    assert not (under(tmp_path / "restore4", uploads) / "a" / "b").exists()


def test_non_utf8_file_names_survive_manifest_and_deletion(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    weird = os.fsdecode(root) + "/" + os.fsdecode(b"latin1-caf\xe9.txt")
    with open(weird, "wb") as f:
        f.write(b"bytes name")
    _write(root / "ok.txt", b"ok")
    src = make_source(root)
    full = backup(src, "FULL", None, "b1")  # manifest_for round-trips through JSON
    into = tmp_path / "r1"
    restore(src, [full], into)
    assert compare_trees(tree_digest(root), tree_digest(under(into, root))) == []

    os.unlink(weird)
    inc = backup(src, "INCREMENTAL", full[0], "b2")
    assert inc[0].stats["deleted"] == 1 and inc[0].stats["files"] == 0
    into2 = tmp_path / "r2"
    restore(src, [full, inc], into2)
    assert compare_trees(tree_digest(root), tree_digest(under(into2, root))) == []


# --- restore refusals and safety -------------------------------------------------------------


def test_chain_with_a_gap_or_wrong_start_is_refused(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    uploads = tree["uploads"]
    src = make_source(uploads)
    full = backup(src, "FULL", None, "b0")
    _write(uploads / "n1.txt", b"1")
    inc1 = backup(src, "INCREMENTAL", full[0], "b1")
    _write(uploads / "n2.txt", b"2")
    inc2 = backup(src, "INCREMENTAL", inc1[0], "b2")

    into = tmp_path / "r"
    with pytest.raises(RestoreRefused, match="gap in backup chain.*b2.*b1"):
        restore(src, [full, inc2], into)
    with pytest.raises(RestoreRefused, match="must start with a FULL"):
        restore(src, [inc1, inc2], into)
    with pytest.raises(RestoreRefused, match="gap"):
        restore(src, [full, inc2, inc1], into)
    with pytest.raises(RestoreRefused, match="empty"):
        restore(src, [], into)
    assert not into.exists()  # refused before touching anything


def test_non_files_manifest_refused(tree: dict[str, Path], tmp_path: Path) -> None:
    src = make_source(tree["uploads"])
    m, payload = backup(src, "FULL", None, "b0")
    pg = m.model_copy(
        update={"source_type": "postgres", "payload_format": "pg_dump-custom"}
    )
    with pytest.raises(RestoreRefused, match="files/tar"):
        restore(src, [(pg, payload)], tmp_path / "r")


def test_non_empty_destination_refused_unless_overwrite(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    uploads = tree["uploads"]
    src = make_source(uploads)
    full = backup(src, "FULL", None, "b0")
    into = tmp_path / "r"
    _write(into / "already-here.txt", b"keep me")
    with pytest.raises(RestoreRefused, match="not empty.*overwrite"):
        restore(src, [full], into)
    assert not under(into, uploads).exists()

    # An existing file in the way is replaced, not written through.
    _write(under(into, uploads) / "top.txt", b"stale")
    restore(src, [full], into, overwrite=True)
    assert (under(into, uploads) / "top.txt").read_bytes() == b"top level\n"
    assert (into / "already-here.txt").read_bytes() == b"keep me"

    # An empty existing directory is fine without overwrite.
    (tmp_path / "empty-dest").mkdir()
    restore(src, [full], tmp_path / "empty-dest")


def test_overwrite_never_writes_through_an_existing_symlink(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    uploads = tree["uploads"]
    src = make_source(uploads)
    full = backup(src, "FULL", None, "b0")
    outside = tmp_path / "outside"
    outside.mkdir()
    # A symlink where the backup has a directory is replaced by that directory.
    into = tmp_path / "r"
    got = under(into, uploads)
    got.parent.mkdir(parents=True)
    os.symlink(outside, got)  # data/uploads -> outside
    restore(src, [full], into, overwrite=True)
    assert got.is_dir() and not got.is_symlink()
    assert list(outside.iterdir()) == []

    # A symlink above anything in the backup (an implicit parent) is refused.
    into2 = tmp_path / "r2"
    into2.mkdir()
    first = str(uploads).lstrip("/").split("/")[0]
    os.symlink(outside, into2 / first)
    with pytest.raises(IntegrityError, match="symlink"):
        restore(src, [full], into2, overwrite=True)
    assert list(outside.iterdir()) == []


def _crafted(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _crafted_manifest() -> Manifest:
    return Manifest(
        backup_id="evil",
        schedule="s",
        source="uploads",
        source_type="files",
        backup_type="FULL",
        started_at=datetime.now(UTC),
        payload_format="tar",
    )


def _info(
    name: str, type_: bytes = tarfile.REGTYPE, linkname: str = ""
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.linkname = linkname
    ti.mode = 0o644
    return ti


@pytest.mark.parametrize(
    "members, match",
    [
        ([(_info("../escape.txt"), b"pwned")], r"'\.\.'"),
        ([(_info("ok/../../escape.txt"), b"pwned")], r"'\.\.'"),
        ([(_info("/tmp/abs-escape.txt"), b"pwned")], "absolute"),
        # A link to outside is allowed as a link, but never written through.
        (
            [
                (_info("link", tarfile.SYMTYPE, "{outside}"), None),
                (_info("link/escape.txt"), b"pwned"),
            ],
            "symlink",
        ),
        ([(_info("dev", tarfile.CHRTYPE), None)], "tar type"),
        ([(_info("hard", tarfile.LNKTYPE, "etc/passwd"), None)], "tar type"),
    ],
)
def test_crafted_tar_cannot_escape(tmp_path: Path, members, match) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for ti, _ in members:
        ti.linkname = ti.linkname.replace("{outside}", str(outside))
    payload = _crafted(members)
    src = make_source(tmp_path)
    into = tmp_path / "r"
    with pytest.raises(IntegrityError, match=match):
        src.restore([(_crafted_manifest(), io.BytesIO(payload))], str(into))
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_symlink_pointing_outside_is_restored_as_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = _crafted(
        [
            (_info("d", tarfile.DIRTYPE), None),
            (_info("d/l", tarfile.SYMTYPE, str(outside)), None),
        ]
    )
    into = tmp_path / "r"
    make_source(tmp_path).restore(
        [(_crafted_manifest(), io.BytesIO(payload))], str(into)
    )
    assert os.readlink(into / "d" / "l") == str(outside)


def test_truncated_or_corrupt_payload_is_an_integrity_error(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    src = make_source(tree["uploads"])
    m, payload = backup(src, "FULL", None, "b0")
    with pytest.raises(IntegrityError, match="b0"):
        restore(src, [(m, payload[: len(payload) // 2])], tmp_path / "r1")
    # Cut exactly after the first members: tarfile alone would call that a clean end.
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
        cut = tar.getmembers()[3].offset
    with pytest.raises(IntegrityError, match="manifest lists"):
        restore(src, [(m, payload[:cut] + b"\0" * 1024)], tmp_path / "r2")
    with pytest.raises(IntegrityError):
        restore(src, [(m, b"not a tar at all" * 100)], tmp_path / "r3")


# --- partial restore --------------------------------------------------------------------------


def test_only_restores_the_given_paths(tree: dict[str, Path], tmp_path: Path) -> None:
    uploads = tree["uploads"]
    src = make_source(uploads, tree["config"])
    full = backup(src, "FULL", None, "b0")
    (uploads / "docs" / "guide.md").unlink()
    _write(uploads / "docs" / "later.txt", b"later")
    _write(uploads / "a" / "outside-only.txt", b"not asked for")
    inc = backup(src, "INCREMENTAL", full[0], "b1")

    docs = str(uploads / "docs").lstrip("/")
    into = tmp_path / "r"
    stats = restore(src, [full, inc], into, only=[docs])
    got_root = under(into, uploads)
    assert sorted(p.name for p in got_root.iterdir()) == ["docs"]
    assert (
        compare_trees(tree_digest(uploads / "docs"), tree_digest(got_root / "docs"))
        == []
    )
    assert not under(into, tree["config"]).exists()
    assert stats["files"] == 2  # later.txt and the node_modules file; guide.md deleted
    assert stats["symlinks"] == 3

    # A leading "/" and a single file work too.
    into2 = tmp_path / "r2"
    restore(src, [full, inc], into2, only=[str(tree["config"])])
    assert [p for p in into2.rglob("*") if p.is_file()] == [
        under(into2, tree["config"])
    ]


def test_only_rejects_parent_references(tree: dict[str, Path], tmp_path: Path) -> None:
    src = make_source(tree["uploads"])
    full = backup(src, "FULL", None, "b0")
    with pytest.raises(RestoreRefused, match=r"'\.\.'"):
        restore(src, [full], tmp_path / "r", only=["data/../etc"])


# --- comparison helpers -----------------------------------------------------------------------


def test_compare_trees_reports_differences(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a / "same.txt", b"1")
    _write(b / "same.txt", b"1")
    _write(a / "diff.txt", b"1")
    _write(b / "diff.txt", b"2")
    _write(a / "only-a.txt", b"")
    _write(b / "mode.txt", b"", 0o600)
    _write(a / "mode.txt", b"", 0o644)
    diffs = compare_trees(tree_digest(a), tree_digest(b))
    assert len(diffs) == 3
    assert any("only in first: only-a.txt" in d for d in diffs)
    assert any(d.startswith("differs: diff.txt") for d in diffs)
    assert any(d.startswith("differs: mode.txt") for d in diffs)
    assert compare_trees(tree_digest(a), tree_digest(a)) == []


# --- a failed restore leaves nothing that looks restored ----------------------------------------

KEK = bytes(range(32))


def _sealed(payload: bytes, *, corrupt_tail: bool = False) -> bytes:
    """``payload`` as the pipeline stores it (zstd + AES-GCM container); with
    ``corrupt_tail`` one byte of the container's final chunk is flipped."""
    from include.backup.pipeline.stream import seal

    out = io.BytesIO()
    seal(io.BytesIO(payload), out, kek=KEK, key_id="k1", chunk_size=64 * 1024)
    raw = bytearray(out.getvalue())
    if corrupt_tail:
        raw[-5] ^= 0x01  # inside the last chunk's tag: only reading to the end finds it
    return bytes(raw)


def _restore_sealed(
    src: FilesSource, chain: list[tuple[Manifest, bytes]], into: Path, **kw: Any
) -> dict:
    from include.backup.pipeline.stream import open_sealed

    streams = [(m, open_sealed(io.BytesIO(b), lambda _kid: KEK, "zstd")) for m, b in chain]
    return src.restore(streams, str(into), **kw)


def _siblings(into: Path) -> list[str]:
    return sorted(p.name for p in into.parent.iterdir() if ".restoring-" in p.name)


def test_corrupt_last_chunk_leaves_no_restored_tree(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    src = make_source(tree["uploads"])
    m, payload = backup(src, "FULL", None, "b0")
    into = tmp_path / "out" / "r"
    with pytest.raises(IntegrityError, match="authentication"):
        _restore_sealed(src, [(m, _sealed(payload, corrupt_tail=True))], into)
    assert not into.exists()
    assert _siblings(into) == []

    # The intact payload restores, and leaves no staging sibling either.
    _restore_sealed(src, [(m, _sealed(payload))], into)
    assert compare_trees(
        tree_digest(tree["uploads"], exclude=EXCLUDES), tree_digest(under(into, tree["uploads"]))
    ) == []
    assert _siblings(into) == []
    probe = tmp_path / "probe"
    probe.mkdir()  # a new ``into`` gets the mode mkdir gives, not the staging 0700
    assert into.stat().st_mode == probe.stat().st_mode


def test_corrupt_incremental_leaves_an_existing_destination_unchanged(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    uploads = tree["uploads"]
    src = make_source(uploads)
    full = backup(src, "FULL", None, "b0")
    (uploads / "top.txt").write_bytes(b"changed after the full\n")
    (uploads / "a" / "run.sh").unlink()
    inc = backup(src, "INCREMENTAL", full[0], "b1")

    into = tmp_path / "r"
    _write(into / "already-here.txt", b"keep me")
    _write(under(into, uploads) / "top.txt", b"the user's copy")
    before = tree_digest(into)
    chain = [(full[0], _sealed(full[1])), (inc[0], _sealed(inc[1], corrupt_tail=True))]
    with pytest.raises(IntegrityError, match="authentication"):
        _restore_sealed(src, chain, into, overwrite=True)
    assert compare_trees(before, tree_digest(into)) == []
    assert _siblings(into) == []

    # A fresh destination: the whole chain is refused, nothing of the full is left.
    fresh = tmp_path / "fresh"
    with pytest.raises(IntegrityError):
        _restore_sealed(src, chain, fresh)
    assert not fresh.exists() and _siblings(fresh) == []


def test_overwrite_applies_the_chain_over_an_existing_tree(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    uploads = tree["uploads"]
    src = make_source(uploads)
    full = backup(src, "FULL", None, "b0")
    (uploads / "a" / "run.sh").unlink()
    inc = backup(src, "INCREMENTAL", full[0], "b1")
    into = tmp_path / "r"
    _write(into / "already-here.txt", b"keep me")
    _write(under(into, uploads) / "a" / "run.sh", b"deleted by the chain")
    _write(under(into, uploads) / "mine.txt", b"not in the backup")
    chain = [(full[0], _sealed(full[1])), (inc[0], _sealed(inc[1]))]
    stats = _restore_sealed(src, chain, into, overwrite=True)
    assert stats["deleted"] == 1
    assert not (under(into, uploads) / "a" / "run.sh").exists()
    assert (into / "already-here.txt").read_bytes() == b"keep me"
    assert (under(into, uploads) / "mine.txt").read_bytes() == b"not in the backup"
    restored = tree_digest(under(into, uploads), exclude=["mine.txt"])
    assert compare_trees(tree_digest(uploads, exclude=EXCLUDES), restored) == []
    assert _siblings(into) == []
