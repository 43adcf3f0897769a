"""A throwaway Redis server on 127.0.0.1: the Celery broker of a CeleryExecutor deployment
(:class:`include.backup.testing.airflow_stack.AirflowStack`, ``make up EXECUTOR=celery``).

Debian's ``redis-server`` (``make system-deps`` installs it), in the foreground in its own
process group, no persistence (``--save "" --appendonly no``): what is queued is lost when it
stops, as on a broker that crashed. :meth:`RedisServer.stop` and :meth:`RedisServer.start`
may be called again: a restarted server keeps its port, so brokers' clients reconnect.

    with RedisServer(log_path) as redis:
        url = redis.url  # redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from include.backup.testing.postgres import free_port

START_TIMEOUT_S = 30.0


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start (the message says how to fix it)."""


def redis_server_binary() -> str:
    """The path of ``redis-server``, or an error saying how to install it."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if path is None:
        raise RedisServerError(
            "redis-server not found: install it with `make system-deps` "
            "(apt-get install -y --no-install-recommends redis-server)"
        )
    return path


def redis_argv(binary: str, port: int) -> list[str]:
    """The command line: loopback only, no persistence, in the foreground."""
    return [
        binary, "--bind", "127.0.0.1", "--port", str(port),
        "--save", "", "--appendonly", "no", "--daemonize", "no",
    ]  # fmt: skip


class RedisServer:
    """One redis-server process; see the module docstring."""

    host = "127.0.0.1"

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.log_path = Path(log_path)
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:  # noqa: PYI034 - start() returns self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> RedisServer:
        """Start (again, on the same port once it has one) and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        binary = redis_server_binary()
        self.port = self.port or free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                redis_argv(binary, self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        atexit.register(self.stop)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ping():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
                self.stop()
                raise RedisServerError(f"redis-server did not answer on {self.host}:{self.port}:\n{tail}")
            time.sleep(0.1)

    def ping(self) -> bool:
        """Whether the server answers PING (a raw RESP round trip, no client library)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s. Safe to call twice."""
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def detach(self) -> None:
        """Leave the server running after this process exits (``make up``)."""
        atexit.unregister(self.stop)
