"""Staging safety (issue 10, defects 3 and 8): plaintext in staging is private and never
outlives its run, a config edit between steps fails clearly, a full staging disk is named,
payloads whose manifest never arrived are swept. Real files, a real tmpfs, a real local
target and moto's S3 server; the same step functions the DAG tasks call."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup import tasks
from include.backup.alerts import callbacks
from include.backup.catalog.catalog import list_backups
from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME
from include.backup.config.loader import load_config
from include.backup.errors import BackupError
from include.backup.keys import KeyRing
from include.backup.staging import StagingFull, sweep_configured_staging
from include.backup.targets import build_target
from tests.integration.services import unique

pytestmark = pytest.mark.integration

DUMP = tasks.DUMP_NAME
HOURS = 3600.0


def write_config(tmp: Path, data: Path, *, staging: Path, extra_targets: str = "",
                 targets: str = "[disk1, disk2]", with_inc: bool = True) -> None:
    inc = (
        f'  - {{name: docs_inc, source: docs, type: INCREMENTAL, cron: "@hourly", targets: {targets}}}'
        if with_inc else ""
    )
    (tmp / "backup_config.yaml").write_text(textwrap.dedent(f"""
        staging_dir: {staging}
        targets:
          disk1: {{type: local, path: {tmp}/t1}}
          disk2: {{type: local, path: {tmp}/t2, offsite: true}}
          {extra_targets}
        sources:
          docs: {{type: files, paths: [{data}]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: {targets}}}
        {inc}
    """))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n" * 1000)
    (data / "b.bin").write_bytes(os.urandom(200_000))
    write_config(tmp_path, data, staging=tmp_path / "staging")
    monkeypatch.setenv("BACKUP_CONFIG", str(tmp_path / "backup_config.yaml"))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return tmp_path, data


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def age(stage: Path, hours: float) -> None:
    """Make a staging directory and everything in it look untouched for ``hours``."""
    then = time.time() - hours * HOURS
    for p in [*stage.iterdir(), stage]:
        os.utime(p, (then, then))


# --- defect 3: modes ---------------------------------------------------------------------


def test_staging_is_owner_only_whatever_the_umask(env: tuple[Path, Path]) -> None:
    tmp, _ = env
    old = os.umask(0)  # the loosest umask: modes must not depend on it
    try:
        meta = tasks.run_dump("docs_full", "run-modes", datetime.now(UTC))
        stage = Path(meta["staging"])
        assert mode(tmp / "staging") == 0o700
        assert mode(stage) == 0o700
        for name in (DUMP, tasks.DRAFT_NAME, "inflight.json", "run.lock"):
            assert mode(stage / name) == 0o600, name
        meta = tasks.run_checksum(tasks.run_encrypt(meta))
        for p in stage.iterdir():
            assert mode(p) == 0o600, p.name
    finally:
        os.umask(old)


# --- defect 3: plaintext removed on every failure path ----------------------------------


def test_failed_encrypt_keeps_the_dump_for_its_retry_and_the_final_failure_removes_it(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, _ = env
    logical = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    meta = tasks.run_dump("docs_full", "scheduled__2026-03-01", logical)
    stage = Path(meta["staging"])
    # A transient failure (the key connection briefly unreachable): Airflow retries the
    # encrypt task alone, so the dump must still be there, owner-only, with no partial payload.
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp / "no-such-keys.json"))
    with pytest.raises(Exception, match="no-such-keys"):
        tasks.run_encrypt(meta)
    assert sorted(p.name for p in stage.iterdir() if p.name.startswith(("dump", "payload"))) == [DUMP]
    assert stat.S_IMODE((stage / DUMP).stat().st_mode) == 0o600
    # The retries run out: the task's failure callback removes the plaintext.
    ctx = {"ti": TI("backup__docs_full", "encrypt"), "run_id": "scheduled__2026-03-01",
           "logical_date": logical, "exception": RuntimeError("no key ring")}
    callbacks.on_backup_failure(ctx, state_path=tmp / "alert-state")
    assert not (stage / DUMP).exists()
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp / "keys.json"))
    with pytest.raises(BackupError, match="clear the dump task"):
        tasks.run_encrypt(meta)


def test_retried_encrypt_after_a_transient_failure_completes(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, _ = env
    meta = tasks.run_dump("docs_full", "run-retry", datetime.now(UTC))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp / "no-such-keys.json"))
    with pytest.raises(Exception, match="no-such-keys"):
        tasks.run_encrypt(meta)
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp / "keys.json"))
    done = tasks.run_encrypt(meta)  # Airflow's retry of the same task
    assert not (Path(done["staging"]) / DUMP).exists() and (Path(done["staging"]) / PAYLOAD_NAME).exists()


def test_encrypt_removes_the_dump_once_the_container_is_complete(env: tuple[Path, Path]) -> None:
    meta = tasks.run_encrypt(tasks.run_dump("docs_full", "run-ok", datetime.now(UTC)))
    stage = Path(meta["staging"])
    assert not (stage / DUMP).exists() and (stage / PAYLOAD_NAME).exists()


class TI:
    def __init__(self, dag_id: str, task_id: str) -> None:
        self.dag_id, self.task_id, self.map_index, self.try_number = dag_id, task_id, -1, 3


def test_failure_callback_removes_the_run_s_plaintext_even_after_its_schedule_left_the_config(
    env: tuple[Path, Path],
) -> None:
    tmp, data = env
    logical = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    meta = tasks.run_dump("docs_inc", "scheduled__2026-03-01", logical)
    other = tasks.run_dump("docs_full", "scheduled__2026-03-01", logical)  # another run: kept
    stage = Path(meta["staging"])
    # The schedule is edited out of the config, then the run's encrypt dies without its
    # own cleanup (a killed worker): Airflow calls the task's failure callback.
    write_config(tmp, data, staging=tmp / "staging", with_inc=False)
    ctx = {"ti": TI("backup__docs_inc", "encrypt"), "run_id": "scheduled__2026-03-01",
           "logical_date": logical, "exception": RuntimeError("worker lost")}
    callbacks.on_backup_failure(ctx, state_path=tmp / "alert-state")
    assert not (stage / DUMP).exists()
    assert (stage / tasks.DRAFT_NAME).exists()  # only the plaintext goes
    assert (Path(other["staging"]) / DUMP).exists()


def hold_run_lock(stage: Path) -> subprocess.Popen[str]:
    """Another process at work on ``stage`` (a dump whose source has not written for
    hours: pg_dump's directory phase), holding the run lock as the steps do."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from include.backup.catalog.inflight import run_lock
        with run_lock(Path({str(stage)!r}), purpose="test"):
            print("held", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_sweep_by_any_schedule_and_by_the_monitor_removes_abandoned_plaintext(
    env: tuple[Path, Path],
) -> None:
    dead = Path(tasks.run_dump("docs_full", "run-dead", datetime(2026, 3, 1, tzinfo=UTC))["staging"])
    busy = Path(tasks.run_dump("docs_full", "run-busy", datetime(2026, 3, 2, tzinfo=UTC))["staging"])
    recent = Path(tasks.run_dump("docs_full", "run-recent", datetime(2026, 3, 3, tzinfo=UTC))["staging"])
    age(dead, 7)
    age(busy, 7)
    age(recent, 1)
    holder = hold_run_lock(busy)
    try:
        # A dump of another schedule sweeps the whole staging root.
        tasks.run_dump("docs_inc", "run-other", datetime.now(UTC))
        assert not (dead / DUMP).exists() and (dead / tasks.DRAFT_NAME).exists()
        assert (busy / DUMP).exists(), "a run whose step holds its lock is never swept"
        assert (recent / DUMP).exists(), "within the grace: the encrypt may still come"
    finally:
        holder.kill()
        holder.wait()
    age(busy, 7)
    assert sweep_configured_staging(load_config().config) == [busy / DUMP]  # dr_monitor's sweep


def test_sweep_grace_is_configurable(env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    stage = Path(tasks.run_dump("docs_full", "run-g", datetime(2026, 3, 1, tzinfo=UTC))["staging"])
    age(stage, 1)
    assert sweep_configured_staging(load_config().config) == []
    monkeypatch.setenv("BACKUP_PLAINTEXT_GRACE_HOURS", "0.5")
    assert sweep_configured_staging(load_config().config) == [stage / DUMP]


def test_encrypt_after_the_sweep_fails_clearly(env: tuple[Path, Path]) -> None:
    meta = tasks.run_dump("docs_full", "run-late", datetime(2026, 3, 1, tzinfo=UTC))
    age(Path(meta["staging"]), 7)
    sweep_configured_staging(load_config().config)
    with pytest.raises(BackupError, match="removed .* by the staging sweep .*clear the dump task"):
        tasks.run_encrypt(meta)


# --- defect 8: a config edit between the steps of a run ----------------------------------


def test_target_removed_after_the_dump_fails_upload_and_verify_clearly(env: tuple[Path, Path]) -> None:
    tmp, data = env
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_full", "run-e", datetime.now(UTC))))
    write_config(tmp, data, staging=tmp / "staging", targets="[disk1]")
    config_file = tmp / "backup_config.yaml"
    disk2 = f"disk2: {{type: local, path: {tmp}/t2, offsite: true}}"
    config_file.write_text(config_file.read_text().replace(disk2, ""))  # the target is gone
    with pytest.raises(BackupError, match=r"target 'disk2' is no longer in the config"):
        tasks.run_upload(meta, "disk2")
    with pytest.raises(BackupError, match=r"target 'disk2' is no longer in the config"):
        tasks.run_verify(meta, "disk2")
    tasks.run_upload(meta, "disk1")


def test_target_dropped_from_the_schedule_fails_upload_clearly(env: tuple[Path, Path]) -> None:
    tmp, data = env
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_full", "run-d", datetime.now(UTC))))
    write_config(tmp, data, staging=tmp / "staging", targets="[disk1]")  # disk2 still defined
    with pytest.raises(BackupError, match=r"'disk2' is no longer one of schedule 'docs_full'"):
        tasks.run_upload(meta, "disk2")


def test_schedule_removed_mid_run_fails_each_step_clearly_and_leaves_no_staging(
    env: tuple[Path, Path],
) -> None:
    tmp, data = env
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_inc", "run-s", datetime.now(UTC))))
    for t in ("disk1", "disk2"):
        tasks.run_upload(meta, t)
    write_config(tmp, data, staging=tmp / "staging", with_inc=False)
    with pytest.raises(BackupError, match=r"schedule 'docs_inc' is no longer a valid schedule"):
        tasks.run_dump("docs_inc", "run-s2", datetime.now(UTC))
    with pytest.raises(BackupError, match=r"upload step .* schedule 'docs_inc' is no longer"):
        tasks.run_upload(meta, "disk1")
    with pytest.raises(BackupError, match=r"cleanup step .* schedule 'docs_inc' is no longer"):
        tasks.run_cleanup(meta, "docs_inc")
    assert not Path(meta["staging"]).exists()


def test_staging_of_a_schedule_gone_from_the_config_is_removed_when_stale(env: tuple[Path, Path]) -> None:
    tmp, data = env
    gone = Path(tasks.run_dump("docs_inc", "run-gone", datetime(2026, 1, 1, tzinfo=UTC))["staging"])
    age(gone, 8 * 24)
    write_config(tmp, data, staging=tmp / "staging", with_inc=False)
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_full", "run-f", datetime.now(UTC))))
    for t in ("disk1", "disk2"):
        tasks.run_upload(meta, t)
        tasks.run_verify(meta, t)
    tasks.run_cleanup(meta, "docs_full")
    assert not gone.exists()


# --- defect 8: a full staging disk -------------------------------------------------------


def test_full_staging_during_the_dump_names_path_and_free_space(
    env: tuple[Path, Path], small_fs: Path
) -> None:
    tmp, data = env
    (data / "big.bin").write_bytes(os.urandom(3 << 20))  # incompressible, more than fits
    write_config(tmp, data, staging=small_fs / "staging")
    with pytest.raises(StagingFull) as err:
        tasks.run_dump("docs_full", "run-full", datetime.now(UTC))
    msg = str(err.value)
    assert f"{small_fs}/staging/docs_full-" in msg and "dump.partial" in msg
    assert "free there" in msg and "written" in msg and "staging_dir" in msg
    assert "Errno" not in msg
    assert list((small_fs / "staging").iterdir()) == []  # nothing partial left


def test_full_staging_during_encrypt_names_the_size_needed_and_removes_the_partial_payload(
    env: tuple[Path, Path], small_fs: Path
) -> None:
    tmp, data = env
    (data / "b.bin").unlink()
    (data / "big.bin").write_bytes(os.urandom(1200 << 10))  # the dump fits, dump + container not
    write_config(tmp, data, staging=small_fs / "staging")
    meta = tasks.run_dump("docs_full", "run-full2", datetime.now(UTC))
    stage = Path(meta["staging"])
    with pytest.raises(StagingFull, match=r"payload\.partial .* this step needs about 1\.\d MiB"):
        tasks.run_encrypt(meta)
    assert not (stage / (PAYLOAD_NAME + ".partial")).exists()
    # The dump stays for a retry once space is freed; the final failure's callback or the
    # sweep removes it (test_failed_encrypt_keeps_the_dump_for_its_retry_...).
    assert stat.S_IMODE((stage / DUMP).stat().st_mode) == 0o600


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs with room for bytes but only a handful of files (inodes)."""
    mnt = tmp_path / "few"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=4", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_staging_outside_the_dump_file_is_named_too_and_leaves_nothing(
    env: tuple[Path, Path], few_inodes: Path
) -> None:
    """Issue 18: the staging directory, the run lock or the in-flight record created on
    a full file system gave a bare ``OSError: [Errno 28]``."""
    tmp, data = env
    write_config(tmp, data, staging=few_inodes / "staging")
    with pytest.raises(StagingFull) as err:
        tasks.run_dump("docs_full", "run-inodes", datetime.now(UTC))
    msg = str(err.value)
    assert f"{few_inodes}/staging" in msg and "free there" in msg and "staging_dir" in msg
    assert "Errno" not in msg
    assert [p.name for p in (few_inodes / "staging").iterdir() if not p.name.startswith(".")] == []


# --- defect 8: payloads whose manifest never arrived ------------------------------------


@pytest.fixture(params=["disk1", "s3"])
def orphan_env(request: pytest.FixtureRequest, env: tuple[Path, Path]) -> tuple[Path, str]:
    tmp, data = env
    if request.param == "s3":
        s3 = request.getfixturevalue("moto_server")
        extra = (f"s3: {{type: s3, conn_id: {s3.conn_id}, bucket: {s3.bucket}, "
                 f"prefix: {unique('orph')}/}}")
        write_config(tmp, data, staging=tmp / "staging", extra_targets=extra, targets="[disk1, s3]")
    return tmp, request.param


def upload_without_manifest(name: str, when: datetime, target_name: str) -> dict[str, Any]:
    """A run whose payload reached the target and whose manifest upload failed."""
    meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_full", name, when)))
    config = load_config().config
    target = build_target(target_name, config.targets[target_name])
    target.put(f"docs/{meta['backup_id']}/{PAYLOAD_NAME}", Path(meta["staging"]) / PAYLOAD_NAME)
    return meta


def test_cleanup_sweeps_payloads_without_manifest_after_the_grace(orphan_env: tuple[Path, str]) -> None:
    tmp, tname = orphan_env
    config = load_config().config
    target = build_target(tname, config.targets[tname])
    old = upload_without_manifest("run-old", datetime.now(UTC) - timedelta(days=3), tname)
    young = upload_without_manifest("run-young", datetime.now(UTC) - timedelta(hours=1), tname)
    target.put_bytes("docs/not-one-of-ours/payload", b"x")  # never ours to delete

    def keys() -> set[str]:
        return {o.key.split("/")[1] for o in target.list("docs/")}

    def run_and_clean(run: str) -> dict[str, Any]:
        meta = tasks.run_checksum(tasks.run_encrypt(tasks.run_dump("docs_full", run, datetime.now(UTC))))
        for t in config.schedule("docs_full").targets:
            tasks.run_upload(meta, t)
            tasks.run_verify(meta, t)
        return tasks.run_cleanup(meta, "docs_full")

    # The old orphan's run is still in flight (its staging, with its record, is there).
    done = run_and_clean("run-1")
    assert old["backup_id"] in keys() and done["orphans"][tname] == []
    import shutil

    shutil.rmtree(old["staging"])  # its run is over (cleanup, or a week stale)
    shutil.rmtree(young["staging"])
    done = run_and_clean("run-2")
    assert done["orphans"][tname] == [old["backup_id"]]
    assert old["backup_id"] not in keys()
    assert young["backup_id"] in keys() and "not-one-of-ours" in keys()
    # Good backups are never orphans (retention alone decides about them).
    assert done["backup_id"] in {m.backup_id for m in list_backups(target, "docs")}
    # the catalog index and the audit trail (docs/audit.md) live beside the backups
    backups = [o for o in target.list("docs/") if not o.key.startswith(("docs/_catalog/", "docs/_audit/"))]
    assert all(o.key.endswith((PAYLOAD_NAME, MANIFEST_NAME)) for o in backups)
