"""Long work shows its progress (issue 16): a real backup (dump, encrypt, checksum, upload,
verify, deep verify) and a real restore of a files source at a local target, large enough
to cross several reporting intervals of a fake clock, log monotonic progress lines that
end at 100 %; the CLI on a pipe keeps stdout to its result lines (progress on stderr,
nothing with --quiet)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from include.backup import progress as prog
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.sources.postgres.cluster import stop_restored_server
from include.backup.testing import PgCluster, run_backup
from tests.unit.test_progress import Ticking, assert_monotonic_to_100

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
STEPS = ("dump", "encrypt", "checksum", "upload", "verify", "deep verify", "check", "restore")


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    data = tmp_path / "data" / "docs"
    (data / "sub").mkdir(parents=True)
    (data / "big.bin").write_bytes(os.urandom(20 * MIB))  # incompressible: stored ~ raw
    (data / "sub" / "small.bin").write_bytes(os.urandom(4 * MIB))
    config = tmp_path / "backup_config.yaml"
    config.write_text(textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk: {{type: local, path: {tmp_path}/disk}}
        sources:
          docs: {{type: files, paths: ["{data}"]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk]}}
    """))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return {"tmp": tmp_path, "data": data, "config": config, "keys": tmp_path / "keys.json"}


class Collect(logging.Handler):
    """The progress logger's lines, wherever else logging sends them (importing Airflow's
    SDK reconfigures the root logger, so pytest's caplog can miss them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def collected() -> Iterator[Collect]:
    logger = logging.getLogger("include.backup.progress")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _step_lines(collected: Collect, step: str) -> list[str]:
    pattern = re.compile(rf"^progress {step} (?!verify)\S+")  # "verify" is not "deep verify"
    return [line for line in collected.lines if pattern.match(line)]


def test_backup_and_restore_report_monotonic_progress_to_100(
    setup: dict[str, Path], collected: Collect
) -> None:
    into = setup["tmp"] / "restored"
    # Each clock read is 5 s later: 24 MiB read in 1 MiB checks spans minutes of fake time.
    with prog.clock(Ticking(5.0)):
        meta = run_backup("docs_full", deep=True)
        keys = KeyRing.from_json(setup["keys"].read_text())
        restore_backup(load_config().config, meta["backup_id"], str(into), keys=keys, target_name="disk")
    got = tree_digest(into / str(setup["data"]).lstrip("/"))
    assert compare_trees(tree_digest(setup["data"]), got) == []
    for step in STEPS:
        lines = _step_lines(collected, step)
        assert_monotonic_to_100(lines)
    # The dump's size is unknown up front: time-driven lines (every 30 s), no percent before the end.
    dump = _step_lines(collected, "dump")
    assert all("%" not in line for line in dump[:-1]) and "(100 %)" in dump[-1]
    # Stored bytes are counted once each: the final upload line names the payload's size.
    upload = _step_lines(collected, "upload")[-1]
    assert re.search(r"([\d.]+) MiB of \1 MiB \(100 %\)", upload), upload


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # As a user runs it: Airflow's unit-test mode (tests/conftest.py) logs to stdout.
    dropped = "AIRFLOW__CORE__UNIT_TEST_MODE"
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_") and k != dropped}
    return subprocess.run(
        [sys.executable, "-m", "include.backup", *args],
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,  # a pipe, not a terminal
        text=True,
        timeout=300,
    )


def test_cli_on_a_pipe_keeps_stdout_parseable(setup: dict[str, Path]) -> None:
    env = {"BACKUP_CONFIG": str(setup["config"]), "BACKUP_KEY_FILE": str(setup["keys"])}
    made = cli("backup", "docs_full", env=env)
    assert made.returncode == 0, made.stderr
    backup_id = made.stdout.strip().splitlines()[-1]
    assert made.stdout.strip() == backup_id  # stdout: the backup id alone
    assert re.search(rf"progress upload {re.escape(backup_id)} to disk: .*\(100 %\)", made.stderr)
    assert "\x1b[" not in made.stderr  # no terminal control codes on a pipe

    into = setup["tmp"] / "restored"
    restored = cli("restore", backup_id, "--into", str(into), env=env)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["backup_id"] == backup_id  # stdout: one JSON document
    assert re.search(rf"progress restore {re.escape(backup_id)} into .*\(100 %\)", restored.stderr)

    checked = cli("verify", backup_id, "--deep", "--quiet", env=env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"disk: {backup_id}: ok (deep)")
    assert "progress" not in checked.stderr  # --quiet: no progress at all


def test_pitr_replay_reports_the_wal_position_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      collected: Collect) -> None:
    """A physical PostgreSQL backup (its dump counted against pg_database_size) and a PITR
    restore: the replay's lines name the target time and the WAL position reached."""
    with PgCluster(archive=True) as pg:
        pg.create_database("shop")
        pg.psql("CREATE TABLE orders (id int PRIMARY KEY)", db="shop")
        monkeypatch.setenv("AIRFLOW_CONN_SHOP_PG", pg.uri("shop"))
        config = tmp_path / "backup_config.yaml"
        config.write_text(textwrap.dedent(f"""
            staging_dir: {tmp_path}/staging
            targets:
              disk: {{type: local, path: {tmp_path}/disk}}
            sources:
              shop: {{type: postgres, conn_id: shop_pg, method: physical,
                      wal_archive_dir: {pg.wal_archive_dir}}}
            schedules:
              - {{name: shop_base, source: shop, type: FULL, cron: "@daily", targets: [disk]}}
              - {{name: shop_wal, source: shop, type: TRANSACTION_LOG, cron: "*/15 * * * *", targets: [disk]}}
        """))
        monkeypatch.setenv("BACKUP_CONFIG", str(config))
        KeyRing.generate(tmp_path / "keys.json", "k1")
        monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
        run_backup("shop_base")
        pg.psql("INSERT INTO orders SELECT g FROM generate_series(1, 100) g", db="shop")
        until = datetime.fromisoformat(
            pg.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
            + "+00:00"
        )
        pg.psql("INSERT INTO orders SELECT g FROM generate_series(101, 150) g", db="shop")
        run_backup("shop_wal")
        into = f"{pg.base_dir}-restored"
        keys = KeyRing.from_json((tmp_path / "keys.json").read_text())
        try:
            config = load_config().config
            result = restore_backup(config, None, into, keys=keys, until=until, source_name="shop")
        finally:
            stop_restored_server(into, quiet=True)
            shutil.rmtree(into, ignore_errors=True)
    assert result.stats["tables"]["shop"] == {"orders": 100}
    dump = _step_lines(collected, "dump")
    assert " of " in dump[-1] and "(100 %)" in dump[-1]  # counted against pg_database_size
    replay = [line for line in collected.lines if line.startswith("progress replay WAL of shop")]
    assert replay and "up to target time " in replay[-1] and "(100 %)" in replay[-1], replay
    assert re.search(r"LSN [0-9A-F]+/[0-9A-F]+, transactions replayed to \d{4}-", replay[-1]), replay
