"""Archive-tier keys of the targets (storage_class, archive_after_days,
archive_storage_class, thaw_tier): what the validator accepts and what it says otherwise;
and what the check of a frozen object and a refused frozen restore tell the user."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from include.backup.config.loader import load_config
from include.backup.dr.restore import ThawStatus, may_freeze
from include.backup.targets import build_target
from include.backup.targets.tiers import TierState, metadata_check, typical_wait

S3 = {"type": "s3", "conn_id": "aws", "bucket": "b"}
AZURE = {"type": "azure_blob", "conn_id": "wasb", "container": "c"}
GCS = {"type": "gcs", "conn_id": "gcp", "bucket": "b"}


def load(tmp_path: Path, name: str, target: dict[str, Any]) -> Any:
    doc = {"targets": {name: target}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


@pytest.mark.parametrize(
    ("base", "klass"),
    [(S3, "DEEP_ARCHIVE"), (S3, "STANDARD_IA"), (AZURE, "Cool"), (AZURE, "Archive"), (GCS, "COLDLINE")],
)
def test_each_store_accepts_its_own_classes(tmp_path: Path, base: dict[str, Any], klass: str) -> None:
    loaded = load(tmp_path, "cold", {**base, "storage_class": klass})
    assert loaded.issues == []
    target = loaded.config.targets["cold"]
    assert target.upload_class() == klass
    assert build_target("cold", target).storage_class == klass


@pytest.mark.parametrize(
    ("base", "bad", "allowed"),
    [
        (S3, "Archive", "STANDARD, STANDARD_IA, GLACIER_IR, GLACIER, DEEP_ARCHIVE"),
        (AZURE, "GLACIER", "Hot, Cool, Cold, Archive"),
        (GCS, "Cool", "STANDARD, NEARLINE, COLDLINE, ARCHIVE"),
    ],
)
def test_a_class_of_another_store_names_target_key_and_allowed_values(
    tmp_path: Path, base: dict[str, Any], bad: str, allowed: str
) -> None:
    loaded = load(tmp_path, "offsite", {**base, "storage_class": bad})
    assert loaded.issues == [
        f"targets.offsite.storage_class: {bad!r} is not an allowed value; use one of {allowed}"
    ]
    assert "offsite" not in loaded.config.targets


@pytest.mark.parametrize("kind", ["local", "sftp", "ftp"])
@pytest.mark.parametrize("key", ["storage_class", "archive_after_days"])
def test_classes_on_a_target_without_them_are_a_clear_error(tmp_path: Path, kind: str, key: str) -> None:
    target = {"type": kind, "path": "/srv/backups", **({} if kind == "local" else {"conn_id": "x"})}
    loaded = load(tmp_path, "disk", {**target, key: 30 if key == "archive_after_days" else "GLACIER"})
    (issue,) = loaded.issues
    assert issue.startswith(f"targets.disk: {key}: {kind} targets have no storage classes; remove it")
    assert "apply to s3, azure_blob and gcs targets only" in issue


def test_archive_after_days_defaults_to_the_stores_archive_class(tmp_path: Path) -> None:
    for base, expected in ((S3, "GLACIER"), (AZURE, "Archive"), (GCS, "ARCHIVE")):
        loaded = load(tmp_path, "t", {**base, "archive_after_days": 30})
        assert loaded.issues == []
        assert loaded.config.targets["t"].archive_class() == expected
    loaded = load(tmp_path, "t", {**S3})
    assert loaded.config.targets["t"].archive_class() is None  # nothing is ever moved


def test_archive_class_warmer_than_the_upload_class_is_refused(tmp_path: Path) -> None:
    loaded = load(tmp_path, "t", {**S3, "storage_class": "DEEP_ARCHIVE", "archive_after_days": 30,
                                  "archive_storage_class": "GLACIER"})  # fmt: skip
    assert loaded.issues == [
        "targets.t: archive_storage_class GLACIER is not colder than storage_class DEEP_ARCHIVE: "
        "archive_after_days would move nothing; set a colder archive_storage_class, or remove "
        "archive_after_days"
    ]


def test_archive_class_without_an_age_is_refused(tmp_path: Path) -> None:
    loaded = load(tmp_path, "t", {**AZURE, "archive_storage_class": "Cold"})
    assert loaded.issues == [
        "targets.t: archive_storage_class needs archive_after_days: the age in days after which "
        "payloads move to Cold (e.g. archive_after_days: 30)"
    ]


@pytest.mark.parametrize("days", [0, 3651])
def test_archive_after_days_range(tmp_path: Path, days: int) -> None:
    loaded = load(tmp_path, "t", {**GCS, "archive_after_days": days})
    assert loaded.issues == [
        f"targets.t.archive_after_days: {days} is out of range; must be between 1 and 3650 days"
    ]


def test_thaw_tier_is_per_store(tmp_path: Path) -> None:
    assert load(tmp_path, "t", {**S3, "thaw_tier": "Bulk"}).issues == []
    loaded = load(tmp_path, "t", {**AZURE, "thaw_tier": "Bulk"})
    assert loaded.issues == ["targets.t.thaw_tier: 'Bulk' is not an allowed value; use one of Standard, High"]
    (issue,) = load(tmp_path, "t", {**GCS, "thaw_tier": "Standard"}).issues
    assert issue.startswith("targets.t.thaw_tier: unknown key")  # GCS reads every class at once


# --- what a frozen object's check and a frozen restore say (targets/tiers.py, dr/restore.py) ---

SHA = hashlib.sha256(b"payload").hexdigest()


def frozen(size: int = 7, **sums: str) -> TierState:
    return TierState(key="b1/payload", size=size, storage_class="GLACIER", readable=False, checksums=sums)


def test_frozen_check_compares_a_whole_object_sha256_and_says_it_did_not_read() -> None:
    ok, detail = metadata_check(frozen(sha256=base64.b64encode(bytes.fromhex(SHA)).decode()), 7, SHA)
    assert ok and "the store's SHA-256" in detail and "matches the manifest" in detail
    assert detail.endswith("data NOT read (frozen in GLACIER: checked from the store's metadata only)")
    other = hashlib.sha256(b"other").digest()
    ok, detail = metadata_check(frozen(sha256=base64.b64encode(other).decode()), 7, SHA)
    assert not ok and "differs from the manifest's" in detail and "data NOT read" in detail


def test_frozen_check_of_a_wrong_size_fails_whatever_the_checksum() -> None:
    ok, detail = metadata_check(frozen(size=8, crc32="AAAAAA=="), 7, SHA)
    assert not ok and detail.startswith("size 8 bytes, manifest says 7;") and "data NOT read" in detail


@pytest.mark.parametrize(
    ("sums", "named"),
    [
        ({"crc32": "AAAAAA=="}, "the store's own checksum (crc32) is present but not comparable"),
        ({"sha256": "abc=-3", "checksum_type": "COMPOSITE"}, "(sha256) is present but not comparable"),
        ({"md5": "00" * 16}, "(md5) is present"),
        ({}, "the store keeps no checksum of it"),
    ],
)
def test_frozen_check_names_a_checksum_it_cannot_compare(sums: dict[str, str], named: str) -> None:
    ok, detail = metadata_check(frozen(**sums), 7, SHA)
    assert ok and "7 bytes match the manifest" in detail and named in detail and "data NOT read" in detail


def test_frozen_restore_message_says_what_happened_and_what_to_do() -> None:
    status = ThawStatus(target="s3", storage_class="DEEP_ARCHIVE", tier="Bulk",
                        expected_wait="up to 48 hours", frozen=["b1", "b2"], requested=["b2"])  # fmt: skip
    text = status.message("b2")
    assert not status.ready
    assert text.startswith("backup b2 is frozen at target 's3': the payloads of b1, b2 are in DEEP_ARCHIVE")
    assert "a thaw was requested now for b2 (Bulk tier, typically up to 48 hours)" in text
    assert "Run the same restore again once the thaw completes" in text
    waiting = ThawStatus(target="s3", storage_class="GLACIER", frozen=["b1"]).message("b1")
    assert "a thaw was already requested and is in progress" in waiting


def test_the_restore_dag_waits_for_thaws_only_when_a_target_can_freeze(tmp_path: Path) -> None:
    assert not may_freeze(load(tmp_path, "t", {**S3, "storage_class": "GLACIER_IR"}).config)
    assert not may_freeze(load(tmp_path, "t", {**GCS, "archive_after_days": 30}).config)  # GCS reads at once
    assert may_freeze(load(tmp_path, "t", {**S3, "archive_after_days": 30}).config)  # to GLACIER
    assert may_freeze(load(tmp_path, "t", {**AZURE, "storage_class": "Archive"}).config)
    assert typical_wait("s3", "GLACIER", "Expedited") == "1-5 minutes"
