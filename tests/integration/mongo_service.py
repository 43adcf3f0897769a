"""A throwaway MongoDB for the tests: SecantusDB (a wire-protocol server in Python with a
one-member replica set and ``local.oplog.rs``), started on 127.0.0.1 on a free port and
stopped (that PID only) at the end of the session.

SecantusDB is GPL-2.0 and beta: a test-only dependency, never imported by the library.
Install it with::

    .venv/bin/uv pip install --python .venv/bin/python SecantusDB==0.7.0b3
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.services import listens_on

SECANTUS_VERSION = "0.7.0b3"
INSTALL_HINT = (
    "SecantusDB is needed for the MongoDB integration tests; install it with "
    f"`.venv/bin/uv pip install --python .venv/bin/python SecantusDB=={SECANTUS_VERSION}`"
)
MONGO_CONN_ID = "events_mongo"
START_TIMEOUT = 30.0


@dataclass
class MongoServer:
    host: str
    port: int
    pid: int
    storage: Path

    def uri(self, db: str = "") -> str:
        """Airflow connection URI (conn_type mongo) for the MongoHook."""
        return f"mongo://{self.host}:{self.port}/{db}"

    def client_uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def client(self):  # noqa: ANN201 - pymongo.MongoClient
        import pymongo

        return pymongo.MongoClient(self.client_uri(), serverSelectionTimeoutMS=5000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_binary() -> str:
    here = Path(sys.executable).parent / "secantusd-py"
    if here.exists():
        return str(here)
    found = shutil.which("secantusd-py")
    if not found:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


def start_mongo(extra_args: list[str] | None = None) -> tuple[MongoServer, subprocess.Popen[bytes], Path]:
    """Start a SecantusDB and wait until pymongo pings it. The caller stops it with
    :func:`stop_mongo`."""
    import pymongo

    binary = _server_binary()
    work = Path(tempfile.mkdtemp(prefix="secantus-test-"))
    port = _free_port()
    log_path = work / "server.log"
    with open(log_path, "wb") as log_file:
        # cwd=work: the launcher auto-discovers ./secantusd.toml; ours has none.
        proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(work / "data"),
             "--log-level", "WARNING", *(extra_args or [])],
            cwd=work, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = MongoServer("127.0.0.1", port, proc.pid, work / "data")
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with pymongo.MongoClient(server.client_uri(), serverSelectionTimeoutMS=500) as c:
                c.admin.command("ping")
            if listens_on(proc.pid, port):  # else another worker's server took the port
                return server, proc, work
            time.sleep(0.2)
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.2)
    stop_mongo(proc, work)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    pytest.fail(f"SecantusDB did not start on port {port} ({last}); log:\n{tail}", pytrace=False)
    raise AssertionError  # unreachable


def stop_mongo(proc: subprocess.Popen[bytes], work: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    """A SecantusDB for the session, reachable as the Airflow connection ``events_mongo``
    (AIRFLOW_CONN_EVENTS_MONGO, default database ``events``)."""
    try:
        import secantus  # noqa: F401
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    server, proc, work = start_mongo()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(f"AIRFLOW_CONN_{MONGO_CONN_ID.upper()}", server.uri("events"))
            yield server
    finally:
        stop_mongo(proc, work)
