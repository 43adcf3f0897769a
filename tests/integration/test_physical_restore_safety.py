"""A physical PostgreSQL restore against a real PostgreSQL 15 cluster, tried the way an
attacker or a careless operator would: a destination that carries a shell command, a
legitimate but odd path, a foreign directory where the restore used to put its WAL, a
non-PostgreSQL directory with ``overwrite``, base.tar members that are device nodes or
leave the data directory, and restores that fail half-way."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest

from include.backup.catalog.catalog import list_backups
from include.backup.catalog.manifest import PAYLOAD_NAME, backup_prefix
from include.backup.config.loader import load_config
from include.backup.dr.params import parse_restore_params
from include.backup.dr.restore import _open_chain, restore_backup
from include.backup.errors import IntegrityError, RestoreRefused, SourceError
from include.backup.keys import KeyRing
from include.backup.sources import build_source
from include.backup.sources.postgres.cluster import stop_restored_server
from include.backup.sources.postgres.datadir import RESTORE_MARKER
from include.backup.sources.postgres.recovery import (
    WAL_RESTORE_SCRIPT,
    _restore_command,
    _restore_python,
)
from include.backup.targets import build_target
from include.backup.testing import PgCluster, run_backup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONN = "safety_pg"


class Env:
    def __init__(self, pg: PgCluster, tmp: Path, work: Path) -> None:
        self.pg = pg
        self.tmp = tmp
        self.work = work  # where restores go: traversable by the postgres OS user
        self.keys = KeyRing.from_file(tmp / "keys.json")
        self.started: list[str] = []

    @property
    def config(self):  # noqa: ANN201 - the loaded BackupConfig
        return load_config().config

    def restore(self, into: str, backup_id: str | None = None, **kw):  # noqa: ANN003, ANN201
        self.started.append(into)
        if backup_id is None:
            kw.setdefault("source_name", "shop")
        return restore_backup(self.config, backup_id, into, keys=self.keys, **kw)


def server_now(pg: PgCluster) -> datetime:
    text = pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
    return datetime.fromisoformat(text + "+00:00")


def query(port: int, sql: str) -> list[tuple]:
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="shop")
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One cluster, one base backup and one log backup (100 rows before T, 50 after)."""
    tmp = tmp_path_factory.mktemp("safety")
    work = Path(tempfile.mkdtemp(prefix="pgsafe-", dir="/tmp"))
    work.chmod(0o755)
    with PgCluster(archive=True) as pg, pytest.MonkeyPatch.context() as mp:
        pg.create_database("shop")
        pg.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)", db="shop")
        mp.setenv(f"AIRFLOW_CONN_{CONN.upper()}", pg.uri("shop"))
        config = tmp / "backup_config.yaml"
        config.write_text(
            textwrap.dedent(f"""
            staging_dir: {tmp}/staging
            targets:
              disk: {{type: local, path: {tmp}/t1}}
            sources:
              shop: {{type: postgres, conn_id: {CONN}, method: physical,
                      wal_archive_dir: {pg.wal_archive_dir}}}
            schedules:
              - {{name: shop_base, source: shop, type: FULL, cron: "@daily", targets: [disk]}}
              - {{name: shop_wal, source: shop, type: TRANSACTION_LOG, cron: "@hourly", targets: [disk]}}
            """)
        )
        mp.setenv("BACKUP_CONFIG", str(config))
        KeyRing.generate(tmp / "keys.json", "k1")
        mp.setenv("BACKUP_KEY_FILE", str(tmp / "keys.json"))
        e = Env(pg, tmp, work)
        e.base = run_backup("shop_base", run_id="r1")  # type: ignore[attr-defined]
        pg.psql("INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 100) g", db="shop")
        time.sleep(0.05)
        e.T = server_now(pg)  # type: ignore[attr-defined]
        time.sleep(0.05)
        pg.psql("INSERT INTO orders SELECT g, 'after' FROM generate_series(101, 150) g", db="shop")
        e.log = run_backup("shop_wal", run_id="r2")  # type: ignore[attr-defined]
        try:
            yield e
        finally:
            for d in e.started:
                stop_restored_server(d, quiet=True)
            shutil.rmtree(work, ignore_errors=True)


def leftovers(parent: Path) -> list[str]:
    """Hidden work directories of a restore left behind in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and ".restore" in p.name)


# --- 1. no shell from a destination ----------------------------------------------------


def test_a_destination_carrying_a_command_is_refused_before_anything_is_touched(env: Env) -> None:
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    evil = f"{env.work}/x$(touch {pwned})"
    before = sorted(os.listdir(env.work))
    # The restore DAG's params (REST conf) ...
    with pytest.raises(RestoreRefused, match=r"param 'into' .* shell metacharacters"):
        parse_restore_params({"source": "shop", "into": evil}, env.config)
    # ... and the physical restore itself (dr_test, failover and the CLI reach it too).
    for into in (evil, f"{env.work}/`touch {pwned}`", f"{env.work}/a\nb", f'{env.work}/a" -c x="'):
        with pytest.raises(RestoreRefused, match="into"):
            env.restore(into)
    assert not pwned.exists()
    assert sorted(os.listdir(env.work)) == before


def test_restore_command_runs_nothing_from_a_hostile_wal_dir(env: Env, tmp_path: Path) -> None:
    """The restore_command string, run by /bin/sh after PostgreSQL's %-expansion, with a WAL
    directory name that would run commands if it were interpolated (validation bypassed:
    this is the layer below it)."""
    pwned = tmp_path / "pwned"  # relative in the name below: the shell's cwd is tmp_path
    wal = tmp_path / "w$(touch pwned) `touch pwned` \"q\" 'q' 100%f"
    wal.mkdir()
    seg = "000000010000000000000003"
    (wal / seg).write_bytes(b"segment")
    (tmp_path / "secret").write_text("not WAL")
    command = _restore_command(_restore_python(), WAL_RESTORE_SCRIPT, wal)

    def run(name: str, dest: Path) -> int:
        expanded = re.sub(r"%(.)", lambda m: {"f": name, "p": str(dest), "%": "%"}[m.group(1)], command)
        return subprocess.run(["/bin/sh", "-c", expanded], cwd=tmp_path, check=False).returncode

    assert run(seg, tmp_path / "RECOVERYXLOG") == 0
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == b"segment"
    assert run("000000010000000000000004", tmp_path / "missing") == 1  # end of archive
    assert run("../secret", tmp_path / "stolen") == 1  # not a WAL file name: refused
    assert not (tmp_path / "stolen").exists() and not (tmp_path / "missing").exists()
    assert not pwned.exists()


def test_pitr_into_a_path_with_spaces_quotes_and_percent_replays_through_the_quoted_command(
    env: Env,
) -> None:
    into = f"{env.work}/weird dir 'q' 100%f (x)"
    old_wal_dir = Path(into + ".wal")  # where the WAL used to go
    result = env.restore(into, until=env.T)  # type: ignore[attr-defined]
    port = result.stats["port"]
    assert query(port, "SELECT count(*), max(id) FROM orders") == [(100, 100)]
    data = Path(into)
    auto = (data / "postgresql.auto.conf").read_text()
    assert "walrestore.py" in auto and " %f %p'" in auto and "cp " not in auto
    assert "restored log file" in (data / "restore.log").read_text()  # WAL came through it
    assert (data / RESTORE_MARKER).is_file()
    assert not old_wal_dir.exists()
    assert leftovers(env.work) == []  # the WAL dir and staging are gone
    stop_restored_server(into)
    shutil.rmtree(data)


# --- 6. delete only what the restore owns; extract only files ------------------------------


def test_a_foreign_wal_dir_survives_and_overwrite_replaces_only_our_own_data_dir(env: Env) -> None:
    into = f"{env.work}/beside"
    foreign = Path(into + ".wal")
    foreign.mkdir()
    (foreign / "keep.txt").write_text("someone else's")
    result = env.restore(into, env.log["backup_id"])  # type: ignore[attr-defined]
    assert result.stats["tables"]["shop"] == {"orders": 150}
    assert (foreign / "keep.txt").read_text() == "someone else's"
    stop_restored_server(into)
    # A data directory a restore created: overwrite replaces it (and still spares the .wal).
    (Path(into) / "base" / "stale-file").write_text("from before")
    result = env.restore(into, env.base["backup_id"], overwrite=True)  # type: ignore[attr-defined]
    assert result.stats["tables"]["shop"] == {"orders": 0}
    assert not (Path(into) / "base" / "stale-file").exists()
    assert (foreign / "keep.txt").exists()
    assert leftovers(env.work) == []
    stop_restored_server(into)
    shutil.rmtree(into)


@pytest.mark.parametrize("fake_pg", [False, True], ids=["plain-dir", "looks-like-pg"])
def test_overwrite_refuses_a_directory_that_is_not_a_restored_data_dir(env: Env, fake_pg: bool) -> None:
    victim = env.work / f"precious-{fake_pg}"
    (victim / "global").mkdir(parents=True)
    (victim / "thesis.txt").write_text("years of work")
    if fake_pg:  # a real-looking data directory someone else made: not ours to delete
        (victim / "PG_VERSION").write_text("15\n")
        (victim / "global" / "pg_control").write_bytes(b"\0" * 8192)
    with pytest.raises(RestoreRefused, match="not a PostgreSQL data directory restored by this tool"):
        env.restore(str(victim), env.base["backup_id"], overwrite=True)  # type: ignore[attr-defined]
    assert (victim / "thesis.txt").read_text() == "years of work"
    assert leftovers(victim) == [] and leftovers(env.work) == []


def _member(name: str, kind: bytes, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def _base_payload(bad: tarfile.TarInfo, bad_data: bytes = b"") -> io.BytesIO:
    """A pg_basebackup-tar payload whose base.tar holds PG_VERSION and then ``bad``."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        version = tarfile.TarInfo("PG_VERSION")
        version.size = 3
        tar.addfile(version, io.BytesIO(b"15\n"))
        bad.size = len(bad_data) if bad.isreg() else 0
        tar.addfile(bad, io.BytesIO(bad_data) if bad.isreg() else None)
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w") as tar:
        info = tarfile.TarInfo("base.tar")
        info.size = inner.tell()
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    outer.seek(0)
    return outer


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        (_member("evil_null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), "evil_null"),
        (_member("../escaped", tarfile.REGTYPE), "escaped"),
        (_member("pg_link", tarfile.SYMTYPE, linkname="/etc"), "pg_link"),
    ],
    ids=["device-node", "dot-dot", "link-outside"],
)
def test_a_base_tar_with_a_device_node_or_a_member_leaving_the_directory_is_refused(
    env: Env, bad: tarfile.TarInfo, what: str
) -> None:
    target = build_target("disk", env.config.targets["disk"])
    manifest = next(m for m in list_backups(target, "shop") if m.backup_id == env.base["backup_id"])  # type: ignore[attr-defined]
    source = build_source("shop", env.config.sources["shop"])
    into = env.work / f"tar-{what}"
    into.mkdir()  # an existing empty directory: nothing may be left in it
    with pytest.raises(IntegrityError, match=rf"base.tar member .*{what}.* refused"):
        source.restore([(manifest, _base_payload(bad, b"x"))], str(into))
    assert list(into.iterdir()) == []
    assert not (env.work / "escaped").exists()
    assert leftovers(env.work) == []


# --- 7. a failed restore leaves nothing that looks complete ---------------------------------


def test_a_payload_failing_authentication_at_its_end_leaves_the_destination_empty(env: Env) -> None:
    config = env.config
    target = build_target("disk", config.targets["disk"])
    manifest = next(m for m in list_backups(target, "shop") if m.backup_id == env.base["backup_id"])  # type: ignore[attr-defined]
    payload = Path(config.targets["disk"].path) / backup_prefix("shop", manifest.backup_id) / PAYLOAD_NAME
    original = payload.read_bytes()
    into = env.work / "half"
    into.mkdir()
    try:
        payload.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # the last chunk's tag
        source = build_source("shop", config.sources["shop"])
        with ExitStack() as stack, pytest.raises(IntegrityError, match="authentication") as exc:
            source.restore(_open_chain(stack, target, [manifest], env.keys), str(into))
    finally:
        payload.write_bytes(original)
    assert "nothing was changed in" in str(exc.value)
    assert list(into.iterdir()) == []  # no PG_VERSION, no global/pg_control
    assert leftovers(env.work) == []


def test_a_server_that_does_not_start_is_removed_and_the_error_says_so(env: Env) -> None:
    into = env.work / "busy"
    into.mkdir()
    # The source cluster holds that port: the restored server cannot start.
    for path, said in ((into, "contents of .* were removed"), (env.work / "new", "was removed")):
        with pytest.raises(SourceError, match=said):
            env.restore(f"{path}:{env.pg.port}", env.base["backup_id"])  # type: ignore[attr-defined]
    assert list(into.iterdir()) == []
    assert not (env.work / "new").exists()
    assert leftovers(env.work) == []
    assert stat.S_ISDIR(into.stat().st_mode)
