"""``make up`` / ``make down``: a real Airflow on this machine, without Docker.

``start`` brings up, on 127.0.0.1, everything under one run directory (``.run/`` in the
checkout, git-ignored):

* the demo's sources and targets: a PostgreSQL 15 cluster with the sample database
  ``events`` (:func:`include.backup.testing.postgres.load_sample_data`), a small tree of
  files, a local-disk target and moto's S3 server (bucket ``backups``);
* an SMTP catcher that writes every mail as a ``.eml`` file into ``<run>/mail/``;
* Airflow 3.3.2 from the venv (:class:`include.backup.testing.airflow_stack.AirflowStack`):
  a PostgreSQL metadata cluster, api-server on port 8080, scheduler, dag-processor,
  triggerer; with ``executor="CeleryExecutor"`` also Redis (Debian's redis-server) as the
  broker, the metadata DB as result backend and N Celery workers named ``worker1`` … that
  share the one staging directory.

Every process runs in its own process group; their pids (and start times, so a recycled pid
is never taken for ours) go into ``<run>/state.json``. A second ``start`` reports what runs;
``stop`` stops exactly those process groups and the two clusters, and nothing else.

:data:`SERVICES` is the one list of what ``make up`` starts, next to the docker-compose
service that plays the same part; tests/e2e/test_compose.py checks the two files agree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from include.backup.keys import KeyRing
from include.backup.testing.airflow_stack import ADMIN_USER, AirflowStack
from include.backup.testing.postgres import PgCluster, free_port, load_sample_data

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUN_DIR = REPO_ROOT / ".run"
DEFAULT_PORT = 8080
STATE_FILE = "state.json"
STOP_TIMEOUT_S = 30.0
START_TIMEOUT_S = 600.0
"""How long the Airflow components may take to report healthy: minutes on a busy laptop."""
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
S3_CONN_ID = "s3_dev"
PG_CONN_ID = "events_pg"
S3_BUCKET = "backups"


@dataclass(frozen=True)
class Service:
    """One thing ``make up`` runs, and the docker-compose service that plays its part."""

    name: str
    compose: str
    celery_only: bool = False


SERVICES: tuple[Service, ...] = (
    Service("metadata-db", "postgres"),
    Service("redis", "redis", celery_only=True),
    Service("api-server", "airflow-apiserver"),
    Service("scheduler", "airflow-scheduler"),
    Service("dag-processor", "airflow-dag-processor"),
    Service("triggerer", "airflow-triggerer"),
    Service("celery-worker", "airflow-worker", celery_only=True),
    Service("s3", "s3"),
    Service("smtp", "mailpit"),
    Service("pg-source", "pg-source"),
)
"""What ``make up`` starts (the Celery ones only with EXECUTOR=celery)."""

COMPOSE_ONLY: dict[str, str] = {
    "airflow-init": "one-shot: make up migrates the DB and writes the login itself",
    "dev-init": "one-shot: make up creates the bucket and the sample data itself",
    "airflow-cli": "debug profile: the venv's airflow command is the CLI",
    "flower": "flower profile: optional Celery UI",
    "azurite": "Azure target: only in compose (tests start their own)",
    "gcs-emulator": "GCS target: only in compose (tests start their own)",
    "sftp": "SFTP target: only in compose (tests start their own sshd)",
    "ftp": "FTP target: only in compose (tests start their own pyftpdlib)",
    "mongo-source": "MongoDB source: no server package on Debian; only in compose",
}
"""The docker-compose services ``make up`` leaves out, and why."""


class EmlFolder:
    """An aiosmtpd handler that writes each mail as ``<n>-<time>.eml`` into a folder
    (``python -m aiosmtpd -c include.backup.devstack.EmlFolder DIR``): open them with any
    mail reader, or ``cat``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_cli(cls, parser: Any, *args: str) -> EmlFolder:
        """How aiosmtpd's command line builds a handler that takes arguments."""
        if len(args) != 1:
            parser.error("EmlFolder takes one argument: the folder for the .eml files")
        return cls(args[0])

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        count = len(list(self.folder.glob("*.eml"))) + 1
        name = f"{count:04d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.eml"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(envelope.original_content or envelope.content)
        tmp.rename(self.folder / name)  # a reader never sees half a mail
        return "250 OK"


# --- the demo's sources, targets and config ------------------------------------------------


def make_files(root: Path) -> None:
    """A small tree for the files source (nested folders, a non-ASCII name)."""
    (root / "documents/contracts").mkdir(parents=True, exist_ok=True)
    for i in range(40):
        (root / f"documents/note-{i:02d}.txt").write_text(f"note {i}\n" * (30 + i))
    (root / "documents/contracts/résumé ✓.txt").write_text("non-ASCII names survive\n")


def demo_config(run: Path) -> str:
    return f"""# written by include/backup/devstack.py (make up)
dr:
  rto_hours: 4
  rpo_hours: 1
  backup_retention_days: 30
  test_frequency_days: 90
  notification_emails: [oncall@example.com]
encryption:
  key_conn_id: backup_encryption
  key_rotation_days: 30
staging_dir: {run}/staging
targets:
  local: {{type: local, path: {run}/backups, offsite: false}}
  s3: {{type: s3, conn_id: {S3_CONN_ID}, bucket: {S3_BUCKET}, prefix: up/}}
sources:
  events_pg: {{type: postgres, conn_id: {PG_CONN_ID}}}
  files: {{type: files, paths: [{run}/data/documents]}}
schedules:
  - {{name: events_pg_full, source: events_pg, type: FULL, cron: "0 2 * * *", targets: [local, s3],
     retention_days: 30}}
  - {{name: files_full, source: files, type: FULL, cron: "0 1 * * *", targets: [local, s3],
     retention_days: 30}}
"""


@dataclass
class Started:
    """What :func:`start` started (the caller of a test may use the stack directly)."""

    run: Path
    stack: AirflowStack
    source_pg: PgCluster
    state: dict[str, Any]


def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat);
    None when it is gone or a zombie (exited, not yet reaped by its parent)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def running(pid: int) -> bool:
    """Whether a process with this pid runs (not gone, not a zombie)."""
    return _proc_start_time(pid) is not None


def _record(pid: int) -> dict[str, int | None]:
    return {"pid": pid, "start": _proc_start_time(pid)}


def _postmaster_pid(cluster: PgCluster) -> int:
    return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])


def _spawn(argv: list[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=dict(env or os.environ), cwd=REPO_ROOT,
        )  # fmt: skip


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} did not listen on 127.0.0.1:{port}; its log {log}:\n{log.read_text()[-2000:]}"
            )
        time.sleep(0.2)


def start_s3(run: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = run / "logs/s3.out"
    proc = _spawn([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log)
    _wait_port(port, proc, "moto_server (S3)", log)
    url = f"http://127.0.0.1:{port}"
    httpx.put(f"{url}/{S3_BUCKET}", timeout=30).raise_for_status()  # moto accepts any credentials
    return proc, url


def start_smtp(run: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = run / "logs/smtp.out"
    argv = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
            "-c", f"{__name__}.EmlFolder", str(run / "mail")]  # fmt: skip
    proc = _spawn(argv, log, {**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    _wait_port(port, proc, "the SMTP catcher (aiosmtpd)", log)
    return proc, port


def connections(source_pg: PgCluster, s3_url: str, smtp_port: int, ring: KeyRing) -> dict[str, str]:
    """The ``AIRFLOW_CONN_*`` of the demo (dev-only values; the key ring is made per run)."""
    return {
        f"AIRFLOW_CONN_{PG_CONN_ID.upper()}": source_pg.uri("events"),
        f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": json.dumps(
            {
                "conn_type": "aws",
                "login": "dev-access-key",
                "password": "dev-secret-key",
                "extra": {"endpoint_url": s3_url, "region_name": "us-east-1"},
            }
        ),  # fmt: skip
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_port,
                "extra": {
                    "from_email": "airflow-backup@example.com",
                    "disable_tls": True,
                    "disable_ssl": True,
                },
            }
        ),  # fmt: skip
        "AIRFLOW_CONN_BACKUP_ENCRYPTION": json.dumps(ring.to_connection()),
    }


# --- start / status / stop ----------------------------------------------------------------------


def load_state(run: Path) -> dict[str, Any] | None:
    path = run / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def alive(record: Mapping[str, Any]) -> bool:
    """Whether the recorded process still runs (same pid *and* same start time)."""
    start = _proc_start_time(int(record["pid"]))
    return start is not None and start == record.get("start")


def status(state: Mapping[str, Any]) -> dict[str, bool]:
    return {name: alive(rec) for name, rec in state["processes"].items()}


def start(
    run: Path = DEFAULT_RUN_DIR,
    *,
    executor: str = "LocalExecutor",
    workers: int = 2,
    port: int = DEFAULT_PORT,
    config: Callable[[Path], str] = demo_config,
    env_extra: Mapping[str, str] | None = None,
    sample_rows: int = 2000,
    prepare_source: Callable[[PgCluster], None] | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Started:
    """Start everything (see the module docstring) in a fresh ``run`` directory and record
    it in ``<run>/state.json``. ``run`` must be reachable by the postgres OS user (not under
    a private parent such as pytest's tmp_path)."""
    if run.exists():
        shutil.rmtree(run)  # what a previous `make down` left (logs, backups): start afresh
    for sub in ("logs", "data", "staging", "backups"):
        (run / sub).mkdir(parents=True)
    state: dict[str, Any] = {"executor": executor, "processes": {}, "clusters": {}}
    source_pg = PgCluster(run / "pg-source").start()
    stack: AirflowStack | None = None
    others: list[subprocess.Popen[bytes]] = []
    try:
        load_sample_data(source_pg, "events", rows=sample_rows)
        if prepare_source is not None:
            prepare_source(source_pg)
        make_files(run / "data")
        (run / "backup_config.yaml").write_text(config(run))
        s3_proc, s3_url = start_s3(run)
        others.append(s3_proc)
        smtp_proc, smtp_port = start_smtp(run)
        others.append(smtp_proc)
        ring = KeyRing.generate(run / "keys.json", "dev-key-1")
        (run / "keys.json").unlink()  # the ring lives only in the connection
        env = {
            # a machine busy starting everything answers the execution API slowly at first
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "BACKUP_CONFIG": str(run / "backup_config.yaml"),
            "BACKUP_ALERTS_STATE_DIR": str(run),
            **connections(source_pg, s3_url, smtp_port, ring),
            **(env_extra or {}),
        }
        stack = AirflowStack(
            run, REPO_ROOT / "dags", env, executor=executor, celery_workers=workers,
            metadata_dir=run / "pg-meta", port=port, parallelism=8, start_timeout_s=start_timeout_s,
        )  # fmt: skip
        stack.start()
        stack.detach()
        source_pg.detach()
    except BaseException:
        for proc in others:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        source_pg.stop()
        if stack is not None:
            stack.stop()
        raise
    procs = state["processes"]
    for name, proc in stack.procs.items():
        procs[name] = _record(proc.pid)
    if stack.redis is not None and stack.redis.pid is not None:
        procs["redis"] = _record(stack.redis.pid)
    procs["s3"], procs["smtp"] = _record(s3_proc.pid), _record(smtp_proc.pid)
    assert stack.metadata_db is not None
    for name, cluster in (("metadata-db", stack.metadata_db), ("pg-source", source_pg)):
        procs[name] = {**_record(_postmaster_pid(cluster)), "postgres": True}
        state["clusters"][name] = str(cluster.base_dir)
    state.update(
        url=stack.url, user=ADMIN_USER,
        password_file=str(stack.home / "simple_auth_manager_passwords.json"),
        s3=s3_url, smtp=f"127.0.0.1:{smtp_port}", mail_dir=str(run / "mail"),
        workers=stack.worker_names, config=str(run / "backup_config.yaml"),
    )  # fmt: skip
    (run / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    return Started(run, stack, source_pg, state)


def stop(run: Path = DEFAULT_RUN_DIR) -> list[str]:
    """Stop every process group recorded in ``<run>/state.json`` (SIGTERM, then SIGKILL
    after :data:`STOP_TIMEOUT_S`), then the clusters (fast shutdown), and remove their data
    and the state file; logs stay in ``<run>``. Returns what was stopped."""
    state = load_state(run)
    if state is None:
        return []
    records = {n: r for n, r in state["processes"].items() if alive(r)}
    groups = {n: r for n, r in records.items() if not r.get("postgres")}
    for rec in groups.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(rec["pid"]), signal.SIGTERM)
    _wait_gone(groups, STOP_TIMEOUT_S)
    for rec in groups.values():  # what is left of each group (task processes, pool children)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(rec["pid"]), signal.SIGKILL)
    postmasters = {n: r for n, r in records.items() if r.get("postgres")}
    for rec in postmasters.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(rec["pid"]), signal.SIGINT)  # PostgreSQL's fast shutdown
    _wait_gone(postmasters, STOP_TIMEOUT_S)
    for base in state["clusters"].values():
        shutil.rmtree(base, ignore_errors=True)
    (run / STATE_FILE).unlink()
    return sorted(records)


def _wait_gone(records: Mapping[str, Mapping[str, Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(r) for r in records.values()) and time.monotonic() < deadline:
        time.sleep(0.2)


# --- what the user reads -----------------------------------------------------------------------


def banner(state: Mapping[str, Any]) -> str:
    url, run = state["url"], Path(state["config"]).parent
    password = json.loads(Path(state["password_file"]).read_text())[state["user"]]
    workers = (
        f" with {len(state['workers'])} Celery workers ({', '.join(state['workers'])})"
        if state["workers"]
        else ""
    )
    return f"""
Airflow 3.3.2 ({state["executor"]}{workers}) is up: {url}
  login      {state["user"]} / {password}   (SimpleAuthManager; the password is in {state["password_file"]})
  mail       every alert as a .eml file in {state["mail_dir"]}
  S3         {state["s3"]} (moto, bucket {S3_BUCKET}); local backups in {run}/backups
  config     {state["config"]}; logs in {run}/airflow/*.out and {run}/airflow/logs
  stop       make down

Three things to try:
  1. Back up: open {url}/dags/backup__events_pg_full and press Trigger (or:
       curl -X POST {url}/api/v2/dags/backup__events_pg_full/dagRuns -H "Authorization: Bearer $TOKEN" \\
            -H 'Content-Type: application/json' -d '{{"logical_date": null}}')
  2. Restore it: open {url}/dags/restore, Trigger with config
       {{"source": "events_pg", "into": "events_restored"}}
  3. DR Management: {url}/plugin/dr-management (backups, RPO/RTO, the last DR test)
A token for the REST API: curl -s -X POST {url}/auth/token -H 'Content-Type: application/json' \\
     -d '{{"username": "{state["user"]}", "password": "<the password above>"}}'
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/up.py", description="make up / make down: Airflow on this machine"
    )
    ap.add_argument("action", choices=("up", "down", "status"))
    ap.add_argument("--executor", choices=sorted(EXECUTORS), default="local")
    ap.add_argument("--workers", type=int, default=2, help="Celery workers (EXECUTOR=celery; default 2)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="the api-server's port (default 8080)")
    ap.add_argument(
        "--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="where everything lives (default .run)"
    )
    args = ap.parse_args(argv)
    run = args.run_dir.resolve()
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    state = load_state(run)
    if args.action == "down":
        stopped = stop(run)
        print(
            f"stopped: {', '.join(stopped)}"
            if stopped
            else f"nothing of make up runs (no {run / STATE_FILE})"
        )
        return 0
    if state is not None:
        running = status(state)
        dead = sorted(n for n, ok in running.items() if not ok)
        print(
            f"make up already runs ({state['executor']}): "
            + ", ".join(f"{n} (pid {state['processes'][n]['pid']})" for n in running if running[n])
        )
        if dead:
            print(f"NOT running: {', '.join(dead)}; restart with: make down && make up")
            return 1
        print(banner(state))
        return 0
    if args.action == "status":
        print("make up is not running")
        return 1
    print(f"starting Airflow ({EXECUTORS[args.executor]}) in {run} ... (a minute or two)", flush=True)
    started = start(run, executor=EXECUTORS[args.executor], workers=args.workers, port=args.port)
    print(banner(started.state))
    return 0
