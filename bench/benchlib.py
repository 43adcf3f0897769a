"""What several benchmarks share: moto's S3 server started for one run, and PostgreSQL's
own replay of an archive folder with ``cp`` (the baseline of the PITR and WAL benchmarks).

Imported by the scripts in this folder (``python bench/bench_x.py`` puts it on sys.path).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from include.backup.sources.postgres import cluster, recovery
from include.backup.testing.postgres import PgCluster


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free port of 127.0.0.1, logging to ``work/moto.log``; returns
    the process (terminate it when done) and its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    log = open(work / "moto.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    deadline = time.monotonic() + 120  # a loaded host takes a while to import moto
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


def replay_with_cp(pg: PgCluster, base: Path, until: datetime | None) -> float:
    """Seconds PostgreSQL takes to recover a copy of the base backup in ``base`` from
    ``pg``'s WAL archive folder with plain ``cp`` as restore_command (to ``until``, or to the
    end of the archive), started and stopped here; the copy is removed afterwards."""
    data = Path(str(base) + "-recovered")
    shutil.copytree(base, data, symlinks=True)
    port = cluster.free_port()
    archive = shlex.quote(str(pg.wal_archive_dir))
    recovery._write_recovery_conf(data, data, f"cp {archive}/%f %p", port, until)
    cluster.own_paths(data)
    t0 = time.monotonic()
    cluster.pg_ctl(data, "start")
    cluster.wait_recovered(data, port, "baseline")
    seconds = time.monotonic() - t0
    cluster.stop_restored_server(str(data), quiet=True)
    shutil.rmtree(data, ignore_errors=True)
    return seconds
