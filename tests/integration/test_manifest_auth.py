"""Whoever can write to a target cannot make a restore return other data (issue: trust).

Real files source, real local targets, real crypto, the real CLI. Each attack below passed
`verify --deep` or restored silently before manifests were signed and payloads bound to
their backup."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME, Manifest, backup_prefix
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.errors import IntegrityError
from include.backup.keys import KeyRing
from include.backup.pipeline.crypto import encrypt_stream
from include.backup.testing import run_backup

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "state.txt").write_text("version 1\n")
    config = tmp_path / "backup_config.yaml"
    config.write_text(textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk: {{type: local, path: {tmp_path}/t}}
        sources:
          docs: {{type: files, paths: [{data}]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk]}}
    """))
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return tmp_path, data


@pytest.fixture
def two_backups(env: tuple[Path, Path]) -> tuple[Path, Path, str, str]:
    tmp, data = env
    now = datetime.now(UTC)
    # No cleanup: retention would keep one backup a day.
    old = run_backup("docs_full", run_id="run-old", logical_date=now - timedelta(days=2), cleanup=False)
    (data / "state.txt").write_text("version 2\n")
    new = run_backup("docs_full", run_id="run-new", logical_date=now - timedelta(days=1), cleanup=False)
    return tmp, data, old["backup_id"], new["backup_id"]


def folder(tmp: Path, backup_id: str) -> Path:
    return tmp / "t" / backup_prefix("docs", backup_id)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "include.backup", *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def restore(tmp: Path, backup_id: str, into: str = "out") -> None:
    keys = KeyRing.from_file(tmp / "keys.json")
    restore_backup(load_config().config, backup_id, str(tmp / into), keys=keys, target_name="disk")


def rewrite(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def restored_text(tmp: Path, data: Path, into: str = "out") -> str:
    return (tmp / into / str(data).lstrip("/") / "state.txt").read_text()


def test_good_backups_verify_as_signed_and_restore(two_backups) -> None:  # type: ignore[no-untyped-def]
    tmp, data, old, new = two_backups
    manifest = json.loads((folder(tmp, new) / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2 and manifest["auth"]["key_id"] == "k1"
    assert (folder(tmp, new) / PAYLOAD_NAME).read_bytes()[8] == 2  # container version 2
    res = cli("verify", new, "--deep", "--target", "disk")
    assert res.returncode == 0, res.stderr
    assert "ok (deep); manifest signed (k1)" in res.stdout
    restore(tmp, new)
    assert restored_text(tmp, data) == "version 2\n"


def swap_old_payload_in(tmp: Path, old: str, new: str) -> None:
    """The attack: the older payload under the newer backup, its manifest re-hashed."""
    shutil.copyfile(folder(tmp, old) / PAYLOAD_NAME, folder(tmp, new) / PAYLOAD_NAME)
    payload = (folder(tmp, new) / PAYLOAD_NAME).read_bytes()

    def rehash(doc: dict) -> None:
        doc["objects"][0].update(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
        doc["stored_size"] = len(payload)

    rewrite(folder(tmp, new) / MANIFEST_NAME, rehash)


def test_swapped_payload_with_rehashed_manifest_is_refused(two_backups) -> None:  # type: ignore[no-untyped-def]
    tmp, data, old, new = two_backups
    swap_old_payload_in(tmp, old, new)
    res = cli("verify", new, "--deep", "--target", "disk")
    assert res.returncode == 1
    assert "REFUSED" in res.stdout and "failed authentication" in res.stdout
    with pytest.raises(IntegrityError, match="failed authentication: it was altered"):
        restore(tmp, new)
    assert not (tmp / "out").exists()


def test_stripping_the_signature_does_not_downgrade_to_legacy(two_backups) -> None:  # type: ignore[no-untyped-def]
    tmp, data, old, new = two_backups
    swap_old_payload_in(tmp, old, new)
    rewrite(folder(tmp, new) / MANIFEST_NAME, lambda d: d.pop("auth"))
    with pytest.raises(IntegrityError, match="signature was removed"):
        restore(tmp, new)
    # Also claiming to be a legacy manifest: the payload's own binding still refuses it.
    rewrite(folder(tmp, new) / MANIFEST_NAME, lambda d: d.update(format_version=1))
    res = cli("verify", new, "--deep", "--target", "disk")
    assert res.returncode == 1 and "payload belongs to another backup" in res.stdout
    with pytest.raises(IntegrityError, match="payload belongs to another backup"):
        restore(tmp, new)
    assert not (tmp / "out").exists()


def test_manifest_copied_into_another_backups_folder_is_refused(two_backups) -> None:  # type: ignore[no-untyped-def]
    tmp, data, old, new = two_backups
    shutil.copyfile(folder(tmp, old) / MANIFEST_NAME, folder(tmp, new) / MANIFEST_NAME)
    shutil.copyfile(folder(tmp, old) / PAYLOAD_NAME, folder(tmp, new) / PAYLOAD_NAME)
    with pytest.raises(IntegrityError, match="wrong folder"):
        restore(tmp, new)
    assert not (tmp / "out").exists()
    assert cli("verify", new, "--target", "disk").returncode == 1


def test_manifest_without_objects_fails_verify(two_backups) -> None:  # type: ignore[no-untyped-def]
    tmp, data, old, new = two_backups
    rewrite(folder(tmp, new) / MANIFEST_NAME, lambda d: d.update(objects=[]))
    res = cli("verify", new, "--target", "disk")
    assert res.returncode == 1 and "lists no objects" in res.stdout
    # Even without a key ring (a shape check needs none).
    env_less = cli("verify", new, "--target", "disk", "--key-file", str(tmp / "absent.json"))
    assert env_less.returncode == 1 and "lists no objects" in env_less.stdout


def test_object_name_escaping_the_folder_is_refused(two_backups) -> None:  # type: ignore[no-untyped-def]
    tmp, data, old, new = two_backups
    rewrite(folder(tmp, new) / MANIFEST_NAME, lambda d: d["objects"][0].update(name=f"../{old}/payload"))
    with pytest.raises(IntegrityError, match="not a plain file name"):
        restore(tmp, new)


def test_legacy_backup_restores_and_verify_says_unsigned(env) -> None:  # type: ignore[no-untyped-def]
    """A backup as the previous release wrote it: container v1, manifest format 1, no auth."""
    tmp, data = env
    when = datetime.now(UTC) - timedelta(days=1)
    new = run_backup("docs_full", run_id="run-new", logical_date=when, cleanup=False)["backup_id"]
    keys = KeyRing.from_file(tmp / "keys.json")
    key_id, kek = keys.active()
    legacy_id = "docs_full-20251201T000000Z-abcdef"
    src, dst = folder(tmp, new), folder(tmp, legacy_id)
    dst.mkdir(parents=True)
    manifest = Manifest.from_json((src / MANIFEST_NAME).read_bytes())
    # Re-encrypt the same compressed plaintext as a version 1 container.
    from include.backup.pipeline.crypto import DecryptingReader

    with open(src / PAYLOAD_NAME, "rb") as f:
        plain = DecryptingReader(f, keys).readall()
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plain), out, kek, key_id, 1 << 20, _version=1)
    (dst / PAYLOAD_NAME).write_bytes(out.getvalue())
    manifest.backup_id = legacy_id
    manifest.started_at = manifest.started_at - timedelta(days=40)
    manifest.format_version = 1
    manifest.auth = None
    manifest.objects[0].sha256 = hashlib.sha256(out.getvalue()).hexdigest()
    manifest.objects[0].size = manifest.stored_size = len(out.getvalue())
    (dst / MANIFEST_NAME).write_bytes(manifest.to_json())

    res = cli("verify", legacy_id, "--deep", "--target", "disk")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "manifest unsigned (made before manifests were signed" in res.stdout
    restore(tmp, legacy_id)
    assert restored_text(tmp, data) == "version 1\n"
