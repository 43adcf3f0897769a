"""wal-push / wal-fetch on real files and a local target, without PostgreSQL: the config
and connections read without Airflow, idempotent retries, conflicts, refusals, and the
promise that this path never imports Airflow or the config schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from include.backup.errors import BackupError, ConfigError, IntegrityError
from include.backup.keys import KeyRing
from include.backup.targets.local import LocalTarget
from include.backup.wal.conn import get_connection
from include.backup.wal.fetch import NotArchived, fetch_bytes, following
from include.backup.wal.push import WalConflict, push_file
from include.backup.wal.record import object_key, record_key
from include.backup.wal.settings import load_keys, load_settings

ROOT = Path(__file__).resolve().parents[2]
SEGMENT = "000000010000000A000000FF"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, KeyRing, LocalTarget]:
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(f"""
        targets:
          disk: {{type: local, path: {tmp_path}/disk}}
          other: {{type: local, path: {tmp_path}/other}}
        sources:
          pg: {{type: postgres, conn_id: pg, method: physical, wal_archive_dir: {tmp_path}/spool}}
        schedules:
          - {{name: base, source: pg, type: FULL, cron: "@daily", targets: [other]}}
          - {{name: logs, source: pg, type: TRANSACTION_LOG, cron: "*/15 * * * *", targets: [disk]}}
        """))
    (tmp_path / "spool").mkdir()
    ring = KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_CONFIG", str(tmp_path / "cfg.yaml"))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    (tmp_path / SEGMENT).write_bytes(os.urandom(1 << 20) + bytes(15 << 20))
    return tmp_path, ring, LocalTarget("disk", str(tmp_path / "disk"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "include.backup", *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ), timeout=600)  # fmt: skip


def test_push_then_fetch_round_trip_without_airflow_or_the_schema(setup) -> None:
    tmp, _, disk = setup
    probe = ("import sys, runpy; sys.argv = ['x', 'wal-push', sys.argv[1]]\n"
             "try: runpy.run_module('include.backup', run_name='__main__')\n"
             "except SystemExit as e: print(e.code, sorted({m.split('.')[0] for m in sys.modules}"
             " & {'airflow', 'pydantic', 'sqlalchemy'}),"
             " 'include.backup.config.schema' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe, str(tmp / SEGMENT)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ), timeout=600)  # fmt: skip
    assert done.stdout.split() == ["0", "[]", "False"], done.stderr
    assert disk.stat(record_key("pg", SEGMENT)) is not None
    assert (tmp / "spool" / SEGMENT).read_bytes() == (tmp / SEGMENT).read_bytes()  # the spool is fed too
    pgwal = tmp / "pg_wal"
    pgwal.mkdir()
    got = _cli("wal-fetch", "--prefetch", "0", SEGMENT, str(pgwal / "RECOVERYXLOG"))
    assert got.returncode == 0, got.stderr
    assert (pgwal / "RECOVERYXLOG").read_bytes() == (tmp / SEGMENT).read_bytes()
    assert _cli("wal-fetch", "000000010000000B00000000", str(pgwal / "RECOVERYXLOG")).returncode == 1


def test_a_retry_is_a_no_op_and_other_content_is_refused(setup) -> None:
    tmp, ring, disk = setup
    assert push_file(tmp / SEGMENT, "pg", [disk], ring)[0].pushed
    record = disk.read_bytes(record_key("pg", SEGMENT))
    assert not push_file(tmp / SEGMENT, "pg", [disk], ring)[0].pushed
    (tmp / SEGMENT).write_bytes(b"\x01" + (tmp / SEGMENT).read_bytes()[1:])
    with pytest.raises(WalConflict, match="other content"):
        push_file(tmp / SEGMENT, "pg", [disk], ring)
    assert disk.read_bytes(record_key("pg", SEGMENT)) == record
    failed = _cli("wal-push", str(tmp / SEGMENT))
    assert failed.returncode == 1 and "already holds" in failed.stderr


def test_tampering_is_refused(setup) -> None:
    tmp, ring, disk = setup
    push_file(tmp / SEGMENT, "pg", [disk], ring)
    path = tmp / "disk" / object_key("pg", SEGMENT)
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="does not match its record"):
        fetch_bytes([disk], "pg", SEGMENT, ring)
    # A record copied under another name is refused even though its signature is valid.
    other = "000000010000000B00000000"
    disk.put_bytes(record_key("pg", other), disk.read_bytes(record_key("pg", SEGMENT)))
    with pytest.raises(IntegrityError, match="another name"):
        fetch_bytes([disk], "pg", other, ring)
    with pytest.raises(NotArchived):
        fetch_bytes([disk], "pg", "000000010000000C00000000", ring)
    with pytest.raises(IntegrityError, match="not a WAL file name"):
        fetch_bytes([disk], "pg", "../etc", ring)


def test_connections_and_settings_without_airflow(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, ring, _ = setup
    settings = load_settings(tmp / "cfg.yaml", None)
    assert (settings.source, [n for n, _ in settings.targets]) == ("pg", ["disk"])
    with pytest.raises(ConfigError, match="no postgres source"):
        load_settings(tmp / "cfg.yaml", "nope")
    monkeypatch.setenv("AIRFLOW_CONN_S3X", "aws://AKID:se%2Fcret@/?region_name=eu-west-1&endpoint_url=http%3A%2F%2Fh%3A1")
    conn = get_connection("s3x", "test")
    assert (conn.login, conn.password, conn.extra_dejson["endpoint_url"]) == ("AKID", "se/cret", "http://h:1")
    assert "cret" not in repr(conn)
    monkeypatch.setenv("AIRFLOW_CONN_RING", json.dumps(ring.to_connection()))
    monkeypatch.delenv("BACKUP_KEY_FILE")
    assert load_keys(None, "ring") == ring  # the keys connection, read from the environment
    with pytest.raises(BackupError, match="AIRFLOW_CONN_MISSING"):
        load_keys(None, "missing")


def test_following_segments() -> None:
    assert following("0000000100000001000000FE", 3) == [
        "0000000100000001000000FF", "000000010000000200000000", "000000010000000200000001"]  # fmt: skip
    assert following("00000002.history", 3) == []
