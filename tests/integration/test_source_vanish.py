"""A source that moves under its dump: what each source kind does.

Each backup runs as a user runs it (``python -m include.backup backup``, a subprocess) and
is held at a fault point ($BACKUP_FAULT=<point>:pause, include/backup/faults.py) while the
test changes the source for real: a files tree renamed away, a MongoDB collection dropped or
renamed (SecantusDB), a PostgreSQL table dropped (the session's real cluster). Then the step
goes on and the outcome is checked at the target and in a restore.

- files: paths that vanish fail the run by default, naming them; with ``on_changed: warn``
  the backup is published marked incomplete and list, verify, restore and the DR page say so;
- mongo: a collection dropped while read is left out and its drop replayed from the oplog
  (a consistent backup); one renamed fails the run;
- postgres (logical): a DROP waits for a running dump (consistent); a table dropped between
  the dump's snapshot and its locks fails the run, naming the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from include.backup.catalog.catalog import list_backups
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.faults import pause_file
from include.backup.keys import KeyRing
from include.backup.targets import build_target
from include.backup.testing import PgCluster
from tests.integration.mongo_service import MONGO_CONN_ID

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
PG_CONN = "vanish_pg"
PAUSE_LIMIT_S = 120.0  # only bounds a broken test; nothing here is timed


# --- running the CLI, held at a fault point ----------------------------------------------------


def _env(tmp: Path, fault: str | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    env = {**base, "PYTHONPATH": str(ROOT), "BACKUP_FAULT_DIR": str(tmp / "faults")}
    if fault:
        env["BACKUP_FAULT"] = f"{fault}:pause"
    return env


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "include.backup", *args, "--config", str(tmp / "config.yaml"),
         "--key-file", str(tmp / "keys.json")],
        cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def held_backup(tmp: Path, schedule: str, point: str, change) -> subprocess.CompletedProcess[str]:
    """Run the ``backup`` verb, hold it at ``point``, call ``change()``, let it go on."""
    env = _env(tmp, point)
    flag = Path(env["BACKUP_FAULT_DIR"]) / pause_file(point).name
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.backup", "backup", schedule, "--config", str(tmp / "config.yaml"),
         "--key-file", str(tmp / "keys.json")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while not flag.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate(timeout=60)
                pytest.fail(f"the backup never reached {point} (exit {proc.returncode}):\n{err[-3000:]}")
            time.sleep(0.05)
        change()
        flag.unlink()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def setup_dir(tmp: Path, sources: str, schedules: str) -> Path:
    (tmp / "config.yaml").write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp}/staging
        targets:
          disk: {{type: local, path: {tmp}/backups}}
        sources:
        """)
        + textwrap.indent(textwrap.dedent(sources), "  ")
        + "schedules:\n"
        + textwrap.indent(textwrap.dedent(schedules), "  ")
    )
    KeyRing.generate(tmp / "keys.json", "vanish-k1")
    return tmp


def at_target(tmp: Path) -> list:
    config = load_config(tmp / "config.yaml").config
    return list_backups(build_target("disk", config.targets["disk"]))


def restore_in_process(tmp: Path, backup_id: str, into: str) -> None:
    """The library's restore (what the CLI's restore verb calls), without another process."""
    config = load_config(tmp / "config.yaml").config
    restore_backup(config, backup_id, into, keys=KeyRing.from_file(tmp / "keys.json"))


def staged(tmp: Path) -> list[Path]:
    root = tmp / "staging"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size) if root.exists() else []


# --- files ---------------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    """One file read first (the dump is held after it), then 440 files in 22 folders that
    are listed only after it."""
    root.mkdir(parents=True)
    (root / "top.txt").write_text("read first\n")
    for i in range(22):
        (root / f"d{i:02}").mkdir()
        for j in range(20):
            (root / f"d{i:02}" / f"f{j:02}.txt").write_text(f"{i}/{j}\n" * 20)


def files_setup(tmp: Path, on_changed: str) -> Path:
    make_tree(tmp / "data" / "tree")
    return setup_dir(
        tmp,
        f"tree: {{type: files, paths: [{tmp}/data/tree], on_changed: {on_changed}}}\n",
        "- {name: tree_full, source: tree, type: FULL, cron: '@daily', targets: [disk]}\n",
    )


def rename_away(tmp: Path):
    tree = tmp / "data" / "tree"
    return lambda: tree.rename(tree.with_name("tree.moved"))


def test_files_tree_renamed_away_mid_dump_fails_the_run_naming_the_paths(tmp_path: Path) -> None:
    tmp = files_setup(tmp_path, "fail")
    run = held_backup(tmp, "tree_full", "dump.mid-read", rename_away(tmp))

    # Before: published as a good, verified backup of top.txt alone, warnings [].
    assert run.returncode != 0
    assert "22 path(s) vanished or changed while the backup read them" in run.stderr
    assert f"{tmp}/data/tree/d00 (vanished)" in run.stderr and "and 17 more" in run.stderr
    assert "sources.tree.on_changed: warn" in run.stderr
    assert "Traceback" not in run.stderr
    assert at_target(tmp) == [] and staged(tmp) == []  # nothing that looks like a backup


def test_files_on_changed_warn_publishes_incomplete_and_every_reader_says_so(
    tmp_path: Path, monkeypatch
) -> None:
    tmp = files_setup(tmp_path, "warn")
    run = held_backup(tmp, "tree_full", "dump.mid-read", rename_away(tmp))
    assert run.returncode == 0, run.stderr
    backup_id = run.stdout.strip().splitlines()[-1]
    [manifest] = at_target(tmp)
    assert manifest.incomplete and manifest.verification["disk"].ok
    assert manifest.stats["files"] == 1 and manifest.stats["vanished_count"] == 22
    assert manifest.stats["warnings"][0].startswith("incomplete: 22 path(s) vanished")

    listed = cli(tmp, "list", "--target", "disk")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(backup_id)]
    assert row.rstrip().endswith("INCOMPLETE")
    as_json = cli(tmp, "list", "--target", "disk", "--json")
    assert [r["incomplete"] for r in json.loads(as_json.stdout)] == [True]

    verified = cli(tmp, "verify", backup_id, "--deep")
    assert verified.returncode == 0, verified.stderr  # intact as stored ...
    assert f"backup {backup_id} is INCOMPLETE (incomplete: 22 path(s) vanished" in verified.stdout

    into = tmp / "restored"
    restored = cli(tmp, "restore", backup_id, "--into", str(into))
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["incomplete"] == [backup_id]
    assert f"warning: backup {backup_id} is INCOMPLETE" in restored.stderr
    got = into / str(tmp / "data" / "tree").lstrip("/")
    assert sorted(p.name for p in got.iterdir()) == ["top.txt"]  # ... and what it lacks is said

    from fastapi.testclient import TestClient  # the DR page, as the plugin serves it

    from include.backup.dr.web import create_app

    monkeypatch.setenv("BACKUP_CONFIG", str(tmp / "config.yaml"))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp / "keys.json"))
    client = TestClient(create_app())
    page = client.get("/")
    assert page.status_code == 200
    assert "<span class=\"pill warn\">INCOMPLETE</span>" in page.text.replace("'", '"')
    api = client.get("/api/backups")
    assert api.status_code == 200 and '"incomplete":true' in api.text


# --- mongo ---------------------------------------------------------------------------------------


@pytest.fixture
def mongo_db(mongo_server, tmp_path: Path):
    client = mongo_server.client()
    name = f"vanish_{os.getpid()}_{tmp_path.name[-12:]}".replace("-", "_")
    db = client[name]
    # "a" is read first (collections go by name) and takes several batches of 1,000.
    db.a.insert_many([{"i": i} for i in range(1500)])
    db.b.insert_many([{"i": i} for i in range(100)])
    db.c.insert_many([{"i": i} for i in range(30)])
    yield client, name
    for n in (name, name + "_restored"):
        client.drop_database(n)
    client.close()


def mongo_setup(tmp: Path, db: str) -> Path:
    return setup_dir(
        tmp,
        f"events: {{type: mongo, conn_id: {MONGO_CONN_ID}, database: {db}}}\n",
        "- {name: events_full, source: events, type: FULL, cron: '@daily', targets: [disk]}\n",
    )


def contents(client, db: str) -> dict[str, list]:
    d = client[db]
    return {
        n: sorted(doc["i"] for doc in d[n].find())
        for n in sorted(d.list_collection_names())
        if not n.startswith("system.")
    }


def test_mongo_collections_dropped_mid_dump_give_a_consistent_backup(mongo_db, tmp_path: Path) -> None:
    client, db = mongo_db
    tmp = mongo_setup(tmp_path, db)

    def drop() -> None:
        client[db].a.drop()  # while it is read (its cursor has more batches)
        client[db].b.drop()  # listed, not read yet

    run = held_backup(tmp, "events_full", "dump.mid-read", drop)
    assert run.returncode == 0, run.stderr
    [manifest] = at_target(tmp)
    assert manifest.stats["dropped_during_dump"] == ["a"]
    assert "a" not in manifest.stats["collections"]
    restore_in_process(tmp, manifest.backup_id, db + "_restored")
    # The drops are in the dump's oplog slice and are replayed: the restore is the source
    # as it was at the end of the dump, not a mix of before and after.
    assert contents(client, db + "_restored") == contents(client, db) == {"c": list(range(30))}


def test_mongo_collection_renamed_mid_dump_fails_the_run(mongo_db, tmp_path: Path) -> None:
    client, db = mongo_db
    tmp = mongo_setup(tmp_path, db)
    run = held_backup(tmp, "events_full", "dump.mid-read", lambda: client[db].a.rename("a2"))
    assert run.returncode != 0
    assert f"collection a of database {db} changed under the dump" in run.stderr
    assert "none was made" in run.stderr and "Traceback" not in run.stderr
    assert at_target(tmp) == [] and staged(tmp) == []


# --- postgres (logical) --------------------------------------------------------------------------


@pytest.fixture
def pg_db(pg_cluster: PgCluster, tmp_path: Path, monkeypatch):
    """A database of two small tables, a and b, reached as connection vanish_pg."""
    name = f"vanish_{tmp_path.name[-10:]}".replace("-", "_").lower()
    admin = psycopg2.connect(**pg_cluster.conn_params())
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    conn = psycopg2.connect(**pg_cluster.conn_params(name))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE a (i int PRIMARY KEY, pad bytea)")
    cur.execute("INSERT INTO a SELECT g, decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g")
    cur.execute("CREATE TABLE b (i int PRIMARY KEY)")
    cur.execute("INSERT INTO b SELECT generate_series(1, 500)")
    monkeypatch.setenv(f"AIRFLOW_CONN_{PG_CONN.upper()}", pg_cluster.uri(name))
    yield pg_cluster, name, conn
    conn.close()
    for db in (name, name + "_restored"):
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    admin.close()


def pg_setup(tmp: Path) -> Path:
    return setup_dir(
        tmp,
        f"events: {{type: postgres, conn_id: {PG_CONN}}}\n",
        "- {name: events_full, source: events, type: FULL, cron: '@daily', targets: [disk]}\n",
    )


def test_postgres_drop_waits_for_a_running_dump_which_stays_consistent(pg_db, tmp_path: Path) -> None:
    cluster, name, conn = pg_db
    tmp = pg_setup(tmp_path)
    dropped: list[BaseException | None] = []

    def drop_in_background() -> None:
        def drop() -> None:
            other = psycopg2.connect(**cluster.conn_params(name))
            other.autocommit = True
            try:
                other.cursor().execute("DROP TABLE b")
                dropped.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                dropped.append(exc)
            finally:
                other.close()

        threading.Thread(target=drop, daemon=True).start()
        # The DROP queues behind the dump's locks (a state, polled: nothing is timed).
        cur = conn.cursor()
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while True:
            cur.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relname = 'b' AND NOT l.granted"
            )
            if cur.fetchone()[0] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not dropped, "the DROP went through while the dump was running"

    run = held_backup(tmp, "events_full", "dump.mid-read", drop_in_background)
    assert run.returncode == 0, run.stderr
    [manifest] = at_target(tmp)
    assert manifest.stats["tables"] == {"a": 2000, "b": 500}
    restore_in_process(tmp, manifest.backup_id, name + "_restored")
    check = psycopg2.connect(**cluster.conn_params(name + "_restored"))
    try:
        cur = check.cursor()
        cur.execute("SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)")
        assert cur.fetchone() == (2000, 500)  # the database as it was when the dump began
    finally:
        check.close()
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not dropped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dropped == [None]  # and the DROP went through once the dump was over


def test_postgres_table_dropped_before_the_dump_locks_it_fails_naming_it(pg_db, tmp_path: Path) -> None:
    _, _, conn = pg_db
    tmp = pg_setup(tmp_path)
    drop = lambda: conn.cursor().execute("DROP TABLE b")  # noqa: E731
    run = held_backup(tmp, "events_full", "dump.snapshot-taken", drop)
    assert run.returncode != 0
    assert "a table was dropped as the dump began" in run.stderr and '"public.b"' in run.stderr
    assert "run the backup again" in run.stderr and "Traceback" not in run.stderr
    assert at_target(tmp) == [] and staged(tmp) == []
