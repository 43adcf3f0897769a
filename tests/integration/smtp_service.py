"""A real SMTP server (aiosmtpd) on 127.0.0.1 for the alert-mail tests.

``smtp_server`` starts ``python -m aiosmtpd -n -l 127.0.0.1:PORT -c
aiosmtpd.handlers.Mailbox DIR`` (the Mailbox handler creates DIR, a maildir; an existing
empty DIR makes delivery fail), sets ``AIRFLOW_CONN_SMTP_DEFAULT`` to it with TLS and SSL
disabled (aiosmtpd speaks plain SMTP; Airflow's SmtpHook would otherwise STARTTLS), and
kills the server by its PID at the end.

Install: ``pip install aiosmtpd`` (requirements-dev). Registered once for
the whole suite in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

__all__ = ["smtp_server"]

SMTP_CONN_ID = "smtp_default"
START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@dataclass
class SmtpServer:
    host: str
    port: int
    maildir: Path
    conn_id: str
    pid: int

    def messages(self) -> list[Message]:
        """Every mail delivered so far, oldest first."""
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(self.maildir, factory=None, create=False)
        # Parsed with the modern policy: headers come back decoded (RFC 2047 subjects).
        dated = [
            (
                box.get_message(k).get_date(),
                email.message_from_bytes(box.get_bytes(k), policy=email.policy.default),
            )
            for k in box.keys()  # noqa: SIM118 - Maildir is not a dict
        ]
        return [m for _, m in sorted(dated, key=lambda t: t[0])]

    def wait_for(self, count: int, timeout: float = 10) -> list[Message]:
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if len(msgs) >= count or time.monotonic() > deadline:
                return msgs
            time.sleep(0.1)

    def clear(self) -> None:
        if self.maildir.exists():
            box = mailbox.Maildir(self.maildir, factory=None, create=False)
            for k in list(box.keys()):
                box.remove(k)


@pytest.fixture(scope="session")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        pytest.fail("aiosmtpd is not installed: pip install aiosmtpd (requirements-dev.txt)")
    port = _free_port()
    maildir = tmp_path_factory.mktemp("smtp") / "maildir"  # created by the handler
    log = open(maildir.parent / "aiosmtpd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Mailbox",
            str(maildir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                output = (maildir.parent / "aiosmtpd.log").read_text(errors="replace")
                pytest.fail(f"aiosmtpd did not start on 127.0.0.1:{port}:\n{output}")
            time.sleep(0.1)
        conn = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {
                "disable_tls": True,
                "disable_ssl": True,
                "from_email": "airflow-backup@example.com",
                "timeout": 10,
                "retry_limit": 0,
            },
        }
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(f"AIRFLOW_CONN_{SMTP_CONN_ID.upper()}", json.dumps(conn))
            yield SmtpServer("127.0.0.1", port, maildir, SMTP_CONN_ID, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
