"""The test services' start: a port that answers is not enough, the listener must be ours."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.services import ServerProcess, free_port, listens_on

SERVE = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(60)
"""


def test_listens_on_tells_whose_listener_it_is() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listens_on(os.getpid(), port)
        assert not listens_on(os.getpid(), free_port())
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert not listens_on(other.pid, port)  # a process that is not ours
        finally:
            other.kill()
            other.wait()


def test_a_server_that_finds_its_port_taken_fails_its_start_not_using_the_other(tmp_path: Path) -> None:
    with socket.socket() as other:  # another worker's server, first on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = ServerProcess("echo-server", [sys.executable, "-c", SERVE, str(port)], tmp_path / "log")
        with pytest.raises(pytest.fail.Exception, match="(?s)exited at start.*Address already in use"):
            server.start(port, timeout=30)


def test_a_server_on_a_free_port_starts(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess("echo-server", [sys.executable, "-c", SERVE, str(port)], tmp_path / "log")
    try:
        server.start(port, timeout=30)
        assert server.proc is not None and listens_on(server.proc.pid, port)
    finally:
        server.stop()
