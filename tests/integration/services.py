"""Real storage services for the integration tests, started here and stopped at the end.

Each session fixture starts one server on 127.0.0.1 on a free port, waits until the port
answers, sets the Airflow connection the targets use (``AIRFLOW_CONN_<ID>``), yields the
connection details, and at the end kills exactly the processes it started (each server
runs in a process group of its own, so sshd's per-session children go with it).

| fixture        | server                                   | install (scripts/install-test-services.sh) |
|----------------|------------------------------------------|--------------------------------------------|
| moto_server    | moto_server (S3, IAM auth enforced)      | pip: moto[server]                          |
| azurite        | azurite-blob (Azure Blob)                | npm ci in tests/services/azurite           |
| gcs_emulator   | gcp-storage-emulator (GCS)               | pip: gcp-storage-emulator                  |
| sshd           | OpenSSH sshd, internal-sftp, key login   | apt: openssh-server                        |
| ftp_server     | pyftpdlib, user + password               | pip: pyftpdlib                             |

A missing server fails the tests that need it with the command that installs it: the
test setup is meant to install everything, so there is no skipping.

Registered in tests/conftest.py with ``from tests.integration.services import *``, once for
every test directory.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "moto_server",
    "azurite",
    "gcs_emulator",
    "sshd",
    "ftp_server",
]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTALL = "scripts/install-test-services.sh (as root, from the repo root)"
# npm installs Azurite beside its lock file (tests/services/azurite/package-lock.json).
AZURITE_BIN = ROOT / "tests" / "services" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
START_TIMEOUT_S = 60

S3_CONN_ID = "s3_test"
WASB_CONN_ID = "wasb_test"
GCS_CONN_ID = "gcs_test"
SFTP_CONN_ID = "sftp_test"
FTP_CONN_ID = "ftp_test"

# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its descendants listens on ``port``.

    A port that answers is not proof that the server just started is up: ``free_port`` hands
    out a port that is free *now*, and another xdist worker can start its own server on the
    same one first. Ours then fails to bind, and a test would talk to the other worker's
    server (the cross-talk of tests/conftest.py's fixture note)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
    return False


def require(path: Path | str | None, what: str, install: str = INSTALL) -> str:
    """``path`` if it is an executable, else fail the test with how to install it."""
    if path and os.access(path, os.X_OK):
        return str(path)
    pytest.fail(f"{what} is not installed (looked for {path}); install it with: {install}", pytrace=False)


class ServerProcess:
    """One server process in a process group of its own, logging to a file."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        grace: float = 10.0,
    ) -> None:
        self.name = name
        self.grace = grace  # seconds between SIGTERM and SIGKILL
        self.cmd = cmd
        self.log = log
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        # Up when the port answers and the listener is ours: another server that took the
        # same port makes ours exit at start (address in use), which fails here, clearly.
        while not (port_answers(port) and listens_on(self.proc.pid, port)):
            if self.proc.poll() is not None:
                self.proc = None
                pytest.fail(f"{self.name} exited at start: {self.tail()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"{self.name} did not open port {port} within {timeout:g} s: {self.tail()}", pytrace=False
                )
            time.sleep(0.05)
        return self

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:] or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the process group this server was started in (the server and any children
        it forked), SIGTERM first, SIGKILL after ``grace`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the server leads its own group
        _killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            _killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        # Children that outlived the leader (an sshd session still closing).
        _killpg(pgid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


# --- S3: moto ------------------------------------------------------------------------------


@dataclass
class S3Service:
    url: str
    port: int
    access_key: str
    secret_key: str
    bucket: str
    conn_id: str = S3_CONN_ID
    region: str = "us-east-1"

    def client(self, **overrides: Any) -> Any:
        import boto3

        kwargs = {
            "endpoint_url": self.url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        } | overrides
        return boto3.client("s3", **kwargs)

    def connection(self, url: str | None = None, secret: str | None = None, **extra: Any) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.access_key,
                "password": self.secret_key if secret is None else secret,
                "extra": {"endpoint_url": url or self.url, "region_name": self.region} | extra,
            }
        )


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """moto's S3 server with IAM authentication enforced: the first 3 requests (creating
    a user, its policy and its access key) are let through, every later one must be
    signed with that key, so wrong credentials are refused as by AWS."""
    import boto3

    exe = require(BIN / "moto_server", "moto_server (pip: moto[server])")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    server = ServerProcess("moto_server", [exe, "-H", "127.0.0.1", "-p", str(port)], log, env=env)
    server.start(port)
    try:
        url = f"http://127.0.0.1:{port}"
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="backup")
        iam.put_user_policy(
            UserName="backup",
            PolicyName="everything",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="backup")["AccessKey"]
        service = S3Service(url, port, key["AccessKeyId"], key["SecretAccessKey"], "backup-conformance")
        service.client().create_bucket(Bucket=service.bucket)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(f"AIRFLOW_CONN_{S3_CONN_ID.upper()}", service.connection())
            yield service
    finally:
        server.stop()


# --- Azure Blob: Azurite ---------------------------------------------------------------------


@dataclass
class AzureService:
    url: str  # the account URL, http://127.0.0.1:PORT/devstoreaccount1
    port: int
    container: str
    account: str = AZURITE_ACCOUNT
    key: str = AZURITE_KEY
    conn_id: str = WASB_CONN_ID

    def service_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.url, credential={"account_name": self.account, "account_key": self.key})

    def container_client(self) -> Any:
        return self.service_client().get_container_client(self.container)

    def connection(self, url: str | None = None, key: str | None = None, **extra: Any) -> str:
        return json.dumps(
            {
                "conn_type": "wasb",
                "login": self.account,
                "password": self.key if key is None else key,
                "host": url or self.url,
                "extra": extra,
            }
        )


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureService]:
    """Azurite's blob service, with its state in a fresh directory."""
    exe = require(
        AZURITE_BIN,
        "azurite (npm)",
        f"{INSTALL}, or `npm ci` in tests/services/azurite",
    )
    if not shutil.which("node"):
        pytest.fail(f"node is not installed; install it with: {INSTALL}", pytrace=False)
    port = free_port()
    base = tmp_path_factory.mktemp("azurite")
    data = base / "data"
    data.mkdir()
    cmd = [
        exe,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(data),
        "--loose",
        "--skipApiVersionCheck",
        "--silent",
    ]
    # Azurite waits for idle keep-alive connections to close before it exits on SIGTERM;
    # its state is throwaway, so it gets 2 s, then SIGKILL.
    server = ServerProcess("azurite-blob", cmd, base / "azurite.log", grace=2.0).start(port)
    try:
        service = AzureService(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}", port, "backup-conformance")
        service.service_client().create_container(service.container)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(f"AIRFLOW_CONN_{WASB_CONN_ID.upper()}", service.connection())
            yield service
    finally:
        server.stop()


# --- GCS: gcp-storage-emulator ---------------------------------------------------------------


@dataclass
class GCSService:
    url: str
    port: int
    bucket: str
    project: str = "test-project"
    conn_id: str = GCS_CONN_ID

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )

    def connection(self, **extra: Any) -> str:
        return json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": self.project} | extra,
            }
        )


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSService]:
    """gcp-storage-emulator with its state in a fresh directory; the Google client finds it
    through STORAGE_EMULATOR_HOST, as it would in any emulator setup."""
    exe = require(BIN / "gcp-storage-emulator", "gcp-storage-emulator (pip)")
    port = free_port()
    base = tmp_path_factory.mktemp("gcs")
    cmd = [exe, "-d", str(base / "data"), "start", "-H", "127.0.0.1", "--port", str(port), "-q"]
    server = ServerProcess("gcp-storage-emulator", cmd, base / "gcs.log").start(port)
    try:
        service = GCSService(f"http://127.0.0.1:{port}", port, "backup-conformance")
        service.client().create_bucket(service.bucket)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", service.url)
            mp.setenv(f"AIRFLOW_CONN_{GCS_CONN_ID.upper()}", service.connection())
            yield service
    finally:
        server.stop()


# --- SFTP: OpenSSH ---------------------------------------------------------------------------


@dataclass
class SFTPService:
    port: int
    user: str
    private_key: str  # OpenSSH PEM text of the client key
    key_file: Path
    host_key: str  # "ssh-ed25519 AAAA..." of the server
    root: Path  # a directory the tests may use, on this machine
    conn_id: str = SFTP_CONN_ID

    def client(self) -> Any:
        """A plain paramiko SFTP client (the service's own client, not the target)."""
        import paramiko

        ssh = paramiko.SSHClient()
        ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - test server
        ssh.connect(
            "127.0.0.1",
            self.port,
            username=self.user,
            key_filename=str(self.key_file),
            look_for_keys=False,
            allow_agent=False,
        )
        sftp = ssh.open_sftp()
        sftp._backup_test_ssh = ssh  # keep the transport alive with the client
        return sftp

    def connection(self, port: int | None = None, **overrides: Any) -> str:
        conn: dict[str, Any] = {
            "conn_type": "sftp",
            "host": "127.0.0.1",
            "port": port or self.port,
            "login": self.user,
            "extra": {"private_key": self.private_key, "host_key": self.host_key, "look_for_keys": "false"},
        }
        extra = overrides.pop("extra", None)
        if extra is not None:
            conn["extra"] = extra
        return json.dumps(conn | overrides)


def _ssh_keygen(path: Path) -> None:
    keygen = require(shutil.which("ssh-keygen"), "ssh-keygen (apt: openssh-client)")
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "backup-tests", "-f", str(path)],  # noqa: S603
        check=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SFTPService]:
    """OpenSSH's sshd with its own config and host key, key-only login for the current
    user (root included: PermitRootLogin prohibit-password) and the internal SFTP server."""
    exe = require(shutil.which("sshd") or "/usr/sbin/sshd", "sshd (apt: openssh-server)")
    base = tmp_path_factory.mktemp("sshd")
    _ssh_keygen(base / "host_key")
    _ssh_keygen(base / "client_key")
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    os.chmod(base / "host_key", 0o600)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    elif not os.path.isdir("/run/sshd"):
        pytest.fail(f"/run/sshd is missing (sshd needs it); run {INSTALL}", pytrace=False)
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {base / 'host_key'}",
                "PidFile none",
                f"AuthorizedKeysFile {base / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    check = subprocess.run([exe, "-t", "-f", str(config)], capture_output=True, text=True)  # noqa: S603
    if check.returncode:
        pytest.fail(f"sshd rejects its test config: {check.stderr.strip()}", pytrace=False)
    server = ServerProcess("sshd", [exe, "-D", "-e", "-f", str(config)], base / "sshd.log").start(port)
    try:
        root = base / "data"
        root.mkdir()
        host_key = " ".join((base / "host_key.pub").read_text().split()[:2])
        service = SFTPService(
            port, getpass.getuser(), (base / "client_key").read_text(), base / "client_key", host_key, root
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(f"AIRFLOW_CONN_{SFTP_CONN_ID.upper()}", service.connection())
            yield service
    finally:
        server.stop()


# --- FTP: pyftpdlib --------------------------------------------------------------------------

_FTP_SERVER = """
import logging, os
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.log import config_logging
from pyftpdlib.servers import FTPServer

config_logging(level=logging.WARNING)
authorizer = DummyAuthorizer()
authorizer.add_user(os.environ["FTP_USER"], os.environ["FTP_PASSWORD"], os.environ["FTP_HOME"],
                    perm="elradfmwMT")
handler = FTPHandler
handler.authorizer = authorizer
handler.banner = "backup tests"
server = FTPServer(("127.0.0.1", int(os.environ["FTP_PORT"])), handler)
server.serve_forever()
"""


@dataclass
class FTPService:
    port: int
    user: str
    password: str
    home: Path
    conn_id: str = FTP_CONN_ID

    def client(self) -> Any:
        import ftplib

        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", self.port, timeout=30)
        ftp.login(self.user, self.password)
        return ftp

    def connection(self, port: int | None = None, password: str | None = None) -> str:
        return json.dumps(
            {
                "conn_type": "ftp",
                "host": "127.0.0.1",
                "port": port or self.port,
                "login": self.user,
                "password": self.password if password is None else password,
            }
        )


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPService]:
    """A pyftpdlib server (its own process) with one user whose home is a fresh directory."""
    try:
        import pyftpdlib  # noqa: F401
    except ImportError:
        pytest.fail(f"pyftpdlib is not installed; install it with: {INSTALL}", pytrace=False)
    base = tmp_path_factory.mktemp("ftp")
    home = base / "home"
    home.mkdir()
    port = free_port()
    password = secrets.token_urlsafe(16)
    env = dict(os.environ, FTP_USER="backup", FTP_PASSWORD=password, FTP_HOME=str(home), FTP_PORT=str(port))
    server = ServerProcess("pyftpdlib", [sys.executable, "-c", _FTP_SERVER], base / "ftp.log", env=env)
    server.start(port)
    try:
        service = FTPService(port, "backup", password, home)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(f"AIRFLOW_CONN_{FTP_CONN_ID.upper()}", service.connection())
            yield service
    finally:
        server.stop()


# --- a TCP proxy that can be taken down and brought back -------------------------------------


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; :meth:`down` closes the port and cuts
    every connection (as an endpoint that went away), :meth:`up` opens it again."""

    upstream: int
    port: int = field(default_factory=free_port)
    _listener: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def up(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        t = threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"proxy-{self.port}")
        t.start()
        self._threads.append(t)
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
