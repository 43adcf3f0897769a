"""The retention rules end to end, through the ``prune`` verb, at a local disk and at S3
(moto): ``dr.backup_retention_days`` over 40 daily backups, transaction logs that follow
their base, ``cleanup_rules.min_backups``, and ``prune --dry-run`` naming the rule that
keeps or deletes each backup.

The backups are real objects at the targets (a payload, a manifest signed with the test's
key ring, the catalog index record), written directly: what retention reads and deletes is
exactly what a backup run leaves, without running 40 dumps."""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup import tasks
from include.backup.catalog.catalog import list_backups, write_manifest
from include.backup.catalog.index import rebuild
from include.backup.catalog.manifest import PAYLOAD_NAME, Manifest, StoredObject, Verification, backup_prefix
from include.backup.catalog.signing import sign
from include.backup.cli import main
from include.backup.config.loader import load_config
from include.backup.dr.monitor import run_monitor
from include.backup.keys import KeyRing
from include.backup.run_records import FailedRun, encode, record_failed_run, record_key
from include.backup.settings import staging_root
from include.backup.staging import sweep_configured_staging
from include.backup.targets import build_target
from include.backup.targets.base import Target
from tests.integration.services import S3Service, unique

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
TARGETS = ("disk", "s3")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: S3Service) -> dict[str, Any]:
    """A config with a local and an S3 target; the schedules are the test's."""
    keys = KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))

    def configure(dr: str, schedules: str) -> dict[str, Target]:
        (tmp_path / "backup_config.yaml").write_text(textwrap.dedent(f"""
            staging_dir: {tmp_path}/staging
            dr: {dr}
            targets:
              disk: {{type: local, path: {tmp_path}/disk}}
              s3: {{type: s3, conn_id: {moto_server.conn_id}, bucket: {moto_server.bucket},
                   prefix: {unique('retention')}/}}
            sources:
              db: {{type: mongo, conn_id: mongo_unused, database: app}}  # never contacted
            schedules:
        """) + textwrap.indent(textwrap.dedent(schedules), "  "))
        monkeypatch.setenv("BACKUP_CONFIG", str(tmp_path / "backup_config.yaml"))
        config = load_config().config
        return {name: build_target(name, config.targets[name]) for name in TARGETS}

    return {"configure": configure, "keys": keys}


def put_backup(
    targets: dict[str, Target], keys: KeyRing, backup_id: str, schedule: str, started: datetime,
    backup_type: str = "FULL", parent: str | None = None,
) -> None:  # fmt: skip
    """One published, verified backup at every target, as a run leaves it."""
    payload = f"payload of {backup_id}".encode()
    key_id, kek = keys.active()
    for name, target in targets.items():
        m = Manifest(
            backup_id=backup_id, schedule=schedule, source="db", source_type="files",
            backup_type=backup_type, parent_id=parent, started_at=started,
            finished_at=started + timedelta(minutes=5), payload_format="tar",
            objects=[StoredObject(name=PAYLOAD_NAME, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())],  # noqa: E501
            verification={name: Verification(ok=True, verified_at=started + timedelta(minutes=6))},
        )  # fmt: skip
        target.put_bytes(f"{backup_prefix('db', backup_id)}/{PAYLOAD_NAME}", payload)
        write_manifest(target, sign(m, key_id, kek))


def index(targets: dict[str, Target], keys: KeyRing) -> None:
    """The catalog index rebuilt from the manifests, as after ``list --rebuild-index``."""
    for target in targets.values():
        rebuild(target, "db", keys)


def held(targets: dict[str, Target]) -> dict[str, set[str]]:
    return {name: {m.backup_id for m in list_backups(t, "db")} for name, t in targets.items()}


def day_id(age_days: int) -> str:
    return f"daily-{(NOW - timedelta(days=age_days)):%Y%m%dT%H%M%SZ}-{age_days:06x}"


def test_forty_daily_backups_are_pruned_to_backup_retention_days(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A schedule with no retention of its own: every FULL younger than
    dr.backup_retention_days stays; past that only the newest backup of each month and of
    each year (the seed's "fulls after 30 days, except monthly ones"); nothing else."""
    days = 30  # the default, and the seed's "fulls after 30 days"
    targets = world["configure"](f"{{backup_retention_days: {days}}}", """
        - {name: daily, source: db, type: FULL, cron: "@daily", targets: [disk, s3]}
    """)  # fmt: skip
    started = {day_id(age): NOW - timedelta(days=age, hours=1) for age in range(40)}
    for backup_id, when in started.items():
        put_backup(targets, world["keys"], backup_id, "daily", when)
    index(targets, world["keys"])

    # What the docs promise, computed here from the calendar, not by the planner.
    young = {b for b, when in started.items() if NOW - when < timedelta(days=days)}
    newest_of: dict[str, str] = {}
    for b, when in sorted(started.items(), key=lambda kv: kv[1]):
        newest_of[f"{when:%Y-%m}"] = b
        newest_of[f"{when:%Y}"] = b
    expected = young | set(newest_of.values())
    assert len(young) == days and 40 - len(expected) >= 7

    assert main(["prune", "--schedule", "daily", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"\npolicy: .*backup_retention_days {days} \(FULL/SCHEMA\)", out)
    for name in TARGETS:
        head = f"{name}: would delete {40 - len(expected)} backup(s), keep {len(expected)}"
        section = out[out.index(head) :]
        for b in started:  # every backup on its own line, with its action and its rule
            line = re.search(rf"\n    (keep|delete) +{b} .*", section)
            assert line is not None, b
            assert line[1] == ("keep" if b in expected else "delete"), line[0]
        assert re.search(rf"keep +{day_id(0)} .*younger than {days} days \(backup_retention_days\)", section)
        old_month_keep = max((b for b in expected - young), key=started.__getitem__)
        assert re.search(rf"keep +{old_month_keep} .*monthly \d{{4}}-\d\d", section)
        gone = min(set(started) - expected, key=started.__getitem__)
        assert re.search(rf"delete +{gone} .*not kept by any GFS tier .*, older than {days} days", section)
    assert held(targets) == {name: set(started) for name in TARGETS}  # a dry run deletes nothing

    assert main(["prune", "--schedule", "daily", "--dry-run", "--json"]) == 0
    out = capsys.readouterr().out
    plans = json.loads(out[out.index('{\n "plans"'):])["plans"]  # after the AWS hook's log lines
    assert {p["target"] for p in plans} == set(TARGETS)
    for p in plans:
        assert {b["backup_id"] for b in p["backups"] if b["action"] == "keep"} == expected
        assert all(b["rules"] for b in p["backups"])

    assert main(["prune", "--schedule", "daily"]) == 0
    assert held(targets) == {name: expected for name in TARGETS}
    for name, target in targets.items():
        for m in list_backups(target, "db"):  # nothing older than the window but month/year keeps
            assert NOW - m.started_at < timedelta(days=days) or m.backup_id in newest_of.values(), name


def test_transaction_logs_stay_exactly_as_long_as_their_base(world: dict[str, Any]) -> None:
    """Bases every 5 days with a log each day after them. The FULL schedule keeps 12 days:
    the logs of the bases it keeps stay however old (point-in-time recovery from each
    retained base reaches the next one), the logs of the bases it deletes go, young or not
    needed."""
    targets = world["configure"]("{}", """
        - {name: base, source: db, type: FULL, cron: "@daily", targets: [disk, s3], retention_days: 12}
        - {name: wal, source: db, type: TRANSACTION_LOG, cron: "@hourly", targets: [disk, s3]}
    """)  # fmt: skip
    keys = world["keys"]
    logs_of: dict[str, list[str]] = {}
    for base_age in (24, 19, 14, 9, 4):
        base = f"base-{(NOW - timedelta(days=base_age)):%Y%m%dT%H%M%SZ}-{base_age:06x}"
        put_backup(targets, keys, base, "base", NOW - timedelta(days=base_age, hours=2))
        parent = base
        logs_of[base] = []
        for age in range(base_age, max(base_age - 5, 0), -1):
            log_id = f"wal-{(NOW - timedelta(days=age)):%Y%m%dT%H%M%SZ}-{age:06x}"
            when = NOW - timedelta(days=age, hours=1)
            put_backup(targets, keys, log_id, "wal", when, "TRANSACTION_LOG", parent)
            logs_of[base].append(log_id)
            parent = log_id
    bases = list(logs_of)
    index(targets, keys)

    assert main(["prune", "--schedule", "wal"]) == 0
    assert main(["prune", "--schedule", "base"]) == 0
    retained = [b for b in bases if int(b.rsplit("-", 1)[1], 16) < 12]  # 9 and 4 days old
    assert len(retained) == 2
    expected = set(retained) | {log for b in retained for log in logs_of[b]}
    assert held(targets) == {name: expected for name in TARGETS}
    # The logs of the oldest retained base are older than the 7 days of incrementals, and stay.
    assert any(int(log.rsplit("-", 1)[1], 16) > 7 for log in logs_of[retained[0]])
    # A second pass changes nothing: the plan is stable.
    assert main(["prune", "--schedule", "wal"]) == 0
    assert main(["prune", "--schedule", "base"]) == 0
    assert held(targets) == {name: expected for name in TARGETS}


def test_min_backups_are_never_deleted(world: dict[str, Any]) -> None:
    targets = world["configure"]("{}", """
        - {name: daily, source: db, type: FULL, cron: "@daily", targets: [disk, s3],
           retention_days: 1, cleanup_rules: {min_backups: 5}}
    """)  # fmt: skip
    ids = [day_id(age) for age in range(10, 20)]
    for age, backup_id in zip(range(10, 20), ids, strict=True):
        put_backup(targets, world["keys"], backup_id, "daily", NOW - timedelta(days=age))
    index(targets, world["keys"])
    assert main(["prune", "--schedule", "daily"]) == 0
    assert held(targets) == {name: set(ids[:5]) for name in TARGETS}


def test_failed_runs_count_in_the_success_rate(world: dict[str, Any], tmp_path: Path) -> None:
    """A run that failed for good leaves a signed record at its targets; dr_monitor (the DR
    page and the API read its report) counts it until a backup of that id is published.
    A record written without the key ring counts for nothing."""
    targets = world["configure"]("{}", """
        - {name: daily, source: db, type: FULL, cron: "@daily", targets: [disk, s3]}
    """)  # fmt: skip
    keys = world["keys"]
    for age in (1, 2, 3):
        put_backup(targets, keys, day_id(age), "daily", NOW - timedelta(days=age))
    index(targets, keys)
    config = load_config().config
    failed_id = day_id(0)
    assert record_failed_run(config, config.schedule("daily"), failed_id, "upload_s3", keys) == list(TARGETS)
    forged = FailedRun("daily-20260101T000000Z-000000", "daily", "db", "dump", NOW)
    forger = KeyRing.generate(tmp_path / "forger.json", "k1")  # the same key id, another key
    targets["disk"].put_bytes(record_key("db", forged.backup_id), encode(forged, forger))

    source = run_monitor(config, keyring=keys).to_json()["sources"]["db"]
    assert (source["backups_count"], source["verified_count"], source["failed_runs_count"]) == (3, 3, 1)
    assert source["success_rate"] == 0.75

    # The run was cleared and ran again: its backup is published, the failure no longer counts.
    put_backup(targets, keys, failed_id, "daily", NOW)
    index(targets, keys)
    source = run_monitor(config, keyring=keys).to_json()["sources"]["db"]
    assert (source["failed_runs_count"], source["success_rate"]) == (0, 1.0)


def test_any_run_and_dr_monitor_remove_a_dead_run_s_staging_after_a_day(world: dict[str, Any]) -> None:
    """Staging a failed or killed run left is removed once untouched for 24 hours by the
    cleanup of any schedule, and by dr_monitor's sweep; a younger one stays for a retry."""
    world["configure"]("{}", """
        - {name: daily, source: db, type: FULL, cron: "@daily", targets: [disk, s3]}
        - {name: other, source: db, type: FULL, cron: "@daily", targets: [disk, s3]}
    """)  # fmt: skip
    config = load_config().config
    root = staging_root(config)
    root.mkdir(parents=True)

    def dead_run(name: str, hours_ago: float) -> Path:
        stage = root / name
        stage.mkdir()
        (stage / "payload").write_bytes(b"sealed")
        when = time.time() - hours_ago * 3600
        for path in (stage / "payload", stage):
            os.utime(path, (when, when))
        return stage

    old_daily = dead_run("daily-20260101T000000Z-aaaaaa", 25)
    young_daily = dead_run("daily-20260102T000000Z-bbbbbb", 20)
    old_other = dead_run("other-20260101T000000Z-cccccc", 30)
    # A later run of "other" (another schedule than "daily") cleans up.
    meta = tasks.BackupMeta(backup_id="other-20260103T000000Z-dddddd", staging=str(root / "x"),
                            backup_type="FULL", parent_id=None, raw_size=0, compressed_size=0)  # fmt: skip
    tasks.cleanup(config, meta, "other")
    assert not old_daily.exists() and not old_other.exists() and young_daily.exists()

    os.utime(young_daily, (time.time() - 25 * 3600,) * 2)
    os.utime(young_daily / "payload", (time.time() - 25 * 3600,) * 2)
    sweep_configured_staging(config)  # what dr_monitor runs every 15 minutes
    assert not young_daily.exists()
