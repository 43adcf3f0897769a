"""Continuous WAL archiving on a real PostgreSQL 15: ``wal-push`` as the server's
archive_command (run by the server's OS user, without Airflow) sends every segment to a
local target and the S3 emulator while a write load runs; the primary is killed with
``pg_ctl -m immediate``; a point-in-time recovery to the latest point replays the pushed
WAL (fetched, verified and decrypted while replay runs). Also: a retry of an archived
segment is idempotent, other content under the same name is refused, and a tampered
segment ends replay at the last good one, reported by the restore."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from include.backup.cli import main as cli_main
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.errors import IntegrityError
from include.backup.keys import KeyRing
from include.backup.sources.postgres.cluster import stop_restored_server
from include.backup.targets.local import LocalTarget
from include.backup.testing import PgCluster, run_backup
from include.backup.wal.archive import pushed_wal
from include.backup.wal.fetch import fetch_bytes
from include.backup.wal.record import object_key, parse_record, record_key
from include.backup.wal.s3env import EnvS3Target
from tests.integration.services import S3_CONN_ID, S3Service, unique

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONN = "walpush_pg"
SOURCE = "shop"
ARCHIVE_TIMEOUT_S = 30
PROJECT = Path(__file__).resolve().parents[2]


def _postgres_python() -> tuple[str, dict[str, str]]:
    """A Python the server's OS user can run with our package importable: ours when it
    can (a deployment installs it so), else the system one with our site-packages on its
    path (the venv of this machine lives under root's private home)."""
    probe = ["runuser", "-u", "postgres", "--", sys.executable, "-c", "import include.backup.wal.cli"]
    if os.geteuid() != 0 or subprocess.run(probe, capture_output=True, cwd="/").returncode == 0:
        return sys.executable, {}
    site = next(p for p in sys.path if p.endswith("site-packages"))
    return "/usr/bin/python3", {"PYTHONPATH": f"{PROJECT}:{site}"}


def _conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _chown_postgres(*paths: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in paths:
            os.chown(p, pw.pw_uid, pw.pw_gid)


def _query(port: int, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="shop")
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


class Primary:
    """What the module's one run left: the cluster (crashed), the commits and the paths."""

    def __init__(self, work: Path, pg: PgCluster, s3: S3Service, prefix: str) -> None:
        self.work, self.pg, self.s3, self.prefix = work, pg, s3, prefix
        self.commits: list[tuple[int, datetime]] = []  # (id, commit time) acknowledged
        self.safe_id = 0  # every id up to this one is in a segment the archiver pushed
        self.crashed_at: datetime | None = None
        self.push_lag_s = 0.0  # from the last forced switch until the archiver reported it pushed
        self.keys = KeyRing.from_file(work / "keys.json")
        self.restored: list[str] = []

    @property
    def local(self) -> LocalTarget:
        return LocalTarget("local", str(self.work / "t_local"))

    def s3_target(self) -> EnvS3Target:
        return EnvS3Target("s3", S3_CONN_ID, self.s3.bucket, self.prefix)


@pytest.fixture(scope="module")
def primary(moto_server: S3Service) -> Iterator[Primary]:
    work = Path(tempfile.mkdtemp(prefix="walpush-", dir="/tmp"))
    os.chmod(work, 0o755)  # the server's OS user reads the config and key file here
    prefix = unique("walpush") + "/"
    python, env = _postgres_python()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)  # the server started below inherits it
        mp.setenv("BACKUP_CONFIG", str(work / "backup.yaml"))
        mp.setenv("BACKUP_KEY_FILE", str(work / "keys.json"))
        KeyRing.generate(work / "keys.json", "k1")
        for d in ("t_local", "t_copy", "staging"):
            (work / d).mkdir()
        _chown_postgres(work / "keys.json", work / "t_local")
        (work / "backup.yaml").write_text(textwrap.dedent(f"""
            staging_dir: {work}/staging
            targets:
              local: {{type: local, path: {work}/t_local}}
              s3: {{type: s3, conn_id: {S3_CONN_ID}, bucket: {moto_server.bucket}, prefix: {prefix}}}
              copy: {{type: local, path: {work}/t_copy}}
            sources:
              {SOURCE}: {{type: postgres, conn_id: {CONN}, method: physical,
                     wal_archive_dir: {work}/pg/wal_archive}}
            schedules:
              - {{name: shop_base, source: {SOURCE}, type: FULL, cron: "@daily", targets: [local, s3]}}
              - {{name: shop_wal, source: {SOURCE}, type: TRANSACTION_LOG, cron: "*/15 * * * *",
                  targets: [local, s3]}}
            """))
        push = f"{shlex.quote(python)} -m include.backup wal-push %p"
        settings = {"archive_command": _conf(push), "archive_timeout": str(ARCHIVE_TIMEOUT_S)}
        pg = PgCluster(base_dir=work / "pg", archive=True, settings=settings)
        with pg:
            pg.create_database("shop")
            pg.psql("CREATE TABLE orders (id int PRIMARY KEY, at timestamptz NOT NULL)", db="shop")
            mp.setenv(f"AIRFLOW_CONN_{CONN.upper()}", pg.uri("shop"))
            state = Primary(work, pg, moto_server, prefix)
            run_backup("shop_base", run_id="base")
            _write_load_and_crash(state)
            try:
                yield state
            finally:
                for d in state.restored:
                    stop_restored_server(d, quiet=True)
    shutil.rmtree(work, ignore_errors=True)


def _write_load_and_crash(state: Primary) -> None:
    """Commit a row every few ms for a few seconds, forcing a segment switch every 50
    rows (what archive_timeout does, sooner); wait until the archiver pushed the last
    switched segment; commit a few rows more (in the open segment); kill the server."""
    conn = psycopg2.connect(**state.pg.conn_params("shop"))
    conn.autocommit = True
    last_switched = ""
    with conn.cursor() as cur:
        for i in range(1, 151):
            cur.execute("INSERT INTO orders VALUES (%s, clock_timestamp()) RETURNING at", (i,))
            state.commits.append((i, cur.fetchone()[0]))
            if i % 50 == 0:
                cur.execute("SELECT pg_walfile_name(pg_switch_wal())")
                last_switched, state.safe_id = cur.fetchone()[0], i
            time.sleep(0.01)
        switched = time.monotonic()
        deadline = switched + 180
        while True:
            cur.execute("SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '')"
                        " FROM pg_stat_archiver")  # fmt: skip
            archived, failed = cur.fetchone()
            if archived >= last_switched:
                state.push_lag_s = time.monotonic() - switched
                break
            assert time.monotonic() < deadline, f"archiver stuck (failed: {failed}); see {state.pg.log_path}"
            time.sleep(0.2)
        for i in range(151, 156):  # in the segment still open at the crash: lost by design
            cur.execute("INSERT INTO orders VALUES (%s, clock_timestamp()) RETURNING at", (i,))
            state.commits.append((i, cur.fetchone()[0]))
    conn.close()
    state.crashed_at = datetime.now(UTC)
    state.pg.crash()  # pg_ctl stop -m immediate


def test_pitr_to_latest_after_the_primary_is_killed_loses_only_the_open_segment(primary: Primary) -> None:
    config = load_config().config
    into = str(primary.work / "restored")
    primary.restored.append(into)
    result = restore_backup(config, None, into, keys=primary.keys, source_name=SOURCE, target_name="local")
    assert "wal_refused" not in result.stats
    rows = _query(result.stats["port"], "SELECT id, at FROM orders ORDER BY id")
    ids = [r[0] for r in rows]
    # Every commit in a pushed segment is back, in order, nothing invented.
    assert ids[: primary.safe_id] == list(range(1, primary.safe_id + 1))
    assert set(ids) <= {i for i, _ in primary.commits}
    lost = [(i, at) for i, at in primary.commits if i not in set(ids)]
    assert [i for i, _ in lost] == list(range(primary.safe_id + 1, len(primary.commits) + 1))
    # The data-loss window: how long before the crash the oldest lost commit was made.
    window = (primary.crashed_at - min(at for _, at in lost)).total_seconds()
    print(f"\nwal-push: {len(ids)} of {len(primary.commits)} commits restored; lost ids "
          f"{lost[0][0]}-{lost[-1][0]}; data-loss window {window:.2f}s (archive_timeout "
          f"{ARCHIVE_TIMEOUT_S}s); last segment pushed {primary.push_lag_s:.1f}s after "
          "its switch")  # fmt: skip
    # The bound the feature promises: no lost commit older than archive_timeout.
    assert window < ARCHIVE_TIMEOUT_S


def test_s3_holds_the_same_wal_verified(primary: Primary, capsys: pytest.CaptureFixture[str]) -> None:
    local, s3 = pushed_wal(primary.local, SOURCE), pushed_wal(primary.s3_target(), SOURCE)
    assert local.names == s3.names and len(local.segments) >= 4
    name = local.segments[-1]
    data_s3, rec_s3 = fetch_bytes([primary.s3_target()], SOURCE, name, primary.keys)
    data_local, rec_local = fetch_bytes([primary.local], SOURCE, name, primary.keys)
    assert data_s3 == data_local and rec_s3.sha256 == rec_local.sha256 and len(data_s3) == 16 << 20
    assert cli_main(["list", "--target", "local", "--source", SOURCE]) == 0
    listed = capsys.readouterr().out
    assert f"pushed WAL of {SOURCE}: {len(local.segments)} segment(s)" in listed
    assert f"{local.segments[0]} .. {name}, newest pushed " in listed


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "include.backup", *args], capture_output=True, text=True,
                          cwd=PROJECT, env=dict(os.environ), timeout=600)  # fmt: skip


def test_a_retry_is_idempotent_and_other_content_is_refused(primary: Primary) -> None:
    name = pushed_wal(primary.local, SOURCE).segments[2]
    data, _ = fetch_bytes([primary.local], SOURCE, name, primary.keys)
    before = {t.name: t.read_bytes(record_key(SOURCE, name)) for t in (primary.local, primary.s3_target())}
    retry = primary.work / "retry"
    retry.mkdir(exist_ok=True)
    (retry / name).write_bytes(data)
    done = _cli("wal-push", str(retry / name))
    assert done.returncode == 0, done.stderr
    (retry / name).write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    refused = _cli("wal-push", str(retry / name))
    assert refused.returncode == 1
    assert "already holds" in refused.stderr and "other content" in refused.stderr and name in refused.stderr
    after = {t.name: t.read_bytes(record_key(SOURCE, name)) for t in (primary.local, primary.s3_target())}
    assert after == before  # neither the retry nor the conflict rewrote the archive


def test_a_tampered_segment_ends_replay_at_the_last_good_one(primary: Primary) -> None:
    shutil.copytree(primary.work / "t_local", primary.work / "t_copy", dirs_exist_ok=True)
    copy = LocalTarget("copy", str(primary.work / "t_copy"))
    segments = pushed_wal(copy, SOURCE).segments
    bad = segments[-2]  # rows 51-100: replay must stop after row 50
    blob = bytearray(copy.read_bytes(object_key(SOURCE, bad)))
    blob[len(blob) // 2] ^= 0x01
    (primary.work / "t_copy" / object_key(SOURCE, bad)).write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="does not match its record"):
        fetch_bytes([copy], SOURCE, bad, primary.keys)
    record = copy.read_bytes(record_key(SOURCE, segments[-2])).replace(b'"pushed_at": "', b'"pushed_at": "1')
    with pytest.raises(IntegrityError, match="failed authentication"):
        parse_record(record, primary.keys, source=SOURCE, name=segments[-2])

    config = load_config().config
    into = str(primary.work / "restored-tampered")
    primary.restored.append(into)
    result = restore_backup(config, None, into, keys=primary.keys, source_name=SOURCE, target_name="copy")
    assert result.stats["wal_refused"]["file"] == bad
    assert bad in result.stats["recovered_to"]
    ids = [r[0] for r in _query(result.stats["port"], "SELECT id FROM orders ORDER BY id")]
    # Replay stopped inside the data: what came before the bad segment, not what came after.
    assert ids == list(range(1, len(ids) + 1)) and 0 < len(ids) < primary.safe_id
