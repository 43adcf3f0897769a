"""The ``backup`` and ``decrypt`` verbs of ``python -m include.backup``, run as a user runs
them: a subprocess, a config file, a key file. Real files, a real PostgreSQL (the
``pg_cluster`` fixture, reached through AIRFLOW_CONN_EVENTS_PG), a real local target; what
a backup made is restored with the ``restore`` verb and compared with its source."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg2
import pytest

from include.backup.catalog.catalog import list_backups
from include.backup.config.loader import load_config
from include.backup.keys import KeyRing
from include.backup.pipeline.stream import seal
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.targets import build_target
from include.backup.testing import PgCluster, db_fingerprint
from tests.integration.conftest import PG_CONN_ID, PG_SAMPLE_DB

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m include.backup ARGS`` in a fresh process (no BACKUP_* from the caller)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    return subprocess.run(
        [sys.executable, "-m", "include.backup", *args],
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data"
    (data / "docs/sub").mkdir(parents=True)
    (data / "docs/a.txt").write_text("alpha\n" * 1000)
    (data / "docs/sub/b.bin").write_bytes(os.urandom(200_000))
    (data / "docs/sub/résumé.txt").write_text("non-ASCII name\n")
    (data / "docs/skip.tmp").write_text("excluded")
    config = tmp_path / "backup_config.yaml"
    config.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk: {{type: local, path: {tmp_path}/backups}}
        sources:
          docs: {{type: files, paths: ["{data}/docs"], exclude: ["*.tmp"]}}
          events: {{type: postgres, conn_id: {PG_CONN_ID}}}
          gone: {{type: files, paths: ["{tmp_path}/gone"]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk]}}
          - {{name: events_full, source: events, type: FULL, cron: "@daily", targets: [disk]}}
          - {{name: gone_full, source: gone, type: FULL, cron: "@daily", targets: [disk]}}
        """)
    )
    KeyRing.generate(tmp_path / "keys.json", "cli-k1")
    return {"tmp": tmp_path, "data": data, "config": config, "keys": tmp_path / "keys.json"}


def backup(setup: dict[str, Path], schedule: str) -> subprocess.CompletedProcess[str]:
    return cli("backup", schedule, "--config", str(setup["config"]), "--key-file", str(setup["keys"]))


def staged_files(setup: dict[str, Path]) -> list[Path]:
    """Every file left in staging (locks of the source are empty files: not data)."""
    root = setup["tmp"] / "staging"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size) if root.exists() else []


def held(setup: dict[str, Path]) -> dict[str, object]:
    config = load_config(setup["config"]).config
    return {m.backup_id: m for m in list_backups(build_target("disk", config.targets["disk"]))}


def test_backup_of_files_then_restore_matches(setup: dict[str, Path]) -> None:
    done = backup(setup, "docs_full")
    assert done.returncode == 0, done.stderr
    backup_id = done.stdout.strip().splitlines()[-1]
    assert backup_id.startswith("docs_full-")
    assert "Traceback" not in done.stderr

    [manifest] = held(setup).values()
    assert manifest.backup_id == backup_id and manifest.schedule == "docs_full"
    assert manifest.verification["disk"].ok  # the verify step ran and recorded it
    assert staged_files(setup) == []  # the cleanup step ran

    into = setup["tmp"] / "restored"
    restored = cli(
        "restore", backup_id, "--into", str(into), "--config", str(setup["config"]),
        "--key-file", str(setup["keys"]),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    src = setup["data"] / "docs"
    assert compare_trees(tree_digest(src, exclude=["*.tmp"]), tree_digest(into / str(src).lstrip("/"))) == []


def test_backup_of_postgres_then_restore_matches(setup: dict[str, Path], pg_cluster: PgCluster) -> None:
    done = backup(setup, "events_full")
    assert done.returncode == 0, done.stderr
    backup_id = done.stdout.strip().splitlines()[-1]
    manifest = held(setup)[backup_id]
    assert manifest.backup_type == "FULL" and manifest.verification["disk"].ok

    restored = cli(
        "restore", backup_id, "--into", "events_cli_restored", "--config", str(setup["config"]),
        "--key-file", str(setup["keys"]),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert db_fingerprint(pg_cluster, "events_cli_restored") == db_fingerprint(pg_cluster, PG_SAMPLE_DB)
    assert staged_files(setup) == []


def test_failed_backup_exits_non_zero_and_leaves_no_plaintext(setup: dict[str, Path]) -> None:
    done = backup(setup, "gone_full")
    assert done.returncode != 0
    assert done.stdout.strip() == ""  # no backup id: there is no backup
    assert "error: source 'gone'" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert staged_files(setup) == []
    assert held(setup) == {}


def test_terminated_backup_leaves_no_plaintext(setup: dict[str, Path], pg_cluster: PgCluster) -> None:
    """SIGTERM while the dump runs (held up by a table lock, so the moment is certain):
    the command ends with 143 and its staging is gone."""
    conn = psycopg2.connect(**pg_cluster.conn_params(PG_SAMPLE_DB))
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [sys.executable, "-m", "include.backup", "backup", "events_full",
             "--config", str(setup["config"]), "--key-file", str(setup["keys"])],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not any((setup["tmp"] / "staging").glob("events_full-*/*")):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.2)
            time.sleep(1)  # into the dump, waiting on the lock
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        conn.rollback()
        conn.close()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert out.strip() == ""
    assert staged_files(setup) == [] and not list((setup["tmp"] / "staging").glob("events_full-*"))


def test_backup_without_keys_fails_before_dumping(setup: dict[str, Path]) -> None:
    done = cli(
        "backup", "docs_full", "--config", str(setup["config"]),
        "--key-file", str(setup["tmp"] / "no-such-keys.json"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "no-such-keys.json does not exist" in done.stderr and "Traceback" not in done.stderr
    assert staged_files(setup) == [] and held(setup) == {}


def test_backup_of_an_unknown_schedule_names_the_known_ones(setup: dict[str, Path]) -> None:
    done = backup(setup, "nope")
    assert done.returncode == 1
    assert "nope" in done.stderr and "docs_full" in done.stderr and "Traceback" not in done.stderr


# --- decrypt -----------------------------------------------------------------------------


def sealed_file(setup: dict[str, Path], plain: bytes) -> Path:
    key_id, kek = KeyRing.from_file(setup["keys"]).active()
    out = io.BytesIO()
    seal(io.BytesIO(plain), out, kek=kek, key_id=key_id)
    path = setup["tmp"] / "payload"
    path.write_bytes(out.getvalue())
    return path


def test_decrypt_does_not_follow_a_planted_symlink(setup: dict[str, Path]) -> None:
    """A symlink at OUT.partial (the fixed name decrypt used to write) pointing at a victim
    file: the victim stays as it was, OUT gets the plaintext, 0600."""
    plain = b"secret rows\n" * 5000
    payload = sealed_file(setup, plain)
    out = setup["tmp"] / "out" / "plain.bin"
    out.parent.mkdir()
    victim = setup["tmp"] / "victim.txt"
    victim.write_text("precious\n")
    (out.parent / "plain.bin.partial").symlink_to(victim)

    done = cli("decrypt", str(payload), str(out), "--decompress", "zstd", "--key-file", str(setup["keys"]))
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "precious\n"
    assert out.read_bytes() == plain and not out.is_symlink()
    assert out.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["plain.bin", "plain.bin.partial"]


def test_failed_decrypt_leaves_nothing(setup: dict[str, Path]) -> None:
    payload = sealed_file(setup, b"x" * 100_000)
    raw = bytearray(payload.read_bytes())
    raw[-5] ^= 0x01  # the last chunk no longer authenticates
    payload.write_bytes(bytes(raw))
    out = setup["tmp"] / "out" / "plain.bin"
    out.parent.mkdir()
    done = cli("decrypt", str(payload), str(out), "--decompress", "zstd", "--key-file", str(setup["keys"]))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert list(out.parent.iterdir()) == []
