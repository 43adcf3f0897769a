"""Archive-tier keys of the targets (storage_class, archive_after_days,
archive_storage_class, thaw_tier): what the validator accepts and what it says otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from include.backup.config.loader import load_config
from include.backup.targets import build_target

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
