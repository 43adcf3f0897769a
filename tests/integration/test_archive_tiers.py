"""Archive tiers end to end against the emulators: payloads uploaded in a target's
``storage_class`` while manifests and records stay hot, ``archive_after_days`` moving old
payloads through ``prune``, a restore of a frozen backup that requests the thaw and stops
with what to do, the restore DAG's thaw sensor waiting until the thaw completes, and
``verify`` of a frozen backup that checks size and the store's checksum without reading.

Backups are made by the ``backup`` verb (the DAG's six steps, without Airflow) from a real
file tree, or, for the ages ``archive_after_days`` looks at, written as a run leaves them
with a start time in the past. What each emulator models, and what it does not:

- moto: storage classes on PutObject / multipart / CopyObject, GLACIER and DEEP_ARCHIVE
  objects refused to GetObject until restore_object, and the restore's progress
  (``ongoing-request``) driven by its state manager (``s3::keyrestore``), which a test sets
  to advance by hand so that a thaw visibly takes several checks.
- Azurite: access tiers on upload and Set Blob Tier; an Archive blob refused to reads; a
  rehydration (Archive -> Hot/Cool) completes at once (no ``rehydrate-pending`` state).
- gcp-storage-emulator: the storage class given on upload; it ignores the class a rewrite
  asks for (keeps the old one), so the move to a colder class is reported as not done.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.backup.catalog.catalog import list_backups, write_manifest
from include.backup.catalog.index import rebuild
from include.backup.catalog.manifest import PAYLOAD_NAME, Manifest, StoredObject, Verification, backup_prefix
from include.backup.catalog.signing import sign
from include.backup.cli import main
from include.backup.config.loader import load_config
from include.backup.dr.dags import build_restore_dag, run_thaw
from include.backup.errors import TargetError
from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.targets import build_target
from include.backup.targets.tiers import metadata_check, tier_state
from tests.integration.services import AzureService, GCSService, S3Service, unique

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
MiB = 1 << 20


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    data = tmp_path / "data" / "docs"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n" * 1000)
    (data / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    return data


@pytest.fixture
def world(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``configure(target_yaml)`` writes a config with one target ``t`` (the test's), a
    files source and a daily schedule keeping a year of backups; returns the built target."""
    keys = KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    path = tmp_path / "backup_config.yaml"

    def configure(target: str) -> Any:
        path.write_text(textwrap.dedent(f"""
            staging_dir: {tmp_path}/staging
            targets:
              t: {target}
            sources:
              docs: {{type: files, paths: ["{tree}"]}}
            schedules:
              - {{name: daily, source: docs, type: FULL, cron: "@daily", targets: [t], retention_days: 365}}
        """))
        monkeypatch.setenv("BACKUP_CONFIG", str(path))
        loaded = load_config(path)
        assert loaded.issues == []
        return build_target("t", loaded.config.targets["t"])

    return {"configure": configure, "tmp": tmp_path, "tree": tree, "keys": keys}


def backup(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["backup", "daily"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out.strip().splitlines()[-1]


def payload_key(backup_id: str) -> str:
    return f"{backup_prefix('docs', backup_id)}/{PAYLOAD_NAME}"


def put_old_backup(target: Any, keys: KeyRing, age_days: int, *, lie_about_sha: bool = False) -> str:
    """A published, verified backup started ``age_days`` ago, as a run leaves it."""
    started = NOW - timedelta(days=age_days, hours=1)
    backup_id = f"daily-{started:%Y%m%dT%H%M%SZ}-{age_days:06x}"
    payload = f"payload of {backup_id}".encode() * 100
    digest = hashlib.sha256(b"something else" if lie_about_sha else payload).hexdigest()
    key_id, kek = keys.active()
    m = Manifest(
        backup_id=backup_id, schedule="daily", source="docs", source_type="files", backup_type="FULL",
        started_at=started, finished_at=started + timedelta(minutes=5), payload_format="tar",
        objects=[StoredObject(name=PAYLOAD_NAME, size=len(payload), sha256=digest)],
        verification={"t": Verification(ok=True, verified_at=started + timedelta(minutes=6))},
    )  # fmt: skip
    target.put(payload_key(backup_id), _file(target, payload))
    write_manifest(target, sign(m, key_id, kek))
    return backup_id


def _file(target: Any, data: bytes) -> Path:
    """A file holding ``data``: put() uploads a file, in the target's storage class."""
    path = Path(os.environ["BACKUP_CONFIG"]).parent / f"upload-{hashlib.sha256(data).hexdigest()[:12]}"
    path.write_bytes(data)
    return path


def s3_class(s3: S3Service, target: Any, key: str) -> str:
    head = s3.client().head_object(Bucket=s3.bucket, Key=target.root + key)
    return str(head.get("StorageClass") or "STANDARD")


def s3_classes(s3: S3Service, target: Any) -> dict[str, str]:
    """Every object under the target's prefix -> its storage class, as S3 lists it."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=target.root)
    return {o["Key"][len(target.root):]: o["StorageClass"] for p in pages for o in p.get("Contents", [])}


def s3_target(s3: S3Service, extra: str) -> str:
    return (
        f"{{type: s3, conn_id: {s3.conn_id}, bucket: {s3.bucket}, prefix: {unique('tiers')}/{extra}}}"
    )


def restored_matches(tree: Path, into: Path) -> list[str]:
    return compare_trees(tree_digest(tree), tree_digest(into / str(tree).lstrip("/")))


# --- S3 (moto) -------------------------------------------------------------------------------


def test_s3_payloads_go_to_storage_class_and_everything_else_stays_standard(
    world: dict[str, Any], moto_server: S3Service, capsys: pytest.CaptureFixture[str]
) -> None:
    target = world["configure"](s3_target(moto_server, ", storage_class: STANDARD_IA"))
    backup_id = backup(capsys)
    classes = s3_classes(moto_server, target)
    assert classes.pop(payload_key(backup_id)) == "STANDARD_IA"
    # The manifest, the catalog index, the audit records: readable at once.
    assert f"{backup_prefix('docs', backup_id)}/manifest.json" in classes
    assert any(k.startswith("_audit") or "audit" in k for k in classes), sorted(classes)
    assert set(classes.values()) == {"STANDARD"}, classes
    [m] = list_backups(target, "docs")
    assert m.verification["t"].ok and m.verification["t"].detail == "sha256 match"  # read back: not frozen


def test_s3_backup_straight_to_glacier_is_verified_without_reading(
    world: dict[str, Any], moto_server: S3Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """Uploaded in GLACIER, the payload cannot be read back: the verify step checks its
    size and S3's SHA-256 of it against the manifest, and the result says so."""
    target = world["configure"](s3_target(moto_server, ", storage_class: GLACIER"))
    backup_id = backup(capsys)
    assert s3_class(moto_server, target, payload_key(backup_id)) == "GLACIER"
    with pytest.raises(Exception, match="InvalidObjectState"):  # S3 refuses the read: frozen indeed
        moto_server.client().get_object(Bucket=moto_server.bucket, Key=target.root + payload_key(backup_id))
    with pytest.raises(TargetError, match="frozen in an archive class .* cannot be read before a thaw"):
        target.read_bytes(payload_key(backup_id))  # what any other reader is told
    [m] = list_backups(target, "docs")  # listing reads manifests only: no thaw needed
    detail = m.verification["t"].detail
    assert m.verification["t"].ok
    assert "the store's SHA-256" in detail and "matches the manifest" in detail
    assert "data NOT read (frozen in GLACIER" in detail

    capsys.readouterr()
    assert main(["verify", backup_id]) == 0
    out = capsys.readouterr().out
    assert f"t: {backup_id}: ok, " in out and "data NOT read" in out and "SHA-256" in out


def test_s3_archive_after_days_moves_old_payloads_and_frozen_verify_catches_a_mismatch(
    world: dict[str, Any], moto_server: S3Service, capsys: pytest.CaptureFixture[str]
) -> None:
    target = world["configure"](s3_target(moto_server, ", archive_after_days: 30"))
    keys = world["keys"]
    old = put_old_backup(target, keys, 40)
    lying = put_old_backup(target, keys, 35, lie_about_sha=True)  # its manifest names another payload
    young = put_old_backup(target, keys, 5)
    rebuild(target, "docs", keys)

    capsys.readouterr()
    assert main(["prune", "--schedule", "daily", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "t: archive_after_days would move 2 payload(s) to the archive class" in out
    assert s3_class(moto_server, target, payload_key(old)) == "STANDARD"  # a dry run moves nothing

    assert main(["prune", "--schedule", "daily"]) == 0
    assert "t: archive_after_days moved 2 payload(s)" in capsys.readouterr().out
    classes = s3_classes(moto_server, target)
    assert classes[payload_key(old)] == "GLACIER" and classes[payload_key(lying)] == "GLACIER"
    assert classes[payload_key(young)] == "STANDARD"
    assert {c for k, c in classes.items() if not k.endswith(PAYLOAD_NAME)} == {"STANDARD"}
    assert {m.backup_id for m in list_backups(target, "docs")} == {old, lying, young}  # kept, listed

    assert main(["verify", old]) == 0
    assert "data NOT read (frozen in GLACIER" in capsys.readouterr().out
    assert main(["verify", lying]) == 1  # S3's own SHA-256 of the archived copy gives it away
    out = capsys.readouterr().out
    assert "FAILED" in out and "differs from the manifest's" in out and "data NOT read" in out

    assert main(["prune", "--schedule", "daily"]) == 0  # archived already: nothing moves twice
    assert "t: archive_after_days moved 0 payload(s)" in capsys.readouterr().out


@pytest.fixture
def slow_thaw(moto_server: S3Service) -> Any:
    """moto's restores advance one state every 3 requests for the object (None ->
    IN_PROGRESS -> RESTORED) instead of at once; back to the default afterwards."""
    api = f"{moto_server.url}/moto-api/state-manager"
    body = {"model_name": "s3::keyrestore", "transition": {"progression": "manual", "times": 3}}
    httpx.post(f"{api}/set-transition", json=body, timeout=30).raise_for_status()
    yield
    unset = {"model_name": "s3::keyrestore"}
    httpx.post(f"{api}/unset-transition", json=unset, timeout=30).raise_for_status()


def test_s3_restore_of_a_glacier_backup_requests_the_thaw_then_the_sensor_waits_for_it(
    world: dict[str, Any],
    moto_server: S3Service,
    capsys: pytest.CaptureFixture[str],
    slow_thaw: None,
) -> None:
    target = world["configure"](s3_target(moto_server, ", storage_class: GLACIER, thaw_tier: Bulk"))
    backup_id = backup(capsys)
    into = world["tmp"] / "restored"

    # The CLI: no traceback, the backup is frozen, the thaw was requested, how to go on.
    capsys.readouterr()
    assert main(["restore", backup_id, "--into", str(into)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"backup {backup_id} is frozen at target 't'" in err and "in GLACIER" in err
    assert f"a thaw was requested now for {backup_id} (Bulk tier, typically 5-12 hours)" in err
    assert "Run the same restore again once the thaw completes" in err
    assert not into.exists()
    head = moto_server.client().head_object(
        Bucket=moto_server.bucket, Key=target.root + payload_key(backup_id)
    )
    assert 'ongoing-request="true"' in head["Restore"]  # S3 holds the restore request

    # The restore DAG: validate_params -> thaw (a sensor giving its slot back) -> restore.
    dag = build_restore_dag(load_config().config)
    sensor = dag.get_task("thaw")
    assert sensor.mode == "reschedule"
    assert dag.get_task("restore").upstream_task_ids == {"thaw", "validate_params"}
    request = {"source": None, "backup_id": backup_id, "point_in_time": None, "into": str(into),
               "target": None, "only": None, "overwrite": False}  # fmt: skip
    pokes = []
    for _ in range(10):
        poke = run_thaw(request)  # the sensor's callable, as each reschedule runs it
        pokes.append(poke)
        if poke.is_done:
            break
    assert not pokes[0].is_done and pokes[0].xcom_value["frozen"] == [backup_id]
    assert pokes[0].xcom_value["requested"] == []  # asked once, by the CLI: never twice
    assert pokes[-1].is_done and pokes[-1].xcom_value["frozen"] == []

    capsys.readouterr()
    assert main(["restore", backup_id, "--into", str(into)]) == 0, capsys.readouterr().err
    assert restored_matches(world["tree"], into) == []


def test_s3_thaw_sensor_requests_the_thaw_itself(
    world: dict[str, Any], moto_server: S3Service, capsys: pytest.CaptureFixture[str], slow_thaw: None
) -> None:
    world["configure"](s3_target(moto_server, ", storage_class: DEEP_ARCHIVE"))
    backup_id = backup(capsys)
    poke = run_thaw({"source": "docs", "backup_id": None, "point_in_time": None, "into": "/nowhere",
                     "target": "t", "only": None, "overwrite": False})  # fmt: skip
    assert not poke.is_done
    assert poke.xcom_value["requested"] == [backup_id] and poke.xcom_value["storage_class"] == "DEEP_ARCHIVE"
    assert poke.xcom_value["expected_wait"] == "up to 12 hours"


# --- Azure Blob (Azurite) --------------------------------------------------------------------


def azure_target(az: AzureService, extra: str) -> str:
    where = f"conn_id: {az.conn_id}, container: {az.container}, prefix: {unique('tiers')}/"
    return f"{{type: azure_blob, {where}{extra}}}"


def test_azure_tiers_archive_and_rehydrate(
    world: dict[str, Any], azurite: AzureService, capsys: pytest.CaptureFixture[str]
) -> None:
    target = world["configure"](azure_target(azurite, ", storage_class: Cool, archive_after_days: 30"))
    backup_id = backup(capsys)
    container = azurite.container_client()

    def tier(key: str) -> str:
        return str(container.get_blob_client(target.root + key).get_blob_properties().blob_tier)

    assert tier(payload_key(backup_id)) == "Cool"
    assert tier(f"{backup_prefix('docs', backup_id)}/manifest.json") == "Hot"

    old = put_old_backup(target, world["keys"], 45)
    rebuild(target, "docs", world["keys"])
    assert main(["prune", "--schedule", "daily"]) == 0
    assert tier(payload_key(old)) == "Archive" and tier(payload_key(backup_id)) == "Cool"
    with pytest.raises(Exception, match="BlobArchived"):  # Azurite refuses to read it
        container.get_blob_client(target.root + payload_key(old)).download_blob().readall()
    with pytest.raises(TargetError, match="in the Archive tier and cannot be read before it is rehydrated"):
        target.read_bytes(payload_key(old))
    state = tier_state(target, payload_key(old))
    assert state is not None and state.frozen and state.storage_class == "Archive"

    capsys.readouterr()
    assert main(["verify", old]) == 0
    assert "data NOT read (frozen in Archive" in capsys.readouterr().out

    # A restore requests the rehydration (back to the upload tier, Cool) and stops; Azurite
    # completes it at once, so the next check finds it readable.
    assert main(["restore", old, "--into", str(world["tmp"] / "r")]) == 1
    err = capsys.readouterr().err
    assert "is frozen at target 't'" in err and "(Standard tier, typically up to 15 hours)" in err
    assert tier(payload_key(old)) == "Cool"
    request = {"source": None, "backup_id": old, "point_in_time": None, "into": "/x", "target": "t",
               "only": None, "overwrite": False}  # fmt: skip
    assert run_thaw(request).is_done
    data = container.get_blob_client(target.root + payload_key(old)).download_blob().readall()
    assert data == f"payload of {old}".encode() * 100  # the bytes survived the round trip


# --- GCS (gcp-storage-emulator) ---------------------------------------------------------------


def test_gcs_storage_class_on_upload_and_a_rewrite_the_emulator_does_not_apply(
    world: dict[str, Any], gcs_emulator: GCSService, capsys: pytest.CaptureFixture[str]
) -> None:
    target = world["configure"](
        f"{{type: gcs, conn_id: {gcs_emulator.conn_id}, bucket: {gcs_emulator.bucket}, "
        f"prefix: {unique('tiers')}/, storage_class: NEARLINE, archive_after_days: 30}}"
    )
    backup_id = backup(capsys)
    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    assert bucket.get_blob(target.root + payload_key(backup_id)).storage_class == "NEARLINE"
    manifest = bucket.get_blob(target.root + f"{backup_prefix('docs', backup_id)}/manifest.json")
    assert manifest.storage_class == "STANDARD"
    state = tier_state(target, payload_key(backup_id))
    assert state is not None and state.readable and {"md5", "crc32c"} <= set(state.checksums)

    old = put_old_backup(target, world["keys"], 45)
    rebuild(target, "docs", world["keys"])
    capsys.readouterr()
    assert main(["prune", "--schedule", "daily"]) == 0
    # The emulator answers a rewrite with the old class: reported, never counted as moved.
    assert "t: archive_after_days moved 0 payload(s)" in capsys.readouterr().out
    blob = bucket.get_blob(target.root + payload_key(old))
    assert blob.storage_class == "NEARLINE"
    assert blob.download_as_bytes() == f"payload of {old}".encode() * 100
    assert json.loads(json.dumps(state.checksums))  # plain strings: fit for a report


# --- large payloads: multipart, block list, resumable ---------------------------------------


def test_large_payloads_keep_the_class_on_every_store(
    tmp_path: Path, moto_server: S3Service, azurite: AzureService, gcs_emulator: GCSService
) -> None:
    """Past the single-request size each store uploads in parts (S3 multipart, Azure block
    list, GCS resumable): the class is set there too. A multipart GLACIER object's SHA-256
    is a composite of its parts: the frozen check says it cannot compare it."""
    from include.backup.targets.azure import AzureBlobTarget
    from include.backup.targets.gcs import GCSTarget
    from include.backup.targets.s3 import S3Target

    data = os.urandom(6 * MiB + 123)
    src = tmp_path / "payload"
    src.write_bytes(data)
    s3 = S3Target("s3", moto_server.conn_id, moto_server.bucket, unique("big") + "/", part_size=5 * MiB,
                  storage_class="GLACIER")  # fmt: skip
    az = AzureBlobTarget("az", azurite.conn_id, azurite.container, unique("big") + "/", block_size=1 * MiB,
                         storage_class="Cool")  # fmt: skip
    gcs = GCSTarget("gcs", gcs_emulator.conn_id, gcs_emulator.bucket, unique("big") + "/", chunk_size=1 * MiB,
                    storage_class="COLDLINE")  # fmt: skip
    for target, klass in ((s3, "GLACIER"), (az, "Cool"), (gcs, "COLDLINE")):
        assert target.put("src/b1/payload", src).size == len(data)
        state = tier_state(target, "src/b1/payload")
        assert state is not None and (state.storage_class, state.size) == (klass, len(data)), target
    state = tier_state(s3, "src/b1/payload")
    assert state is not None and state.frozen
    ok, detail = metadata_check(state, len(data), hashlib.sha256(data).hexdigest())
    assert ok and "(sha256) is present but not comparable" in detail and "data NOT read" in detail
    assert az.read_bytes("src/b1/payload") == data and gcs.read_bytes("src/b1/payload") == data
