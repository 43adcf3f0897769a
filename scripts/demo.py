"""`make demo`: the main job, for real, on an embedded default.

1. starts a throwaway PostgreSQL cluster with a sample "events" database and makes a sample
   directory of files (nested dirs, symlinks, non-ASCII names, excluded junk);
2. sets up an Airflow home inside the checkout (.airflow/, SQLite metadata) and a demo
   config with a local-disk target; the encryption key lives in an Airflow connection;
3. runs the generated backup DAGs with `airflow dags test` (a full PostgreSQL backup, a
   full files backup, then an incremental files backup after changing the tree);
4. restores both with the CLI into fresh places and proves they match;
5. prints a summary and stops everything it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.testing.postgres import PgCluster, db_fingerprint, load_sample_data

ROOT = Path(__file__).resolve().parents[1]

# Both can be moved (the integration test runs the demo in temporary directories).
DEMO = Path(os.environ.get("DEMO_DIR", ROOT / ".demo"))
AIRFLOW_HOME = Path(os.environ.get("DEMO_AIRFLOW_HOME", ROOT / ".airflow"))
BIN = Path(sys.executable).parent


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def run(cmd: list[str], env: dict[str, str], quiet: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0 or not quiet:
        sys.stdout.write(proc.stdout[-6000:])
        sys.stderr.write(proc.stderr[-6000:])
    if proc.returncode != 0:
        raise SystemExit(f"demo: command failed ({proc.returncode}): {' '.join(cmd)}")
    return proc


def make_files(root: Path) -> None:
    (root / "uploads/events/2026").mkdir(parents=True)
    (root / "uploads/empty-dir").mkdir()
    (root / "documents/contracts").mkdir(parents=True)
    (root / "uploads/node_modules/pkg").mkdir(parents=True)
    for i in range(200):
        (root / f"uploads/events/2026/photo-{i:03d}.txt").write_text(f"event photo {i}\n" * (50 + i))
    (root / "documents/contracts/résumé ünïcode ✓.txt").write_text("non-ASCII names survive\n")
    (root / "documents/secret.pem").write_text("-----BEGIN KEY-----\n")
    (root / "documents/secret.pem").chmod(0o600)
    (root / "documents/run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "documents/run.sh").chmod(0o755)
    (root / "documents/latest").symlink_to("contracts")
    (root / "uploads/scratch.tmp").write_text("excluded")
    (root / "uploads/app.log").write_text("excluded")
    (root / "uploads/node_modules/pkg/index.js").write_text("excluded")
    (root / "documents/big.bin").write_bytes(os.urandom(2 << 20))


def change_files(root: Path) -> None:
    """What happens between two backups: new, changed and deleted files."""
    (root / "uploads/events/2026/photo-000.txt").write_text("edited\n")
    (root / "uploads/events/2026/new-photo.txt").write_text("new\n")
    (root / "uploads/events/2026/photo-001.txt").unlink()
    shutil.rmtree(root / "uploads/empty-dir")


def demo_config(files_root: Path) -> str:
    return f"""# written by scripts/demo.py
dr:
  rto_hours: 4
  rpo_hours: 1
  backup_retention_days: 30
  test_frequency_days: 90
  notification_emails: [oncall@example.com]
encryption:
  key_conn_id: backup_encryption
  key_rotation_days: 30
staging_dir: {DEMO}/staging
targets:
  local: {{type: local, path: {DEMO}/backups}}
  # a second disk standing in for the off-site copy (3-2-1): every backup goes to both
  offsite: {{type: local, path: {DEMO}/offsite, offsite: true}}
sources:
  demo_pg: {{type: postgres, conn_id: demo_pg}}
  demo_files:
    type: files
    paths: [{files_root}/uploads, {files_root}/documents]
    exclude: ["*.tmp", "*.log", "node_modules/"]
schedules:
  - {{name: demo_pg_full, source: demo_pg, type: FULL, cron: "0 2 * * *", targets: [local, offsite],
     retention: {{daily: 7, weekly: 4, monthly: 12, yearly: 7}}}}
  - {{name: demo_files_full, source: demo_files, type: FULL, cron: "0 1 * * *", targets: [local, offsite],
     retention_days: 30}}
  - {{name: demo_files_incr, source: demo_files, type: INCREMENTAL, cron: "0 */6 * * *",
     targets: [local, offsite], retention_days: 7}}
"""


def airflow_env(pg: PgCluster, key_json: dict[str, object]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            # `airflow dags test` cannot run DAGs with deadline alerts (apache/airflow#73428)
            "BACKUP_DEADLINE_ALERTS": "off",
            "PYTHONPATH": str(ROOT),
            "BACKUP_CONFIG": str(DEMO / "backup_config.yaml"),
            "AIRFLOW_CONN_DEMO_PG": pg.uri("events"),
            # keys under "secret_keys", the extra field Airflow masks (docs/keys.md)
            "AIRFLOW_CONN_BACKUP_ENCRYPTION": json.dumps(KeyRing.from_json(key_json).to_connection()),
        }
    )
    env.pop("BACKUP_KEY_FILE", None)
    return env


def list_backups(env: dict[str, str]) -> list[dict[str, object]]:
    out = run([str(BIN / "python"), "-m", "include.backup", "list", "--target", "local", "--json"], env)
    return json.loads(out.stdout)


def restore_xcom(db: Path) -> dict[str, object]:
    """What the restore DAG's restore task returned (its XCom), read from the metadata DB."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "select value from xcom where dag_id = 'restore' and task_id = 'restore' "
            "order by timestamp desc limit 1"
        ).fetchone()
    if row is None:
        raise SystemExit("demo: the restore DAG left no result")
    value = json.loads(row[0]) if isinstance(row[0], (str, bytes)) else row[0]
    return value if isinstance(value, dict) else json.loads(value)


def main() -> int:
    t0 = time.monotonic()
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    AIRFLOW_HOME.mkdir(exist_ok=True)
    files_root = DEMO / "data"
    make_files(files_root)
    ring = KeyRing.generate(DEMO / "keys.json", "demo-key-1")
    key_json = json.loads((DEMO / "keys.json").read_text())
    (DEMO / "backup_config.yaml").write_text(demo_config(files_root))

    with PgCluster() as pg:
        step(f"PostgreSQL {pg.port} on 127.0.0.1: loading the sample 'events' database")
        pg.create_database("events")
        load_sample_data(pg, "events", rows=20000)
        env = airflow_env(pg, key_json)
        del ring

        step("validating the demo config")
        run([str(BIN / "python"), "-m", "include.backup", "validate", env["BACKUP_CONFIG"]], env, quiet=False)

        step("migrating the Airflow metadata database (SQLite in .airflow/)")
        run([str(BIN / "airflow"), "db", "migrate"], env)

        timings: dict[str, float] = {}
        for dag_id in ("backup__demo_pg_full", "backup__demo_files_full"):
            step(f"airflow dags test {dag_id}")
            t = time.monotonic()
            run([str(BIN / "airflow"), "dags", "test", dag_id], env)
            timings[dag_id] = time.monotonic() - t
        change_files(files_root)
        step(
            "changed the files (1 edited, 1 new, 1 deleted, 1 dir removed); "
            "airflow dags test backup__demo_files_incr"
        )
        t = time.monotonic()
        run([str(BIN / "airflow"), "dags", "test", "backup__demo_files_incr"], env)
        timings["backup__demo_files_incr"] = time.monotonic() - t

        backups = list_backups(env)
        by_schedule = {b["schedule"]: b for b in backups}
        missing = {"demo_pg_full", "demo_files_full", "demo_files_incr"} - set(by_schedule)
        if missing:
            raise SystemExit(f"demo: no backup found at the local target for {sorted(missing)}")
        if by_schedule["demo_files_incr"]["type"] != "INCREMENTAL":
            raise SystemExit("demo: the incremental schedule did not produce an INCREMENTAL backup")

        step("restoring PostgreSQL into a new database 'events_restored'")
        pg_id = str(by_schedule["demo_pg_full"]["backup_id"])
        out = run(
            [str(BIN / "python"), "-m", "include.backup", "restore", pg_id, "--into", "events_restored"], env
        )
        pg_restore = json.loads(out.stdout)
        before, after = db_fingerprint(pg, "events"), db_fingerprint(pg, "events_restored")
        if before != after:
            raise SystemExit(f"demo: restored database differs:\n{before}\n{after}")

        step("restoring the files chain (full + incremental) from the off-site copy with the restore DAG")
        inc_id = str(by_schedule["demo_files_incr"]["backup_id"])
        conf = {"backup_id": inc_id, "target": "offsite", "into": str(DEMO / "restored")}
        run([str(BIN / "airflow"), "dags", "test", "restore", "--conf", json.dumps(conf)], env)
        files_restore = restore_xcom(AIRFLOW_HOME / "airflow.db")
        original = tree_digest(files_root, exclude=["*.tmp", "*.log", "node_modules/"])
        restored = tree_digest(DEMO / "restored" / str(files_root).lstrip("/"))
        diffs = compare_trees(original, restored)
        if diffs:
            raise SystemExit("demo: restored files differ:\n  " + "\n  ".join(diffs[:20]))

    print_summary(backups, timings, before, pg_restore, files_restore, len(original), time.monotonic() - t0)
    return 0


def print_summary(
    backups: list[dict[str, object]],
    timings: dict[str, float],
    fingerprint: dict[str, dict[str, object]],
    pg_restore: dict[str, object],
    files_restore: dict[str, object],
    n_entries: int,
    total: float,
) -> None:
    step("summary")
    print(f"{'backup id':<44} {'type':<12} {'raw':>10} {'stored':>10} {'ratio':>6} {'dag run':>8}  verified")
    for b in backups:
        raw, stored = int(b["raw_size"]), int(b["stored_size"])  # type: ignore[call-overload]
        ratio = raw / stored if stored else 0
        secs = timings.get(f"backup__{b['schedule']}", 0)
        print(
            f"{b['backup_id']!s:<44} {b['type']!s:<12} {raw:>10} {stored:>10} "
            f"{ratio:>5.1f}x {secs:>7.1f}s  {b['verified']}"
        )
    rows = sum(int(t["rows"]) for t in fingerprint.values())  # type: ignore[call-overload]
    print(f"\nPostgreSQL: {len(fingerprint)} tables, {rows} rows restored into 'events_restored' in "
          f"{pg_restore['seconds']} s — row counts and content checksums match")
    print(
        f"Files: chain {files_restore['chain']} restored by the restore DAG in "
        f"{files_restore['seconds']} s — {n_entries} entries, tree, modes and bytes match"
    )
    print(
        f"Backups are in {DEMO / 'backups'} and {DEMO / 'offsite'} "
        f"(list them: BACKUP_CONFIG={DEMO / 'backup_config.yaml'} "
        "python -m include.backup list --target local)"
    )
    print(f"Demo took {total:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
